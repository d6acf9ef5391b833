"""Turn one preprocessed window into the message that leaves the device.

:class:`WindowEncoder` runs the bundle's first layer and activation in numpy, draws a fresh set of
``K`` kept units for every window from a fresh 64-bit seed drawn from the operating system's
CSPRNG (the set is derived from the seed, :func:`dropstream.broker.wire.kept_units_from_seed`, and
the seed travels instead of the indices: wire version 3), and
builds a :class:`dropstream.broker.wire.ActivationMessage` holding only the kept activations. The
raw window never leaves this function: nothing else of it is put into the message.

The generator must be unpredictable to the server: if the server could predict the kept set it
would still only see ``K < C*hop`` equations per window, but a fresh, secret mask per window is
what the paper's analysis assumes. An explicit ``seed`` exists for tests only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dropstream.broker.wire import (
    ActivationMessage,
    WireFormatError,
    draw_seed,
    encode_activation,
    kept_units_from_seed,
)
from dropstream.local_encoder.bundle import DeviceBundle
from dropstream.local_encoder.windowing import Window

#: Default ``block_every``: the stream block travels in full once every 16 windows (4 s for the
#: ECG demo's 0.25 s hop); the other windows carry an 8-byte reference instead.
BLOCK_EVERY = 16


class WindowEncoder:
    """First layer, activation and dropping for the windows of one stream.

    Parameters
    ----------
    bundle : DeviceBundle
        The model's device part; its privacy settings are checked here again.
    device_id : str
        Identifies the device; the Kafka key of every message.
    stream_id : str
        Identifies the stream (its LSL source id).
    seed : int | None
        ``None`` (always, outside tests) seeds the mask generator from the OS entropy.
    recording_clock : callable, optional
        ``recording_clock(lsl_time)``: seconds into the replayed recording of a window's first
        sample, or ``None`` for a live sensor (e.g.
        :meth:`dropstream.acquisition.LiveStream.recording_time`); sent with each window.
    values : {"uint8", "float16"}
        Encoding of the kept values on the wire: 8-bit scaled (the default; on
        SelfRegulationSCP1 the same accuracy as float32, ``benchmarks/value_precision.py``) or
        float16 (float32 when a value overflows float16).
    block_every : int
        The stream block (model, shape and the model, device and stream ids) travels in full in
        this encoder's first message and in every message whose sequence number is a multiple
        of ``block_every``; the others carry its 8-byte reference
        (:func:`dropstream.broker.wire.stream_ref`). A service that has not seen the block (it
        restarted) refuses the windows until the next full one. ``1``: always in full.

    Raises
    ------
    dropstream.local_encoder.first_layer.PrivacyGuardError
        If the bundle keeps so many units that the server could invert the windows.
    """

    def __init__(
        self,
        bundle: DeviceBundle,
        device_id: str,
        stream_id: str,
        seed: int | None = None,
        recording_clock: Callable[[float], float | None] | None = None,
        values: str = "uint8",
        block_every: int = BLOCK_EVERY,
    ) -> None:
        if values not in ("uint8", "float16"):
            raise WireFormatError(f"values must be 'uint8' or 'float16', not {values!r}")
        if int(block_every) < 1:
            raise WireFormatError(f"block_every must be >= 1 window, not {block_every}")
        self.values = values
        self.block_every = int(block_every)
        self._block_sent = False
        bundle.check_privacy()
        self.recording_clock = recording_clock
        self.bundle = bundle
        self.device_id = device_id
        self.stream_id = stream_id
        self._test_seed = seed
        self._rng = np.random.default_rng(seed)
        self._layer = bundle.layer.runner()  # preallocated buffers, reused every window

    def activations(self, window: np.ndarray) -> np.ndarray:
        """All ``m`` first-layer activations of a preprocessed window ``(C, T)`` (float32), with
        the layer's privacy noise drawn from the same OS-seeded generator as the mask."""
        return self._layer(window, self._rng).copy()

    def encode(
        self, window: Window, sequence: int, wall_time: float, unencoded_s: float = 0.0
    ) -> ActivationMessage:
        """The message for one window: kept unit indices and their activations.

        Parameters
        ----------
        window : Window
            A window from :class:`~dropstream.local_encoder.windowing.WindowBuffer`.
        sequence : int
            Window number in this stream, from 0.
        wall_time : float
            Wall-clock time (Unix seconds) of the window's first sample.
        unencoded_s : float
            Seconds of signal just before this window that were not encoded (agent down,
            stream break); 0 when it follows the previous window.
        """
        b = self.bundle
        a = self._layer(window.data, self._rng)  # reused buffer: only a[kept] (a copy) leaves
        # a fresh 64-bit seed per window (OS CSPRNG; the test generator only with a test seed);
        # the kept set derives from it, and the 8-byte seed travels instead of K indices
        seed = draw_seed() if self._test_seed is None else int(self._rng.integers(0, 2**63))
        kept = kept_units_from_seed(seed, b.layer.width, b.keep)
        return ActivationMessage(
            model_id=b.model_id,
            model_version=b.model_version,
            device_id=self.device_id,
            stream_id=self.stream_id,
            sequence=int(sequence),
            lsl_time=float(window.lsl_time),
            wall_time=float(wall_time),
            sfreq=float(b.sfreq),
            window_samples=int(b.window_samples),
            hop_samples=int(b.hop_samples),
            width=b.layer.width,
            indices=kept,
            values=a[kept],
            unencoded_s=float(unencoded_s),
            seed=seed,
            recording_time=None
            if self.recording_clock is None
            else self.recording_clock(float(window.lsl_time)),
        )

    def to_bytes(self, message: ActivationMessage) -> bytes:
        """Serialise (wire version 3) with 8-bit values, or float16 (float32 on overflow); the
        stream block in full or by reference (see ``block_every``)."""
        ref = self._block_sent and message.sequence % self.block_every != 0
        if self.values == "uint8":
            data = encode_activation(message, "uint8", by_reference=ref)
        else:
            try:
                data = encode_activation(message, "float16", by_reference=ref)
            except WireFormatError:
                data = encode_activation(message, "float32", by_reference=ref)
        self._block_sent = True
        return data
