"""Cut a live stream into the model's windows, preprocessed exactly as in training.

:class:`WindowBuffer` takes chunks as the inlet delivers them (samples x stream channels, any
length, timestamps on the LSL clock), picks the bundle's channels in model order, decimates a
stream running at ``k`` times the bundle's rate down to that rate
(:class:`dropstream.local_encoder.resampling.CausalDecimator`: causal anti-alias low-pass, every
``k``-th sample kept, phase carried across chunks), runs the causal
filter of :mod:`dropstream.local_encoder.preprocessing` with its state carried across chunks, keeps
the filtered samples in a ring buffer and cuts a window of ``window_samples`` every ``hop_samples``.
Each window is then normalised with the bundle's per-channel statistics. Filter, ring buffer and
normalisation run in float32, as in training. Chunk boundaries change nothing: the windows equal
those cut from the whole signal filtered causally at once.

Window length, hop, :attr:`WindowBuffer.buffered` and :attr:`WindowBuffer.discarded_samples` count
samples at the bundle's rate (after decimation); a window's ``lsl_time`` is the stream timestamp
of its first kept sample. :attr:`WindowBuffer.lost_samples` counts stream samples, as the inlet
reports them.

Samples that cannot be used break the stream into segments: a gap reported by the inlet, or a
sample with a NaN/infinite value (it would poison the filter state forever). At a break the
unfinished window is discarded, the decimator and the filter restart and the next window starts
at the first good sample after the break. Missing and non-finite samples are counted in
:attr:`WindowBuffer.lost_samples`, the samples of the discarded unfinished window in
:attr:`WindowBuffer.discarded_samples`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dropstream.local_encoder.bundle import DeviceBundle
from dropstream.local_encoder.preprocessing import CausalFilter, PreprocessingError
from dropstream.local_encoder.resampling import CausalDecimator


@dataclass(frozen=True)
class Window:
    """One window, ready for the first layer.

    Attributes
    ----------
    data : numpy.ndarray, shape (C, T), float32
        Filtered and normalised samples, channels in model order.
    lsl_time : float
        Timestamp of the window's first sample on the local LSL clock, seconds.
    index : int
        Number of the window since the buffer was created (counts every cut window).
    """

    data: np.ndarray
    lsl_time: float
    index: int


def _drain(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Join held ``(samples, timestamps)`` pieces in order and empty the list."""
    if len(parts) == 1:
        x, t = parts[0]
    else:
        x = np.concatenate([p[0] for p in parts])
        t = np.concatenate([p[1] for p in parts])
    parts.clear()
    return x, t


class WindowBuffer:
    """Per-stream ring buffer cutting preprocessed windows of a bundle's length and hop.

    Parameters
    ----------
    bundle : DeviceBundle
        Gives window length, hop, channels, sample rate, preprocessing and normalisation.
    stream_channels : sequence of str
        Channel names of the stream, in stream order (matched case-insensitively).
    sfreq : float
        Nominal sample rate of the stream in Hz: the bundle's, or an integer multiple of it
        (the stream is then decimated to the bundle's rate on arrival).

    Attributes
    ----------
    factor : int
        Decimation factor (``1`` when the stream runs at the bundle's rate).

    Raises
    ------
    dropstream.local_encoder.bundle.BundleError
        If the stream's rate does not fit (slower, or not an integer multiple) or it lacks a
        model channel.
    """

    def __init__(self, bundle: DeviceBundle, stream_channels: Sequence[str], sfreq: float) -> None:
        self.bundle = bundle
        picks, self.factor = bundle.stream_plan(stream_channels, sfreq)
        self.channel_index = np.asarray(picks, dtype=np.intp)
        # the stream's channels are the model's, in order: no per-chunk pick (copy) needed
        self._all_channels = np.array_equal(self.channel_index, np.arange(len(stream_channels)))
        # per-channel normalisation (the bundle's, checked once here) as float32 columns
        from dropstream.local_encoder.preprocessing import complete_preprocessing, normalise

        normalise(np.zeros((bundle.n_channels, 1), np.float32), bundle.norm_mean, bundle.norm_std)
        self._demean = bool(complete_preprocessing(bundle.preprocessing)["window_demean"])
        self._mean = np.asarray(bundle.norm_mean, np.float32)[:, None]
        self._std = np.asarray(bundle.norm_std, np.float32)[:, None]
        self.n_stream_channels = len(stream_channels)
        self.window = int(bundle.window_samples)
        self.hop = int(bundle.hop_samples)
        self.n_channels = bundle.n_channels
        self._decimator = CausalDecimator(float(sfreq), self.factor, self.n_channels)
        # the device filters and buffers in float32 (half the memory traffic of float64)
        self._filter = CausalFilter(
            bundle.sfreq, self.n_channels, bundle.preprocessing, sos=bundle.filter_sos
        )
        self._capacity = max(4 * self.window, self.window + 4096)
        self._buf = np.zeros((self.n_channels, self._capacity), dtype=np.float32)
        self._stamps = np.zeros(self._capacity, dtype=np.float64)
        self._start = 0  # first buffered sample (start of the next window)
        self._end = 0  # one past the last buffered sample
        self._skip = 0  # samples still to skip before the next window starts (hop > window)
        # unfiltered samples held until they complete a window: one filter call per window
        # rather than per chunk (the filter is causal, so the output is the same)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_n = 0
        # samples as received (stream rate), not yet checked (checked, decimated and filtered
        # once they complete a window), copied into a preallocated staging area: a small chunk
        # costs one copy, not a list entry and a join later
        staging = max(2 * self.window * self.factor, 1024)
        self._raw_x = np.empty((staging, self.n_stream_channels), dtype=np.float64)
        self._raw_t = np.empty(staging, dtype=np.float64)
        self._raw_n = 0
        #: Windows cut so far.
        self.windows_cut = 0
        #: Samples lost before reaching the buffer: inlet gaps and non-finite samples.
        self.lost_samples = 0
        #: Buffered samples thrown away with an unfinished window at a break.
        self.discarded_samples = 0

    @property
    def buffered(self) -> int:
        """Samples waiting for the next window, at the bundle's rate."""
        return self._end - self._start + self._pending_n + self._decimator.n_out(self._raw_n)

    def reset(self) -> None:
        """Break the stream: discard the unfinished window, restart decimator and filter."""
        self.discarded_samples += self.buffered
        self._pending.clear()
        self._pending_n = 0
        self._raw_n = 0
        self._start = self._end = 0
        self._skip = 0
        self._decimator.reset()
        self._filter.reset()

    def note_lost(self, n_samples: int) -> None:
        """Account for samples the inlet reports lost (a gap), and break the stream there."""
        self.lost_samples += int(n_samples)
        self.reset()

    def push(
        self,
        data: np.ndarray,
        timestamps: np.ndarray,
        breaks: Sequence[tuple[int, int]] = (),
    ) -> list[Window]:
        """Add a chunk and return the windows it completes, oldest first.

        Parameters
        ----------
        data : numpy.ndarray, shape (n, stream channels)
            Samples as delivered by the inlet.
        timestamps : numpy.ndarray, shape (n,)
            LSL clock time of each sample, seconds.
        breaks : sequence of (int, int)
            ``(index, lost_samples)``: the stream breaks before sample ``index`` of the chunk
            because ``lost_samples`` samples went missing there (inlet gaps).
        """
        x = data if isinstance(data, np.ndarray) else np.asarray(data, dtype=np.float64)
        t = timestamps if isinstance(timestamps, np.ndarray) else np.asarray(timestamps, float)
        if x.ndim != 2 or x.shape[1] != self.n_stream_channels or t.shape != (x.shape[0],):
            raise PreprocessingError(
                f"chunk must be (n, {self.n_stream_channels}) samples with n timestamps; "
                f"got {x.shape} and {t.shape}"
            )
        if not breaks:  # the usual case: hold the chunk until a window can be completed
            end = self._raw_n + x.shape[0]
            if end > self._raw_t.shape[0]:
                self._grow_staging(end)
            self._raw_x[self._raw_n : end] = x  # casts to float64
            self._raw_t[self._raw_n : end] = t
            self._raw_n = end
            if self._missing() > 0:
                return []
            return self._process(*self._take_raw(), ())
        x, t = self._pick(np.asarray(x, dtype=np.float64)), np.asarray(t, dtype=np.float64)
        if self._raw_n:
            held = self._raw_n
            rx, rt = self._take_raw()
            x, t = np.concatenate([rx, x]), np.concatenate([rt, t])
            breaks = [(held + max(int(i), 0), lost) for i, lost in breaks]
        return self._process(x, t, breaks)

    def seconds_to_next_window(self) -> float:
        """Seconds of signal (at the nominal rate) still missing before the next window can be
        cut; 0 when it could be cut now."""
        return max(self._missing(), 0) / float(self.bundle.sfreq)

    def _needed(self) -> int:
        """Samples (at the bundle's rate) still needed to complete the next window."""
        return self._skip + self.window - (self._end - self._start) - self._pending_n

    def _missing(self) -> int:
        """:meth:`_needed` less what the held (staged, unchecked) samples will give."""
        held = self._raw_n if self.factor == 1 else self._decimator.n_out(self._raw_n)
        return self._needed() - held

    def _pick(self, x: np.ndarray) -> np.ndarray:
        """The model's channels of stream samples ``(n, stream channels)`` (a copy when some
        are left out; ``x`` itself when the stream's channels are the model's, in order)."""
        return x if self._all_channels else x[:, self.channel_index]

    def _take_raw(self) -> tuple[np.ndarray, np.ndarray]:
        """The held stream samples (the model's channels, copied out of the staging area)."""
        n, self._raw_n = self._raw_n, 0
        x = self._raw_x[:n]
        return (x.copy() if self._all_channels else self._pick(x)), self._raw_t[:n].copy()

    def _grow_staging(self, n: int) -> None:
        """Make room for ``n`` held stream samples (a chunk longer than the staging area)."""
        size = max(n, 2 * self._raw_t.shape[0])
        x = np.empty((size, self.n_stream_channels), dtype=np.float64)
        t = np.empty(size, dtype=np.float64)
        x[: self._raw_n] = self._raw_x[: self._raw_n]
        t[: self._raw_n] = self._raw_t[: self._raw_n]
        self._raw_x, self._raw_t = x, t

    def _process(
        self, x: np.ndarray, t: np.ndarray, breaks: Sequence[tuple[int, int]]
    ) -> list[Window]:
        """Check, split at breaks, filter and cut a run of received samples (the model's
        channels, :meth:`_pick`)."""
        # a finite sum means every sample is finite (NaN and infinities propagate; an overflow
        # to infinity only sends the chunk to the exact check below)
        if not breaks and np.isfinite(np.add.reduce(x, axis=None)):
            return self._push_clean(x, t) if x.shape[0] else []
        finite = np.isfinite(x)
        # split points: inlet gaps and non-finite samples
        cuts: dict[int, int] = {}
        for index, lost in breaks:
            i = int(min(max(index, 0), x.shape[0]))
            cuts[i] = cuts.get(i, 0) + int(lost)
        bad = ~finite.all(axis=1)
        windows: list[Window] = []
        pos = 0
        for i in sorted(set(cuts) | set(np.flatnonzero(bad).tolist()) | {x.shape[0]}):
            if i > pos:
                windows.extend(self._push_clean(x[pos:i], t[pos:i]))
            if i >= x.shape[0]:
                break
            if i in cuts:
                self.note_lost(cuts[i])
            pos = i
            if bad[i]:
                self.reset()
                self.lost_samples += 1
                pos = i + 1
        return windows

    def _push_clean(self, x: np.ndarray, t: np.ndarray) -> list[Window]:
        """Take finite samples ``(n, C)``; decimate, then filter and cut once they complete a
        window."""
        if self.factor > 1:
            xd, t = self._decimator.process_timed(x.T, t)
            x = xd.T
        self._pending.append((x, t))
        self._pending_n += x.shape[0]
        if self._needed() > 0:
            return []
        x, t = _drain(self._pending)
        self._pending_n = 0
        y = self._filter.process(x.T)
        out: list[Window] = []
        pos = 0
        n = y.shape[1]
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            if self._end == self._capacity:
                self._compact()
            k = min(n - pos, self._capacity - self._end)
            self._buf[:, self._end : self._end + k] = y[:, pos : pos + k]
            self._stamps[self._end : self._end + k] = t[pos : pos + k]
            self._end += k
            pos += k
            while self._end - self._start >= self.window:
                out.append(self._cut())
        return out

    def _cut(self) -> Window:
        s = self._start
        raw = self._buf[:, s : s + self.window]
        # prepare_window()'s arithmetic (float32: demean, subtract, divide) on checked columns
        if self._demean:
            data = raw - raw.mean(axis=-1, keepdims=True)
            data -= self._mean
        else:
            data = np.subtract(raw, self._mean)
        data /= self._std
        w = Window(data=data, lsl_time=float(self._stamps[s]), index=self.windows_cut)
        self.windows_cut += 1
        nxt = s + self.hop
        if nxt <= self._end:
            self._start = nxt
        else:  # hop longer than what is buffered: skip the samples still to come
            self._skip = nxt - self._end
            self._start = self._end
        if self._start == self._end:
            self._start = self._end = 0
        return w

    def _compact(self) -> None:
        """Move the buffered samples to the front of the ring."""
        n = self._end - self._start
        self._buf[:, :n] = self._buf[:, self._start : self._end]
        self._stamps[:n] = self._stamps[self._start : self._end]
        self._start, self._end = 0, n
