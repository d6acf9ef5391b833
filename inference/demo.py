"""The end-to-end demo behind ``dropstream demo``, offline on one machine.

What runs, all in this process except the broker (a tansu subprocess):

1. an embedded Kafka-protocol broker (:class:`dropstream.broker.embedded.EmbeddedBroker`) and the
   three topics;
2. the inference service (:class:`dropstream.inference.service.InferenceService`) in a thread, with
   the shipped pre-trained bundle ``demo_data/ecg_novelty.dsb``;
3. the shipped recording ``demo_data/ecg_artefacts.fif`` (30 s of real ECG with two real
   artefacts added at known times, see ``demo_data/README.md``) replayed over LSL at real-time
   pace (:class:`dropstream.acquisition.replay.RecordingReplay`);
4. the device-side agent (:class:`dropstream.local_encoder.agent.EncoderAgent`) reading that LSL
   stream, running the first layer, dropping units and sending the kept activations to Kafka;
5. a follower of the alert topic that prints each alert as it arrives.

The closing summary compares the alerts with the known anomaly spans (hits, misses, false
alerts) by the alerts' times in the recording, gives the detection delay (anomaly onset -> alert
received, wall clock) and the service's own latency (last sample of the deciding window -> alert
produced), and the bytes sent over Kafka against the raw samples.

Offline, the tests and benchmarks stand in for the device with
:func:`dropstream.local_encoder.simulated.encode_recording` (the same device code, no LSL), and
:func:`reference_alerts` computes the alerts the service must produce for its messages.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dropstream.broker.alert_message import AlertMessage, decode_alert
from dropstream.errors import DropstreamError
from dropstream.inference.alerting import AlertTiming

log = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
DEMO_RECORDING = DEMO_DATA / "ecg_artefacts.fif"
DEMO_BUNDLE = DEMO_DATA / "ecg_novelty.dsb"
DEMO_DEVICE = "demo-patch-1"
#: Alert timing of the demo: the served defaults, spelled out as serve options by the tests.
DEMO_ALERTS = asdict(AlertTiming())


class DemoError(DropstreamError):
    """The demo could not run (missing shipped data, broker or LSL trouble)."""


# --------------------------------------------------------------------------- simulated device
def read_recording(path: str | Path) -> tuple[np.ndarray, float, list[tuple[float, float]]]:
    """Samples ``(C, n)`` in microvolts, rate (Hz) and ``anomaly`` spans (s) of a FIF file."""
    import mne

    raw = mne.io.read_raw_fif(path, preload=True, verbose="error")
    spans = [
        (float(a["onset"]), float(a["onset"] + a["duration"]))
        for a in raw.annotations
        if a["description"] == "anomaly"
    ]
    return raw.get_data() * 1e6, float(raw.info["sfreq"]), spans


def reference_alerts(
    model_path: str | Path,
    messages: list[bytes],
    policy_kw: dict | None = None,
) -> list[tuple[str, str]]:
    """The ``(alert_id, status)`` updates the service must produce for ``messages`` (all of one
    or several streams, each in sequence order), computed offline with the same head and
    :class:`~dropstream.inference.alerting.EventDetector` - the reference for the service tests."""
    from dropstream.broker.alert_message import make_alert_id
    from dropstream.broker.wire import decode_activation
    from dropstream.inference.alerting import EventDetector
    from dropstream.inference.head import ServerModel
    from dropstream.inference.scoring import policy_for
    from dropstream.inference.service import ServiceSettings

    model = ServerModel.load(model_path)
    policy = policy_for(model, ServiceSettings(**(policy_kw or {})))
    decoded = [decode_activation(m) for m in messages]
    idx = np.stack([d.indices for d in decoded])
    val = np.stack([d.values.astype(np.float32) for d in decoded])
    scores = model.score(idx, val)
    detectors: dict[tuple[str, str], EventDetector] = {}
    out = []
    for d, score in zip(decoded, scores, strict=True):
        det = detectors.setdefault(
            (d.device_id, d.stream_id), EventDetector(d.device_id, d.stream_id, policy)
        )
        hop_s = d.hop_samples / d.sfreq
        for ev in det.update(d.sequence, float(score), d.lsl_time, d.window_end_lsl, hop_s):
            out.append((make_alert_id(ev.device_id, ev.stream_id, ev.onset_sequence), ev.status))
    return out


# --------------------------------------------------------------------------- summary
@dataclass
class AnomalyResult:
    """One known anomaly and what the pipeline made of it."""

    onset_s: float
    offset_s: float
    alert_id: str | None = None
    detection_delay_s: float | None = None  # anomaly onset -> alert received (wall clock)
    service_latency_s: float | None = None  # deciding window's last sample -> alert produced


@dataclass
class DemoSummary:
    """Outcome of :func:`run_demo`."""

    anomalies: list[AnomalyResult]
    alerts: dict[str, dict[str, AlertMessage]]  # alert_id -> status -> message
    false_alerts: list[str]
    windows_sent: int
    bytes_sent: int
    raw_bytes: int
    duration_s: float
    lines: list[str] = field(default_factory=list)

    @property
    def detected(self) -> int:
        """Known anomalies with an alert."""
        return sum(a.alert_id is not None for a in self.anomalies)

    @property
    def ok(self) -> bool:
        """Every anomaly detected, no false alert, every alert closed."""
        closed = all("closed" in v for v in self.alerts.values())
        return self.detected == len(self.anomalies) and not self.false_alerts and closed


def _match(
    spans: list[tuple[float, float]],
    alerts: dict[str, dict[str, AlertMessage]],
    anomaly_utc: Callable[[float], float],
    received: dict[str, float],
    tolerance_s: float,
) -> tuple[list[AnomalyResult], list[str]]:
    """Match alerts to the known anomaly spans by their time in the recording (``spans`` and
    the alerts' ``recording_onset``/``recording_offset``, seconds); the detection delay is the
    alert's arrival minus the anomaly's onset, both on this machine's wall clock."""
    results = [AnomalyResult(a, b) for a, b in spans]
    used: set[str] = set()

    def start(versions: dict[str, AlertMessage]) -> float:
        msg = versions.get("open") or versions["closed"]
        return msg.recording_onset if msg.recording_onset is not None else float("inf")

    by_onset = sorted(alerts.items(), key=lambda kv: start(kv[1]))
    for res in results:
        for aid, versions in by_onset:
            msg = versions.get("closed") or versions.get("open")
            assert msg is not None
            onset = start(versions)
            end = msg.recording_offset if msg.recording_offset is not None else onset
            if onset <= res.offset_s + tolerance_s and end >= res.onset_s - tolerance_s:
                if res.alert_id is None:
                    res.alert_id = aid
                    opened = versions.get("open", msg)
                    arrival = received.get(aid, float("nan"))
                    res.detection_delay_s = arrival - anomaly_utc(res.onset_s)
                    res.service_latency_s = opened.detection_latency_s
                used.add(aid)
    return results, sorted(set(alerts) - used)


# --------------------------------------------------------------------------- the demo
def run_demo(
    speed: float = 1.0,
    emit: Callable[[str], None] = print,
    recording: str | Path = DEMO_RECORDING,
    bundle_path: str | Path = DEMO_BUNDLE,
    tolerance_s: float = 1.0,
    alert_row: Callable[[AlertMessage], str] = str,
    alert_header: str | None = None,
    seed: int | None = None,
) -> DemoSummary:
    """Run the whole pipeline offline and return its summary (see the module docstring).

    Parameters
    ----------
    speed : float
        Replay speed (1.0 = real time; the recording lasts 30 s).
    emit : callable
        Receives each output line (alerts as they come, then the summary).
    recording, bundle_path : path-like
        The shipped demo data by default.
    tolerance_s : float
        An alert within this many seconds of an anomaly span counts as detecting it.
    alert_row : callable
        Turns each alert update into its output line (``dropstream demo`` passes the table row
        of ``dropstream alerts``; this layer does not import the CLI).
    alert_header : str, optional
        Emitted once before the first alert line.
    seed : int | None
        Seed of the device's keep masks, for tests that reproduce the run offline
        (``dropstream evaluate --seed``); ``None``: OS entropy, as on a real device.
    """

    from dropstream.acquisition.inlet import LiveStream
    from dropstream.acquisition.replay import RecordingReplay
    from dropstream.broker.auth import DeviceKey, DeviceKeys
    from dropstream.broker.clients import make_topic_reader
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.embedded import EmbeddedBroker
    from dropstream.broker.topics import ensure_topics
    from dropstream.inference.service import InferenceService, ServiceSettings
    from dropstream.local_encoder.agent import EncoderAgent
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.spool import Spool

    for path in (recording, bundle_path):
        if not Path(path).exists():
            raise DemoError(f"demo file {path} is missing; reinstall dropstream")
    t_start = time.monotonic()
    samples, sfreq, spans = read_recording(recording)
    device_bundle = load_device_bundle(bundle_path)
    tag = uuid.uuid4().hex[:8]
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        config = ClientConfig(
            bootstrap=broker.bootstrap,
            partitions=2,
            group_id=f"demo-{tag}",
            session_timeout_ms=2000,
            fetch_max_wait_ms=10,
        )
        ensure_topics(config)
        emit(
            f"broker {broker.bootstrap} (embedded tansu); topics {config.activations_topic}, "
            f"{config.alerts_topic}, {config.dead_letter_topic}"
        )
        settings = ServiceSettings(max_wait_ms=10.0, log_interval_s=60.0, **DEMO_ALERTS)
        # an ephemeral device key, known to this run's service only: every window is verified
        device_key = DeviceKey.generate(DEMO_DEVICE)
        authenticator = DeviceKeys({DEMO_DEVICE: device_key.secret})
        service = InferenceService(config, bundle_path, settings, authenticator=authenticator)
        serve_thread = threading.Thread(target=service.run, name="demo-serve", daemon=True)
        serve_thread.start()

        alerts: dict[str, dict[str, AlertMessage]] = {}
        received: dict[str, float] = {}
        stop_follow = threading.Event()
        follower = make_topic_reader(config, config.alerts_topic, fetch_max_wait_ms=10)

        def follow() -> None:
            while not stop_follow.is_set():
                for recs in follower.poll(timeout_ms=100).values():
                    for rec in recs:
                        msg = decode_alert(rec.value)
                        versions = alerts.setdefault(msg.alert_id, {})
                        if msg.status in versions:
                            continue  # a duplicate after a replay: same id, already shown
                        versions[msg.status] = msg
                        if msg.status == "open":
                            received[msg.alert_id] = time.time()
                        emit(alert_row(msg))

        follow_thread = threading.Thread(target=follow, name="demo-alerts", daemon=True)
        follow_thread.start()
        if not service.ready.wait(30):
            raise DemoError("the inference service did not join its consumer group in 30 s")

        source_id = f"dropstream-demo-{tag}"
        replay = RecordingReplay([recording], speed=speed, source_id=source_id).start()
        inlet = LiveStream.connect(source_id=source_id, timeout=10.0)
        spool = Spool(Path(tmp) / "spool")
        agent = EncoderAgent(device_bundle, inlet, config, spool, device_key, seed=seed)
        agent.start()
        emit(
            f"replaying {Path(recording).name} ({samples.shape[1] / sfreq:.0f} s, "
            f"{sfreq:g} Hz, {samples.shape[0]} ch) over LSL at {speed:g}x; device "
            f"{DEMO_DEVICE} encodes m={device_bundle.layer.width}, keeps "
            f"K={device_bundle.keep} per window"
        )
        if alert_header is not None:
            emit(alert_header)
        try:
            replay.wait_started(10)
            t0_utc = replay.publisher.t0_utc
            duration = samples.shape[1] / sfreq / speed
            replay.wait(duration + 30)
            time.sleep(0.5)  # the last chunk reaches the inlet
            stats = agent.stop(flush_timeout=10.0)
            # let the service score the last windows and the follower read the last alerts
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and service.metrics.windows < stats.windows_sent:
                time.sleep(0.05)
            time.sleep(0.5)
        finally:
            if agent.running:
                agent.stop(flush_timeout=1.0)
            inlet.close()
            replay.stop()
            spool.close()
            service.stop()
            serve_thread.join(15)
            stop_follow.set()
            follow_thread.join(5)
            follower.close()
        bytes_sent = _topic_bytes(config)
    assert t0_utc is not None
    results, false_alerts = _match(
        spans, alerts, lambda s: t0_utc + s / speed, received, tolerance_s
    )
    summary = DemoSummary(
        anomalies=results,
        alerts=alerts,
        false_alerts=false_alerts,
        windows_sent=stats.windows_sent,
        bytes_sent=bytes_sent,
        raw_bytes=int(samples.size * 4),
        duration_s=time.monotonic() - t_start,
    )
    for line in summary_lines(summary, spans, service.metrics.windows):
        summary.lines.append(line)
        emit(line)
    return summary


def _topic_bytes(config) -> int:  # noqa: ANN001 - ClientConfig, imported lazily
    """Key + value bytes of every message on the activations topic."""
    from dropstream.broker.clients import make_topic_reader

    consumer = make_topic_reader(config, config.activations_topic)
    try:
        tps = list(consumer.assignment())
        ends = consumer.end_offsets(tps)
        total, deadline = 0, time.monotonic() + 10
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=200).values():
                total += sum(len(r.value or b"") + len(r.key or b"") for r in recs)
        return total
    finally:
        consumer.close()


def summary_lines(summary: DemoSummary, spans: list[tuple[float, float]], scored: int) -> list[str]:
    """The closing summary as text lines."""
    lines = ["", "summary"]
    for res, (a, b) in zip(summary.anomalies, spans, strict=True):
        if res.alert_id is None:
            lines.append(f"  anomaly {a:5.1f}-{b:5.1f} s: MISSED")
        else:
            lines.append(
                f"  anomaly {a:5.1f}-{b:5.1f} s: alert {res.alert_id}, detected "
                f"{res.detection_delay_s:.2f} s after onset (service latency "
                f"{1000 * (res.service_latency_s or 0):.0f} ms after the deciding window)"
            )
    lines.append(
        f"  false alerts: {len(summary.false_alerts)}"
        + (f" ({', '.join(summary.false_alerts)})" if summary.false_alerts else "")
    )
    ratio = summary.bytes_sent / max(summary.raw_bytes, 1)
    lines.append(
        f"  windows sent {summary.windows_sent}, scored {scored}; bytes sent "
        f"{summary.bytes_sent:,} vs raw float32 samples {summary.raw_bytes:,} ({ratio:.0%}; the "
        "raw signal never left the device)"
    )
    lines.append(
        f"  result: {'OK' if summary.ok else 'NOT OK'} - {summary.detected}/"
        f"{len(summary.anomalies)} anomalies detected in {summary.duration_s:.0f} s"
    )
    return lines
