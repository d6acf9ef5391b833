"""The model bundle: one file holding the device part (numpy) and the server head (torch).

A bundle is a zip archive (suffix ``.dsb``) with three members:

``manifest.json``
    model id and version, window/stream settings, preprocessing, the head's configuration, and
    the SHA-256 of the two other members.
``device.npz``
    first-layer ``weight`` (m, C*T, or m, C*T/pool with time pooling) and ``bias`` (m,), the
    normalisation ``norm_mean`` and ``norm_std`` (per channel, applied after filtering) and, for
    a low-rank layer ``W = A B``, the ``factor`` ``A`` (m, r) (``weight`` is then ``B``, r rows).

Format 2 adds the manifest key ``first_layer_pool`` (the first layer's time pooling; ``weight``
is then the small matrix over the pooled window) and the ``factor`` member. Format 1 bundles (a
dense ``weight``; a noisy low-rank layer also has ``noise_mix`` = ``A``, and is read back into
its factored form) are still read.
``head.pt``
    the server part as a torch ``state_dict`` (read by :mod:`inference`, never on the device).

Reading the device part needs only numpy and the standard library.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropstream.errors import DropstreamError
from dropstream.local_encoder.first_layer import FirstLayer, check_keep

BUNDLE_FORMAT = 2
#: Bundle formats this version reads.
READABLE_FORMATS = (1, 2)


class BundleError(DropstreamError):
    """A bundle that cannot be read, fails its checksum, or does not fit the stream."""


@dataclass(frozen=True)
class DeviceBundle:
    """Everything the device needs to turn a stream into activation messages.

    Attributes
    ----------
    model_id, model_version : str, int
        Identify the model; the server rejects windows for another model.
    layer : FirstLayer
        First-layer weights and activation.
    keep : int
        Units kept per window (``K``).
    sfreq : float
        Sample rate the model expects, in Hz.
    window_samples, hop_samples : int
        Window length and hop, in samples at ``sfreq``.
    channel_names, channel_types : tuple of str
        Channels in model order; a stream must provide all of them.
    preprocessing : dict
        Causal filter settings, e.g. ``{"l_freq": 1.0, "h_freq": 40.0, "notch": None,
        "order": 4}`` (frequencies in Hz; ``None`` disables a stage).
    norm_mean, norm_std : numpy.ndarray, shape (C,)
        Per-channel normalisation applied after filtering, in the stream's units.
    classes : tuple of str
        Output labels of the head (for an anomaly model: ``("normal", "anomaly")``).
    head_config : dict
        Architecture of the server head, used by :mod:`inference` to rebuild it.
    privacy : dict
        The privacy defences the model was trained with (``defences``) and its privacy label
        (``label``: floor r, strongest attack and its r on held-out windows; see
        :mod:`dropstream.inference.audit.label`). Empty in bundles written before the label.
    checksum : str
        SHA-256 over the device and head members, as stored in the manifest.
    filter_sos : numpy.ndarray of shape (n_sections, 6), or None
        The causal filter's second-order sections as :func:`~dropstream.local_encoder.
        preprocessing.design_filter` gives them for ``preprocessing`` (no sections: no
        filter), stored in the manifest by :func:`write_bundle` so that the device runs them
        without designing (importing :mod:`scipy.signal`); ``None`` (bundles written before,
        bundles built in memory): designed from ``preprocessing`` when needed.
    """

    model_id: str
    model_version: int
    layer: FirstLayer
    keep: int
    sfreq: float
    window_samples: int
    hop_samples: int
    channel_names: tuple[str, ...]
    channel_types: tuple[str, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)
    norm_mean: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    norm_std: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))
    classes: tuple[str, ...] = ("normal", "anomaly")
    head_config: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] = field(default_factory=dict)
    checksum: str = ""
    filter_sos: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_channels(self) -> int:
        """Number of channels ``C``."""
        return len(self.channel_names)

    def privacy_line(self) -> str:
        """One line on the model's defences and privacy label, for the device operator."""
        d = self.privacy.get("defences") or {}
        parts = [f"noise {self.layer.noise:g}"]
        if d.get("rank"):
            parts.append(f"rank {d['rank']}")
        parts += [f"{k} {d[k]:g}" for k in ("nopeek", "adversary", "excess") if d.get(k)]
        label = self.privacy.get("label") or {}
        if not label:
            what = "no privacy label (bundle written before labels); run 'dropstream audit'"
        else:
            what = (
                f"label: strongest attack {label['strongest_attack']} reconstructs held-out "
                f"windows with r={label['strongest_r']:.2f} (task floor r={label['floor_r']:.2f},"
                f" excess {label['excess_r']:+.2f}; {label.get('windows', '?')} windows)"
            )
        return f"privacy: defences {', '.join(parts)}; {what}"

    def check_privacy(self) -> None:
        """Raise :class:`~dropstream.local_encoder.first_layer.PrivacyGuardError` if invertible."""
        n_inputs = min(self.n_channels * self.window_samples, self.layer.rank_inputs)
        overlapping = self.hop_samples < self.window_samples
        hop_inputs = self.n_channels * self.hop_samples if overlapping else None
        check_keep(self.keep, self.layer.width, n_inputs, hop_inputs)

    def stream_plan(self, channel_names: Sequence[str], sfreq: float) -> tuple[list[int], int]:
        """Check a stream against the bundle: channel picks and the decimation factor.

        A stream at the bundle's rate, or at an integer multiple ``k * sfreq`` of it (``k >= 2``,
        checked to a relative tolerance of :data:`dropstream.local_encoder.resampling.RATE_RTOL`),
        fits; the device brings the latter down to ``sfreq`` with
        :class:`dropstream.local_encoder.resampling.CausalDecimator` before the model's
        preprocessing.

        Parameters
        ----------
        channel_names : sequence of str
            The stream's channel names, in stream order (matched case-insensitively).
        sfreq : float
            Nominal sample rate of the stream, Hz.

        Returns
        -------
        picks : list of int
            The stream's index of each model channel, in model order.
        factor : int
            ``1`` for a stream at the bundle rate, else the decimation factor ``k``.

        Raises
        ------
        BundleError
            If the stream is slower than the model, its rate is not an integer multiple of the
            model rate, or a model channel is missing from the stream.
        """
        from dropstream.local_encoder.resampling import ResamplingError, decimation_factor

        try:
            factor = decimation_factor(sfreq, self.sfreq)
        except ResamplingError as exc:
            raise BundleError(f"model {self.model_id} cannot use this stream: {exc}") from exc
        lookup = {name.lower(): i for i, name in enumerate(channel_names)}
        missing = [n for n in self.channel_names if n.lower() not in lookup]
        if missing:
            raise BundleError(
                f"stream lacks channels {missing} required by model {self.model_id}; "
                f"it has {list(channel_names)}"
            )
        return [lookup[n.lower()] for n in self.channel_names], factor

    def check_stream(self, channel_names: Sequence[str], sfreq: float) -> list[int]:
        """Check a stream at exactly the bundle's rate; return the stream's index of each channel.

        For callers that feed samples straight into the model's preprocessing. A stream that
        needs decimation is refused here; use :meth:`stream_plan` (as
        :class:`~dropstream.local_encoder.windowing.WindowBuffer` does) to accept it.

        Raises
        ------
        BundleError
            If the sample rate differs or a model channel is missing from the stream.
        """
        picks, factor = self.stream_plan(channel_names, sfreq)
        if factor != 1:
            raise BundleError(
                f"stream runs at {sfreq} Hz but model {self.model_id} expects {self.sfreq} Hz "
                f"here; decimate it by {factor} first (dropstream.local_encoder.resampling) or "
                "pick a stream at the model rate"
            )
        return picks


def _sha256(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _filter_sos(device: DeviceBundle) -> np.ndarray:
    """The bundle's filter sections, ``(n_sections, 6)`` float64 (zero rows: no filter)."""
    if device.filter_sos is not None:
        return np.asarray(device.filter_sos, np.float64).reshape(-1, 6)
    from dropstream.local_encoder.preprocessing import design_filter

    sos = design_filter(device.sfreq, device.preprocessing)
    return np.zeros((0, 6)) if sos is None else sos


def write_bundle(path: str | Path, device: DeviceBundle, head_state: bytes) -> str:
    """Write a bundle file and return its checksum.

    Parameters
    ----------
    path : path-like
        Destination, conventionally with suffix ``.dsb``.
    device : DeviceBundle
        The device part (its ``checksum`` field is ignored and recomputed).
    head_state : bytes
        The head's ``state_dict`` serialised with ``torch.save``.
    """
    device.check_privacy()
    buf = io.BytesIO()
    arrays = {
        "weight": device.layer.weight.astype(np.float32),
        "bias": device.layer.bias.astype(np.float32),
        "norm_mean": np.asarray(device.norm_mean, np.float32),
        "norm_std": np.asarray(device.norm_std, np.float32),
    }
    if device.layer.factor is not None:
        arrays["factor"] = device.layer.factor
    np.savez(buf, **arrays)
    device_bytes = buf.getvalue()
    checksum = _sha256(device_bytes, head_state)
    manifest = {
        "format": BUNDLE_FORMAT,
        "model_id": device.model_id,
        "model_version": device.model_version,
        "activation": device.layer.activation,
        "negative_slope": device.layer.negative_slope,
        "first_layer_pool": device.layer.pool,
        "noise": float(device.layer.noise),
        "keep": device.keep,
        "sfreq": device.sfreq,
        "window_samples": device.window_samples,
        "hop_samples": device.hop_samples,
        "channel_names": list(device.channel_names),
        "channel_types": list(device.channel_types),
        "preprocessing": device.preprocessing,
        "classes": list(device.classes),
        "head_config": device.head_config,
        "privacy": device.privacy,
        "filter_sos": _filter_sos(device).tolist(),
        "sha256": checksum,
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        zf.writestr("device.npz", device_bytes)
        zf.writestr("head.pt", head_state)
    return checksum


def read_bundle_members(path: str | Path) -> tuple[dict[str, Any], bytes, bytes]:
    """Read and verify a bundle; returns ``(manifest, device_bytes, head_bytes)``."""
    try:
        with zipfile.ZipFile(path) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            device_bytes = zf.read("device.npz")
            head_bytes = zf.read("head.pt")
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path} does not exist") from exc
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise BundleError(
            f"{path} is not a dropstream bundle ({exc}); train one with 'dropstream train'"
        ) from exc
    except zlib.error as exc:  # a damaged compressed member: corrupt before any checksum
        raise BundleError(
            f"bundle {path} does not decompress ({exc}): the file is corrupt; copy it again"
        ) from exc
    if manifest.get("format") not in READABLE_FORMATS:
        raise BundleError(
            f"bundle format {manifest.get('format')!r} is not supported "
            f"(this dropstream reads formats {READABLE_FORMATS}); upgrade dropstream"
        )
    if _sha256(device_bytes, head_bytes) != manifest.get("sha256"):
        raise BundleError(f"bundle {path} fails its checksum: the file is corrupt or was edited")
    return manifest, device_bytes, head_bytes


def _factor_dense(
    weight: np.ndarray, mix: np.ndarray, path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A)`` of a format-1 low-rank layer: its dense ``weight`` is ``A B`` with ``A`` the
    stored noise mixing, so ``B`` is the exact least-squares solution (checked)."""
    a = np.asarray(mix, np.float64)
    w = np.asarray(weight, np.float64)
    if a.ndim != 2 or w.ndim != 2 or a.shape[0] != w.shape[0]:
        raise BundleError(f"bundle {path}: noise_mix {a.shape} does not fit weight {w.shape}")
    b = np.linalg.lstsq(a, w, rcond=None)[0]
    if np.max(np.abs(a @ b - w)) > 1e-4 * (1.0 + np.max(np.abs(w))):
        raise BundleError(
            f"bundle {path}: its weight is not noise_mix times a projection (a format-1 layer "
            "this version cannot factor); re-export it with 'dropstream train'"
        )
    return b.astype(np.float32), a.astype(np.float32)


def load_device_bundle(path: str | Path) -> DeviceBundle:
    """Load the device part of a bundle with numpy alone and check its privacy settings."""
    return load_bundle(path)[0]


def load_bundle(path: str | Path) -> tuple[DeviceBundle, bytes]:
    """Read and verify a bundle once: its device part and the head's serialised state.

    The head bytes are for :mod:`inference` (torch); the device part needs numpy alone.
    """
    m, device_bytes, head_bytes = read_bundle_members(path)
    try:
        arrays = np.load(io.BytesIO(device_bytes), allow_pickle=False)
        weight, factor = arrays["weight"], arrays["factor"] if "factor" in arrays.files else None
        if "noise_mix" in arrays.files:  # format 1: dense W = A B with A stored as noise_mix
            weight, factor = _factor_dense(weight, arrays["noise_mix"], path)
        layer = FirstLayer(
            weight=weight,
            bias=arrays["bias"],
            activation=m["activation"],
            negative_slope=float(m.get("negative_slope", 0.01)),
            pool=int(m.get("first_layer_pool", 1)),
            n_samples=int(m["window_samples"]),
            noise=float(m.get("noise", 0.0)),
            factor=factor,
        )
        bundle = DeviceBundle(
            model_id=str(m["model_id"]),
            model_version=int(m["model_version"]),
            layer=layer,
            keep=int(m["keep"]),
            sfreq=float(m["sfreq"]),
            window_samples=int(m["window_samples"]),
            hop_samples=int(m["hop_samples"]),
            channel_names=tuple(m["channel_names"]),
            channel_types=tuple(m["channel_types"]),
            preprocessing=dict(m.get("preprocessing", {})),
            norm_mean=arrays["norm_mean"],
            norm_std=arrays["norm_std"],
            classes=tuple(m.get("classes", ())),
            head_config=dict(m.get("head_config", {})),
            privacy=dict(m.get("privacy") or {}),
            checksum=str(m["sha256"]),
            filter_sos=(
                np.asarray(m["filter_sos"], np.float64).reshape(-1, 6)
                if "filter_sos" in m
                else None
            ),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"bundle {path} is incomplete: {exc!r}") from exc
    if layer.n_inputs != bundle.n_channels * bundle.window_samples:
        raise BundleError(
            f"bundle {path}: weight has {layer.n_inputs} inputs but "
            f"{bundle.n_channels} channels x {bundle.window_samples} samples"
        )
    bundle.check_privacy()
    return bundle, head_bytes
