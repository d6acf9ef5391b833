"""Training data: UEA ``.ts`` problems and labelled windows from continuous recordings.

Two sources feed :mod:`dropstream.inference.training`:

* UEA/UCR multivariate problems in the sktime ``.ts`` text format (official TRAIN/TEST splits),
  read by a small parser here (no aeon or sktime at runtime).
* Continuous recordings (anything :func:`mne.io.read_raw` opens: ``.fif``, ``.edf``, ...) whose
  annotations give labels: the recording is decimated to the model rate when asked (``sfreq=``),
  filtered causally as one stream (exactly as the device decimates and filters it), cut into
  windows, and each window takes the label of the annotation it overlaps.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dropstream.acquisition.publish import Track
from dropstream.acquisition.recording import load_tracks
from dropstream.errors import DropstreamError
from dropstream.local_encoder.framing import window_starts
from dropstream.local_encoder.preprocessing import filter_signal
from dropstream.local_encoder.resampling import ResamplingError, decimate_signal, decimation_factor


class DatasetError(DropstreamError):
    """A data file that cannot be parsed or gives no usable windows."""


#: Sample rates (Hz) of UEA EEG problems whose ``.ts`` files may not state it (a fallback after
#: an explicit rate and the files' own metadata, see :func:`ts_sample_rate`).
UEA_SFREQ: dict[str, float] = {
    "SelfRegulationSCP1": 256.0,
    "SelfRegulationSCP2": 256.0,
    "FingerMovements": 100.0,
    "EyesOpenShut": 128.0,
    "MotorImagery": 1000.0,
}


@dataclass
class WindowSet:
    """Windows with labels, ready for training.

    Attributes
    ----------
    X : numpy.ndarray, shape (N, C, T), float32
        Windows; for recordings these are already causally filtered.
    y : numpy.ndarray, shape (N,), str
        Label of each window.
    sfreq : float
        Sample rate in Hz.
    channel_names, channel_types : tuple of str
    filtered : bool
        Whether ``X`` went through the model's causal filter already (recordings) or still has
        to be filtered window by window (trial datasets).
    preprocessing : dict
        The filter settings applied when ``filtered`` is true.
    hop_samples : int
        Hop between windows (== window length for trial datasets).
    meta : dict
        Source description (file names, problem name, ...).
    """

    X: np.ndarray
    y: np.ndarray
    sfreq: float
    channel_names: tuple[str, ...]
    channel_types: tuple[str, ...]
    filtered: bool = False
    preprocessing: dict[str, Any] = field(default_factory=dict)
    hop_samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> tuple[str, ...]:
        """Sorted distinct labels."""
        return tuple(sorted(set(self.y.tolist())))


def load_ts(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Parse an equal-length multivariate sktime ``.ts`` file.

    Parameters
    ----------
    path : path-like
        The ``.ts`` file.

    Returns
    -------
    X : numpy.ndarray, shape (N, C, T), float32
    y : numpy.ndarray, shape (N,), str
    header : dict
        The ``@`` header fields (lower-case keys, string values); the ``#`` comment lines
        before ``@data`` are joined under the key ``"#"``.

    Raises
    ------
    DatasetError
        On unequal lengths, missing labels, or text that is not a number.

    Notes
    -----
    The header's ``@equalLength`` is a declaration, not a guarantee: some files declare
    ``false`` (e.g. Blink) although every case has the same length. The lengths actually read
    decide; files whose cases really differ in length are refused.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    header: dict[str, Any] = {}
    rows: list[np.ndarray] = []
    labels: list[str] = []
    comments: list[str] = []
    in_data = False
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                if line and not in_data:
                    comments.append(line[1:].strip())
                continue
            if not in_data:
                if line.lower().startswith("@data"):
                    in_data = True
                elif line.startswith("@"):
                    key, _, value = line[1:].partition(" ")
                    header[key.lower()] = value.strip()
                continue
            parts = line.split(":")
            if len(parts) < 2:
                raise DatasetError(f"{path}:{lineno}: expected 'dim1:dim2:...:label'")
            labels.append(parts[-1].strip())
            try:
                dims = [np.array(p.split(","), dtype=np.float64) for p in parts[:-1]]
            except ValueError as exc:
                raise DatasetError(f"{path}:{lineno}: not a number ({exc})") from exc
            lengths = {len(d) for d in dims}
            if len(lengths) != 1:
                raise DatasetError(
                    f"{path}:{lineno}: dimensions of unequal length {sorted(lengths)}; "
                    "only equal-length problems are supported: pad or cut the cases first"
                )
            rows.append(np.stack(dims))
    if not rows:
        raise DatasetError(f"{path} has no data rows")
    shapes = {r.shape for r in rows}
    if len(shapes) != 1:
        raise DatasetError(
            f"{path}: cases differ in shape {sorted(shapes)} (header @equalLength "
            f"{header.get('equallength', 'missing')}); only equal-length problems are "
            "supported: pad or cut the cases first"
        )
    X = np.stack(rows).astype(np.float32)
    if not np.all(np.isfinite(X)):
        raise DatasetError(f"{path} holds missing or non-finite values; not supported")
    if comments:
        header["#"] = " ".join(comments)
    return X, np.array(labels), header


#: ``@`` header fields that state a sample rate in Hz (lower case, as :func:`load_ts` keys them).
_RATE_FIELDS = ("samplerate", "samplingrate", "sfreq", "frequency")
#: A rate stated in the comment header: "sampled at 255Hz", "sampling rate of 256 Hz",
#: "downsampled at 100 Hz". Recording rates ("recorded at 1000 Hz") are deliberately not matched.
_RATE_PHRASE = re.compile(
    r"\b(?:down)?sampl(?:ed|ing rate|e rate)\s+(?:at|of|is|=|:)?\s*([0-9]+(?:\.[0-9]+)?)\s*hz\b",
    re.IGNORECASE,
)


def ts_sample_rate(header: Mapping[str, Any]) -> float | None:
    """The sample rate (Hz) a ``.ts`` header states, or ``None`` when it states none.

    An ``@sampleRate`` / ``@samplingRate`` / ``@sfreq`` / ``@frequency`` field wins; otherwise
    the comment lines are searched for one stated sampling rate ("sampled at 255Hz", "sampling
    rate of 256 Hz"). Several different stated rates are ambiguous and give ``None``.
    """
    for key in _RATE_FIELDS:
        if key in header:
            try:
                return float(str(header[key]).split()[0])
            except (ValueError, IndexError):
                raise DatasetError(
                    f"header field @{key} {header[key]!r} is not a rate in Hz"
                ) from None
    rates = {float(m) for m in _RATE_PHRASE.findall(str(header.get("#", "")))}
    return rates.pop() if len(rates) == 1 else None


def load_uea(
    problem: str, root: str | Path, sfreq: float | None = None
) -> tuple[WindowSet, WindowSet]:
    """Load the official TRAIN and TEST splits of a UEA problem.

    Parameters
    ----------
    problem : str
        Problem name, e.g. ``"SelfRegulationSCP1"``.
    root : path-like
        Folder holding ``<problem>_TRAIN.ts`` and ``<problem>_TEST.ts``.
    sfreq : float, optional
        Sample rate in Hz. Without it: the rate the ``.ts`` files state (:func:`ts_sample_rate`;
        TRAIN and TEST must agree), else the known rate in :data:`UEA_SFREQ`, else an error.

    Raises
    ------
    DatasetError
        If a file is missing or malformed, or no sample rate can be found.
    """
    root = Path(root)
    loaded = [(split, *load_ts(root / f"{problem}_{split}.ts")) for split in ("TRAIN", "TEST")]
    if sfreq is None:
        stated = {ts_sample_rate(header) for _, _, _, header in loaded} - {None}
        if len(stated) > 1:
            raise DatasetError(
                f"TRAIN and TEST of UEA problem {problem!r} state different sample rates "
                f"{sorted(stated)} Hz; pass the right one explicitly (--sfreq)"
            )
        sfreq = stated.pop() if stated else UEA_SFREQ.get(problem)
        if sfreq is None:
            raise DatasetError(
                f"sample rate of UEA problem {problem!r} is not known and its .ts files do not "
                "state it; pass it explicitly (sfreq=..., or --sfreq on the command line)"
            )
    if not sfreq > 0:
        raise DatasetError(f"sample rate must be positive; got {sfreq}")
    out = []
    for split, X, y, header in loaded:
        names = tuple(f"ch{i}" for i in range(X.shape[1]))
        out.append(
            WindowSet(
                X=X,
                y=y,
                sfreq=float(sfreq),
                channel_names=names,
                channel_types=("eeg",) * len(names),
                filtered=False,
                hop_samples=X.shape[2],
                meta={"source": "uea", "problem": problem, "split": split, "header": header},
            )
        )
    return out[0], out[1]


def _read_track(path: str | Path, units: str | None = None) -> Track:
    """Read a recording exactly as replay publishes it: voltages in microvolts (one stream),
    with the same unit and amplitude checks (``units``: see ``load_tracks``)."""
    tracks = load_tracks(path, units=units)
    if len(tracks) != 1:
        raise DatasetError(
            f"{path} holds {len(tracks)} streams; training reads one stream per recording"
        )
    return tracks[0]


def windows_from_recordings(
    paths: Sequence[str | Path],
    window_s: float,
    hop_s: float,
    preprocessing: Mapping[str, Any] | None = None,
    default_label: str | None = "normal",
    label_map: Mapping[str, str] | None = None,
    channels: Sequence[str] | None = None,
    sfreq: float | None = None,
    units: str | None = None,
) -> WindowSet:
    """Cut causally filtered recordings into labelled windows.

    With ``sfreq`` set, each recording is first decimated to that rate with
    :func:`dropstream.local_encoder.resampling.decimate_signal` (what the device does with a faster
    stream). Each recording is then filtered as one continuous stream with
    :func:`dropstream.local_encoder.preprocessing.filter_signal` (what the device does), then cut
    into windows of ``window_s`` seconds every ``hop_s`` seconds. A window takes the description of
    the annotation it overlaps most (mapped through ``label_map``); a window overlapping no
    annotation gets ``default_label``, or is skipped when that is ``None``.

    Parameters
    ----------
    paths : sequence of path-like
        Recordings; all must share sample rate (after decimation) and channels (in ``channels``
        order).
    window_s, hop_s : float
        Window length and hop in seconds.
    preprocessing : mapping, optional
        Causal filter settings (see :mod:`dropstream.local_encoder.preprocessing`).
    default_label : str or None
        Label of windows outside every annotation.
    label_map : mapping, optional
        Annotation description -> label; descriptions not in it keep their name. Map to ``""``
        to ignore an annotation (e.g. ``{"BAD_acq_skip": ""}``).
    channels : sequence of str, optional
        Channels to use (default: all data channels of the first recording).
    sfreq : float, optional
        Sample rate of the model in Hz (default: the recordings' rate). A recording at an integer
        multiple ``k * sfreq`` is decimated by ``k``; any other rate is refused.
    units : str, optional
        The unit the recordings' voltage values are really in (``--units``), see
        :func:`dropstream.acquisition.recording.load_tracks`; the same unit and amplitude
        checks as ``dropstream replay`` apply.

    Raises
    ------
    DatasetError
        On mismatching recordings, a rate that cannot be decimated to ``sfreq``, or no windows.
    """
    if not paths:
        raise DatasetError("no recordings given")
    if window_s <= 0 or hop_s <= 0:
        raise DatasetError(f"window ({window_s} s) and hop ({hop_s} s) must be positive")
    label_map = dict(label_map or {})
    target = None if sfreq is None else float(sfreq)
    Xs: list[np.ndarray] = []
    ys: list[str] = []
    sfreq = None
    names: tuple[str, ...] = ()
    types: tuple[str, ...] = ()
    for path in paths:
        track = _read_track(path, units)
        info = track.info
        data = track.data.T  # (C, n) in stream units: voltages in microvolts, as the inlet gives
        if channels is not None:
            missing = [c for c in channels if c not in info.channel_names]
            if missing:
                raise DatasetError(
                    f"{path} lacks channels {missing}; it has {list(info.channel_names)}"
                )
            picks = [info.channel_names.index(c) for c in channels]
            data = data[picks]
            ch_names = tuple(channels)
            ch_types = tuple(info.channel_types[i] for i in picks)
        else:
            ch_names, ch_types = info.channel_names, info.channel_types
        rate = float(info.sfreq)
        if target is not None:
            try:
                factor = decimation_factor(rate, target)
            except ResamplingError as exc:
                raise DatasetError(f"{path}: {exc}") from exc
            if factor > 1:
                data = decimate_signal(data, rate, factor)
            rate = target
        if sfreq is None:
            sfreq = rate
            names = ch_names
            types = tuple(t.lower() for t in ch_types)
        elif rate != sfreq or ch_names != names:
            raise DatasetError(
                f"{path} has {rate} Hz and channels {list(ch_names)}, unlike the "
                f"first recording ({sfreq} Hz, {list(names)}); pass matching recordings"
            )
        win = int(round(window_s * sfreq))
        hop = int(round(hop_s * sfreq))
        if win < 2 or hop < 1:
            raise DatasetError(f"window {window_s} s / hop {hop_s} s too short at {sfreq} Hz")
        data = filter_signal(data, sfreq, preprocessing)
        spans = []
        for ann in track.annotations:
            label = label_map.get(ann.description, ann.description)
            if label == "":
                continue
            spans.append((ann.onset, ann.onset + ann.duration, label))
        for start in window_starts(data.shape[1], win, hop).tolist():
            a, b = start / sfreq, (start + win) / sfreq
            best, best_overlap = default_label, 0.0
            for s0, s1, label in spans:
                overlap = min(b, max(s1, s0 + 1.0 / sfreq)) - max(a, s0)
                if overlap > best_overlap:
                    best, best_overlap = label, overlap
            if best is None:
                continue
            Xs.append(data[:, start : start + win])
            ys.append(best)
    if not Xs:
        raise DatasetError(
            f"no windows of {window_s} s in {[str(p) for p in paths]}: recordings too short, "
            "or no annotation and default_label=None"
        )
    assert sfreq is not None
    return WindowSet(
        X=np.stack(Xs).astype(np.float32),
        y=np.array(ys),
        sfreq=sfreq,
        channel_names=names,
        channel_types=types,
        filtered=True,
        preprocessing=dict(preprocessing or {}),
        hop_samples=int(round(hop_s * sfreq)),
        meta={
            "source": "recordings",
            "paths": [str(p) for p in paths],
            "decimated_to": target,
        },
    )
