"""Offline evaluation: a recording through the device path and the server head exactly as live.

:func:`evaluate_recording` reads a recording as ``dropstream replay`` publishes it (same unit and
amplitude checks), runs it through the simulated device
(:func:`dropstream.local_encoder.simulated.encode_recording`: the device's own ``WindowBuffer``
and ``WindowEncoder``: decimation, causal filter, windows, first layer, fresh keep mask per
window, wire bytes), then gives the bytes to the service's own parts: the
:class:`~dropstream.inference.batching.BatchDecoder`, the
:class:`~dropstream.inference.scoring.Scorer`, the
:class:`~dropstream.inference.streams.StreamTracker` (event detector) and the
:class:`~dropstream.inference.outbox.Outbox` that renders alert messages. No broker, no LSL: the
stream's clock is the recording's (LSL time = seconds into the recording), so alert ids and
recording times are those a live replay of the file produces for the same device and stream ids.

Metrics against the recording's annotations (the *events*): window AUC (a window is positive
when it overlaps an event), event sensitivity, detection delay (event onset -> last sample of the
window that opened its alert), false alerts per hour of normal signal and the share of normal
time under alert. :func:`write_report` writes them with the signal, score, threshold, alert spans
and annotations as one self-contained HTML file (inline SVG, no plotting library).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dropstream.acquisition.publish import Annotation, Track
from dropstream.acquisition.recording import file_stem, load_tracks
from dropstream.broker.alert_message import AlertMessage
from dropstream.inference.batching import BatchDecoder
from dropstream.inference.drift import DRIFT_KIND, DriftReference
from dropstream.inference.head import ServerModel
from dropstream.inference.metrics import ServiceMetrics
from dropstream.inference.outbox import Outbox
from dropstream.inference.scoring import Scorer, policy_for
from dropstream.inference.settings import ServiceSettings
from dropstream.inference.streams import StreamTracker, StreamUpdate
from dropstream.local_encoder.simulated import encode_recording


@dataclass
class Evaluation:
    """What :func:`evaluate_recording` found for one recording.

    Attributes
    ----------
    recording : str
    model_id : str
    starts : numpy.ndarray, shape (n,)
        Start of each window, seconds into the recording.
    window_s : float
        Window length, seconds.
    scores : numpy.ndarray, shape (n,)
    threshold : float
        The alert threshold (opening level of the detector).
    alerts : list of AlertMessage
        The last update of every alert (closed ones carry their offset).
    events : list of Annotation
        The annotations counted as anomaly events.
    signal : numpy.ndarray, shape (n_samples,)
        First model channel as the device received it (for the report).
    sfreq : float
        Rate of ``signal``, Hz.
    metrics : dict
    """

    recording: str
    model_id: str
    starts: np.ndarray
    window_s: float
    scores: np.ndarray
    threshold: float
    alerts: list[AlertMessage]
    events: list[Annotation]
    signal: np.ndarray
    sfreq: float
    metrics: dict[str, float | int | None] = field(default_factory=dict)


def _run_device(
    bundle_path: str | Path,
    recording: str | Path,
    device_id: str,
    stream_id: str,
    units: str | None,
    seed: int | None,
    start: float,
) -> tuple[ServerModel, list[bytes], np.ndarray, Track]:
    """The recording through the simulated device; the stream's clock is the recording's."""
    track = load_tracks(recording, units=units)[0]
    model = ServerModel.load(bundle_path)
    info = track.info
    first = min(int(round(start * info.sfreq)), track.data.shape[0])
    messages = encode_recording(
        model.bundle,
        track.data[first:].T,
        device_id,
        stream_id,
        seed=seed,
        lsl_start=first / info.sfreq,
        sfreq=info.sfreq,
        channel_names=info.channel_names,
        recording_clock=float,
    )
    picks, _ = model.bundle.stream_plan(info.channel_names, info.sfreq)
    return model, [raw for _, raw in messages], track.data[:, picks[0]], track


def evaluate_recording(
    bundle_path: str | Path,
    recording: str | Path,
    *,
    device_id: str = "evaluate",
    stream_id: str | None = None,
    units: str | None = None,
    settings: ServiceSettings | None = None,
    event_labels: Sequence[str] | None = None,
    seed: int | None = None,
    start: float = 0.0,
) -> Evaluation:
    """Run ``recording`` through the device path and the server head as live (module docs).

    Parameters
    ----------
    bundle_path : path-like
        The model bundle.
    recording : path-like
        Any file ``dropstream replay`` reads.
    device_id, stream_id : str
        Ids the alerts are computed for (``stream_id`` default: the replay's source id,
        ``dropstream-replay-<file stem>``), so they match a live replay's alert ids.
    units : str | None
        ``--units`` for the recording (see :mod:`dropstream.acquisition.units`).
    settings : ServiceSettings, optional
        The service settings whose alert policy applies (threshold level, timing).
    event_labels : sequence of str, optional
        Annotation descriptions that are anomaly events; default every annotation.
    seed : int | None
        Seed of the keep masks (``None``: fresh entropy, like a device).
    start : float
        Seconds into the recording where the device's first window starts. A device that
        joins a running replay starts where it joined; its first window began at an alert's
        ``recording_onset + (onset_window_time - onset_time) - onset_sequence * hop`` (the
        difference is 0 when ``onset_window_time`` is null), and with that ``start`` the alert
        ids match.
    """
    settings = settings or ServiceSettings()
    path = Path(recording)
    sid = stream_id or f"dropstream-replay-{file_stem(path)}"
    model, payloads, signal, track = _run_device(
        bundle_path, path, device_id, sid, units, seed, start
    )
    decoded = BatchDecoder().decode(payloads)
    if decoded.rejected or len(decoded.groups) != 1:
        raise RuntimeError(f"the device's own messages were rejected: {decoded.rejected[:3]}")
    group = decoded.groups[0]
    scorer = Scorer(model, _cpu())
    policy = policy_for(model, settings)
    metrics = ServiceMetrics()
    classes = scorer.classes if model.kind == "classifier" else None
    drift = DriftReference.from_config(model.bundle.head_config.get("drift"))
    tracker = StreamTracker(policy, settings.dedup_windows, metrics, classes, drift=drift)
    keys = list(zip(group.device_id, group.stream_id, strict=True))
    tracker.admit(keys, group.sequence.tolist(), lambda i: 0)
    scores, top, span = scorer(group.dense())
    batch = tracker.batch_of(group, scores, top, span)
    updates: list[StreamUpdate] = []
    tracker.feed(batch, 0.0, updates)
    if keys:
        updates.extend(tracker.expire(keys[0]))  # the stream ends: its event closes
    meta = model.bundle
    outbox = Outbox("evaluate", "evaluate", metrics, meta.model_id, meta.model_version, policy.kind)
    last: dict[str, AlertMessage] = {}
    opened_at: dict[str, float] = {}
    for update in updates:
        msg = outbox.alert(update)
        if msg is None:
            continue
        last[msg.alert_id] = msg
        if msg.status == "open":
            opened_at[msg.alert_id] = update.event.deciding_window_end
    wanted = set(event_labels) if event_labels else None
    events = [a for a in track.annotations if wanted is None or a.description in wanted]
    bundle = model.bundle
    window_s = bundle.window_samples / bundle.sfreq
    result = Evaluation(
        recording=str(path),
        model_id=bundle.model_id,
        starts=group.window_start_lsl.copy(),
        window_s=window_s,
        scores=np.asarray(scores, dtype=np.float64),
        threshold=float(policy.high),
        alerts=sorted(last.values(), key=lambda m: m.onset_time),
        events=events,
        signal=signal,
        sfreq=float(track.info.sfreq),
    )
    duration = track.data.shape[0] / track.info.sfreq
    result.metrics = _metrics(result, opened_at, duration)
    return result


def _cpu() -> torch.device:
    return torch.device("cpu")


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks of ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _overlap(spans: list[tuple[float, float]], a: float, b: float) -> float:
    return sum(max(0.0, min(b, s1) - max(a, s0)) for s0, s1 in spans)


def _union(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s0, s1 in sorted(spans):
        if out and s0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s1))
        else:
            out.append((s0, s1))
    return out


def _metrics(
    ev: Evaluation, opened_at: dict[str, float], duration: float
) -> dict[str, float | int | None]:
    """:func:`event_metrics` of an evaluation's alerts against its events.

    Drift events (``kind == "drift"``) say the stream stopped resembling the training data, not
    that an anomaly happened: they are counted apart (``drift_events``, ``drift_s``), never as
    detections or false alerts.
    """
    spans = [(a.onset, a.onset + max(a.duration, 1.0 / ev.sfreq)) for a in ev.events]
    alert_spans, drift_spans = [], []
    for m in ev.alerts:
        onset = m.recording_onset if m.recording_onset is not None else m.onset_time
        offset = m.recording_offset if m.recording_offset is not None else m.offset_time
        end = offset if offset is not None else duration
        if m.kind == DRIFT_KIND:
            drift_spans.append((onset, end))
        else:
            alert_spans.append((onset, end, opened_at.get(m.alert_id, end)))
    out = event_metrics(ev.starts, ev.window_s, ev.scores, alert_spans, spans, duration)
    out["drift_events"] = len(drift_spans)
    out["drift_s"] = float(sum(b - a for a, b in _union(drift_spans)))
    return out


def event_metrics(
    starts: np.ndarray,
    window_s: float,
    scores: np.ndarray,
    alerts: Sequence[tuple[float, float, float]],
    events: Sequence[tuple[float, float]],
    duration: float,
) -> dict[str, float | int | None]:
    """Window AUC, event sensitivity and delay, false alerts per hour, normal time under alert.

    Parameters
    ----------
    starts : numpy.ndarray
        Window starts, seconds; a window is positive when it overlaps an event.
    window_s : float
        Window length, seconds.
    scores : numpy.ndarray
        Window scores (higher = more anomalous).
    alerts : sequence of (onset, offset, decided)
        Alert spans and when each was decided (last sample of its opening window), seconds.
    events : sequence of (start, end)
        Anomaly events, seconds.
    duration : float
        Length of the signal, seconds.
    """
    spans = _union(list(events))
    positive = np.array([_overlap(spans, s, s + window_s) > 0 for s in starts], dtype=bool)
    detected, delays = 0, []
    for s0, s1 in spans:
        hits = [d for a, b, d in alerts if a <= s1 + window_s and b >= s0]
        if hits:
            detected += 1
            delays.append(max(0.0, min(hits) - s0))
    false = [a for a, b, _ in alerts if _overlap(spans, a, b + window_s) <= 0]
    normal_s = max(0.0, duration - sum(s1 - s0 for s0, s1 in spans))
    alert_union = _union([(a, b) for a, b, _ in alerts])
    alert_s = sum(b - a for a, b in alert_union)
    alert_in_events = sum(_overlap(spans, a, b) for a, b in alert_union)
    return {
        "windows": len(starts),
        "events": len(spans),
        "n_alerts": len(alerts),
        "window_auc": _auc(np.asarray(scores, dtype=np.float64), positive),
        "event_sensitivity": detected / len(spans) if spans else None,
        "detection_delay_s_max": max(delays) if delays else None,
        "detection_delay_s_median": float(np.median(delays)) if delays else None,
        "false_alerts": len(false),
        "false_alerts_per_hour": len(false) / (normal_s / 3600.0) if normal_s > 0 else None,
        "normal_time_under_alert": (alert_s - alert_in_events) / normal_s if normal_s > 0 else None,
    }


# ------------------------------------------------------------------------------ the report
def _svg_trace(
    x: np.ndarray,
    y: np.ndarray,
    duration: float,
    spans: list[tuple[float, float, str, str]],
    hline: float | None = None,
    height: int = 140,
    width: int = 1100,
) -> str:
    """One SVG panel: ``y`` over ``x`` seconds, shaded ``(start, end, colour, title)`` spans."""
    if len(x) > 2 * width:  # min/max per pixel column keeps spikes visible
        cols = np.minimum((x / duration * width).astype(int), width - 1)
        lo = np.full(width, np.inf)
        hi = np.full(width, -np.inf)
        np.minimum.at(lo, cols, y)
        np.maximum.at(hi, cols, y)
        ok = np.isfinite(lo)
        px = np.repeat(np.flatnonzero(ok), 2).astype(float)
        py = np.column_stack([lo[ok], hi[ok]]).ravel()
    else:
        px, py = x / duration * width, y
    finite = py[np.isfinite(py)]
    top = max(float(finite.max()) if finite.size else 1.0, hline or -np.inf)
    bottom = min(float(finite.min()) if finite.size else 0.0, hline if hline is not None else 0)
    span = top - bottom or 1.0

    def sy(v: float) -> float:
        return height - 4 - (v - bottom) / span * (height - 8)

    parts = [f'<svg width="{width}" height="{height}" style="border:1px solid #ccc">']
    for s0, s1, colour, title in spans:
        x0, x1 = s0 / duration * width, s1 / duration * width
        parts.append(
            f'<rect x="{x0:.1f}" y="0" width="{max(1.0, x1 - x0):.1f}" height="{height}" '
            f'fill="{colour}" fill-opacity="0.25"><title>{html.escape(title)}</title></rect>'
        )
    pts = " ".join(f"{a:.1f},{sy(b):.1f}" for a, b in zip(px, py, strict=True) if np.isfinite(b))
    parts.append(f'<polyline fill="none" stroke="#1f4e9c" stroke-width="1" points="{pts}"/>')
    if hline is not None:
        parts.append(
            f'<line x1="0" x2="{width}" y1="{sy(hline):.1f}" y2="{sy(hline):.1f}" '
            'stroke="#c0392b" stroke-dasharray="4 3"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def write_report(evaluations: Sequence[Evaluation], path: str | Path) -> Path:
    """Write one self-contained HTML report for ``evaluations``; returns its path."""
    out = Path(path)
    body = ["<h1>dropstream evaluate</h1>"]
    for ev in evaluations:
        duration = len(ev.signal) / ev.sfreq
        spans = [
            (a.onset, a.onset + max(a.duration, 0.05), "#7f8c8d", a.description) for a in ev.events
        ]
        spans += [
            (
                m.recording_onset if m.recording_onset is not None else m.onset_time,
                (m.recording_offset if m.recording_offset is not None else m.offset_time)
                or duration,
                "#e67e22" if m.kind == DRIFT_KIND else "#e74c3c",
                f"{m.kind} {m.alert_id} ({m.status}, peak score {m.score:.4g})",
            )
            for m in ev.alerts
        ]
        t = np.arange(len(ev.signal)) / ev.sfreq
        centres = ev.starts + ev.window_s
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in ev.metrics.items()
        )
        alerts = "".join(
            f"<tr><td>{m.alert_id}</td><td>{_fmt(m.recording_onset)}</td>"
            f"<td>{_fmt(m.recording_offset)}</td><td>{m.score:.4g}</td></tr>"
            for m in ev.alerts
        )
        body += [
            f"<h2>{html.escape(Path(ev.recording).name)} - model {html.escape(ev.model_id)}</h2>",
            "<p>signal (first model channel; grey: annotations counted as events, red: alerts, "
            "orange: drift)</p>",
            _svg_trace(t, ev.signal, duration, spans),
            f"<p>score at the end of each window; dashed: threshold {ev.threshold:.4g}</p>",
            _svg_trace(centres, ev.scores, duration, spans, hline=ev.threshold),
            f"<table border=1 cellpadding=3>{rows}</table>",
            "<p>alerts (seconds into the recording)</p>",
            "<table border=1 cellpadding=3><tr><th>alert id</th><th>onset</th><th>offset</th>"
            f"<th>peak score</th></tr>{alerts}</table>",
        ]
    out.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>dropstream evaluate</title>"
        "</head><body style='font-family:sans-serif'>" + "\n".join(body) + "</body></html>"
    )
    return out


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))
