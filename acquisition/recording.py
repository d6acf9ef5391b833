"""Load recordings (anything MNE reads, and XDF) into publishable tracks.

Units follow :mod:`dropstream.acquisition.units`: voltage channels are converted from volts (MNE) or
the file's declared unit (XDF) to microvolts and labelled ``"microvolts"``; other channels keep
their values and get their unit name (``"AU"`` when the file has none). The amplitude of voltage
channels is checked against their type, so a file read 10^6 off (e.g. a GDF whose microvolt header
MNE takes for volts) is refused with the ``units=`` (``--units``) that fixes it.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from dropstream.acquisition.errors import RecordingError
from dropstream.acquisition.info import StreamInfo
from dropstream.acquisition.publish import Annotation, Track
from dropstream.acquisition.units import check_amplitude, plan_units

log = logging.getLogger(__name__)

#: File endings read with :func:`mne.io.read_raw` (the common biosignal formats; MNE reads more).
MNE_SUFFIXES = (".edf", ".bdf", ".gdf", ".fif", ".fif.gz", ".vhdr", ".set", ".cnt", ".mff")
XDF_SUFFIXES = (".xdf", ".xdfz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (*XDF_SUFFIXES, *MNE_SUFFIXES):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def file_stem(path: Path) -> str:
    """File name without its recording suffix (``"S001R02.fif.gz"`` -> ``"S001R02"``)."""
    return path.name[: len(path.name) - len(_suffix(path))]


def stream_type(channel_types: tuple[str, ...]) -> str:
    """LSL stream type of a set of channels: the most common channel type, upper case."""
    if not channel_types:
        return "EEG"
    return Counter(t.upper() for t in channel_types).most_common(1)[0][0]


def load_tracks(
    path: str | Path,
    *,
    name: str | None = None,
    source_id: str | None = None,
    units: str | None = None,
) -> list[Track]:
    """Read one recording into tracks (one per data stream; MNE files give exactly one).

    Parameters
    ----------
    path : str | Path
        EDF/EDF+, BDF, GDF, FIF, BrainVision (``.vhdr``), EEGLAB (``.set``) or XDF file.
    name, source_id : str | None
        Stream name and source id; default: the file name without suffix and
        ``"dropstream-replay-<name>"``. XDF files with several streams append the XDF stream
        name.
    units : str | None
        The unit the file's voltage values are really in, as read (MNE gives volts; ``"uV"``
        when they are microvolts mislabelled as volts), replacing the declared unit; ``None``
        trusts the file. With it, an implausible amplitude is only logged.

    Raises
    ------
    RecordingError
        Missing, unreadable or unsupported file, no channel, no sample or no data stream.
    UnitError
        A voltage channel with a non-voltage unit, or an amplitude its type cannot have in
        microvolts (the message names the ``--units`` that would fit).
    """
    p = Path(path)
    if not p.exists():
        raise RecordingError(f"recording {str(p)!r} does not exist; check the path")
    if not p.is_file():
        raise RecordingError(f"recording {str(p)!r} is not a file")
    suffix = _suffix(p)
    name = name or file_stem(p)
    source_id = source_id or f"dropstream-replay-{name}"
    if suffix in XDF_SUFFIXES:
        tracks = _load_xdf(p, name, source_id, units)
    elif suffix in MNE_SUFFIXES:
        tracks = [_load_mne(p, name, source_id, units)]
    else:
        raise RecordingError(
            f"{p.name}: unsupported file type {suffix or '(no file ending)'!r}; replay reads "
            f"{', '.join(MNE_SUFFIXES + XDF_SUFFIXES)}"
        )
    for track in tracks:
        bad = int((~np.isfinite(track.data)).any(axis=1).sum())
        if bad:
            log.warning(
                "%s: %d samples of stream %r contain NaN or inf; they are published as they "
                "are and inlets flag them (Chunk.nonfinite)",
                p.name,
                bad,
                track.info.name,
            )
    return tracks


def _unit_name(code: int) -> str:
    from mne.io.constants import FIFF

    names = {
        int(FIFF.FIFF_UNIT_V): "V",
        int(FIFF.FIFF_UNIT_T): "T",
        int(FIFF.FIFF_UNIT_T_M): "T/m",
        int(FIFF.FIFF_UNIT_MOL): "mol",
        int(FIFF.FIFF_UNIT_CEL): "celsius",
        int(FIFF.FIFF_UNIT_S): "s",
    }
    return names.get(int(code), "AU")


def _to_microvolts(
    data: np.ndarray,
    sfreq: float,
    names: list[str],
    types: list[str],
    units: list[str],
    override: str | None,
    source: str,
) -> list[str]:
    """Scale the voltage columns of ``data`` (n, C) to microvolts in place and check their
    amplitude (:mod:`dropstream.acquisition.units`); returns the units after."""
    plan = plan_units(names, types, units, override, source=source)
    for i, factor in enumerate(plan.factors):
        if factor != 1.0:
            data[:, i] *= factor
    for line in check_amplitude(
        data,
        sfreq,
        types,
        source=source,
        declared=[override or u for u in units],
        factors=plan.factors,
        stated=plan.stated,
    ):
        log.warning(line)
    return [u or "AU" for u in plan.units]


def _check_edf_header(path: Path) -> None:
    """Name an empty EDF/BDF precisely (MNE fails on them with an unrelated IndexError)."""
    with path.open("rb") as f:
        head = f.read(256)
    if len(head) < 256:
        raise RecordingError(f"{path.name}: truncated header ({len(head)} of 256 bytes)")
    try:
        n_records = int(head[236:244].decode("ascii").strip())
        n_signals = int(head[252:256].decode("ascii").strip())
    except ValueError:
        return  # let MNE report what is wrong
    if n_signals == 0:
        raise RecordingError(f"{path.name}: the recording has no channel; nothing to replay")
    if n_records == 0:
        raise RecordingError(f"{path.name}: the recording has no sample; nothing to replay")


def _load_mne(path: Path, name: str, source_id: str, override: str | None) -> Track:
    import mne

    if _suffix(path) in (".edf", ".bdf"):
        _check_edf_header(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as exc:  # MNE raises many types for corrupt files; report them all alike
        raise RecordingError(
            f"{path.name}: MNE could not read this recording ({type(exc).__name__}: {exc}); "
            "check that the file is complete and of the format its name says"
        ) from exc
    if len(raw.ch_names) == 0:
        raise RecordingError(f"{path.name}: the recording has no channel; nothing to replay")
    if raw.n_times == 0:
        raise RecordingError(f"{path.name}: the recording has no sample; nothing to replay")
    sfreq = float(raw.info["sfreq"])
    if not np.isfinite(sfreq) or sfreq <= 0:
        raise RecordingError(f"{path.name}: invalid sampling rate {sfreq!r} Hz")
    data = raw.get_data().T.astype(np.float64)  # (n, C), SI units (volts)
    types = tuple(t.upper() for t in raw.get_channel_types())
    units = _to_microvolts(
        data,
        sfreq,
        list(raw.ch_names),
        list(types),
        [_unit_name(ch["unit"]) for ch in raw.info["chs"]],
        override,
        path.name,
    )
    info = StreamInfo(
        name=name,
        type=stream_type(types),
        source_id=source_id,
        sfreq=sfreq,
        channel_names=tuple(raw.ch_names),
        channel_types=types,
        units=tuple(units),
        channel_format="double64",
    )
    ann = raw.annotations
    shift = raw.first_time if ann.orig_time is not None else 0.0
    notes = [
        Annotation(float(o - shift), float(d), str(desc))
        for o, d, desc in zip(ann.onset, ann.duration, ann.description, strict=True)
    ]
    return Track(info, data, notes)


def _xdf_channels(stream: dict, n_ch: int) -> tuple[list[str], list[str], list[str]]:
    labels, types, units = [], [], []
    try:
        chans = stream["info"]["desc"][0]["channels"][0]["channel"]
    except (KeyError, IndexError, TypeError):
        chans = []
    for i in range(n_ch):
        ch = chans[i] if i < len(chans) and isinstance(chans[i], dict) else {}

        def first(key: str, default: str, ch: dict = ch) -> str:
            value = ch.get(key)
            return str(value[0]) if isinstance(value, list) and value and value[0] else default

        labels.append(first("label", f"ch{i + 1}"))
        types.append(first("type", stream["info"]["type"][0] or "EEG"))
        units.append(first("unit", ""))
    return labels, types, units


def _load_xdf(path: Path, name: str, source_id: str, override: str | None) -> list[Track]:
    import pyxdf

    try:
        streams, _header = pyxdf.load_xdf(str(path))
    except Exception as exc:
        raise RecordingError(
            f"{path.name}: could not read this XDF file ({type(exc).__name__}: {exc})"
        ) from exc
    data_streams = []
    marker_events: list[tuple[float, str]] = []
    for s in streams:
        fmt = s["info"]["channel_format"][0]
        if fmt == "string":
            for t, value in zip(s["time_stamps"], s["time_series"], strict=False):
                marker_events.append((float(t), "|".join(str(v) for v in value)))
        elif float(s["info"]["nominal_srate"][0]) > 0:
            data_streams.append(s)
    if not data_streams:
        raise RecordingError(f"{path.name}: no regular-rate numeric stream in this XDF file")
    tracks = []
    multi = len(data_streams) > 1
    for s in data_streams:
        series = np.asarray(s["time_series"], dtype=np.float64)
        if series.ndim != 2 or series.shape[1] == 0:
            raise RecordingError(f"{path.name}: stream {s['info']['name'][0]!r} has no channel")
        if series.shape[0] == 0:
            raise RecordingError(f"{path.name}: stream {s['info']['name'][0]!r} has no sample")
        labels, types, units = _xdf_channels(s, series.shape[1])
        rate = float(s["info"]["nominal_srate"][0])
        units = _to_microvolts(series, rate, labels, types, units, override, path.name)
        sname = s["info"]["name"][0]
        info = StreamInfo(
            name=f"{name}-{sname}" if multi else name,
            type=s["info"]["type"][0] or stream_type(tuple(types)),
            source_id=f"{source_id}-{sname}" if multi else source_id,
            sfreq=float(s["info"]["nominal_srate"][0]),
            channel_names=tuple(labels),
            channel_types=tuple(types),
            units=tuple(units),
            channel_format="double64",
        )
        tracks.append(Track(info, series))
    first_t = float(data_streams[0]["time_stamps"][0])
    tracks[0].annotations = [Annotation(t - first_t, 0.0, text) for t, text in marker_events]
    return tracks
