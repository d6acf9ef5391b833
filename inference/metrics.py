"""Service metrics: Prometheus instruments and a periodic log line.

Every :class:`ServiceMetrics` owns its own :class:`prometheus_client.CollectorRegistry` (so
several services can live in one process, e.g. in tests). ``dropstream serve --metrics-port P``
exposes it at ``http://host:P/metrics``. Names (all prefixed ``dropstream_serve_``):

=================================  =========  ============================================
``windows_total``                  counter    windows scored
``duplicates_total``               counter    duplicate (device, stream, sequence) windows skipped
``late_total``                     counter    windows older than the stream's last one (scored,
                                              not fed to the event detector)
``lost_windows_total``             counter    windows missing from sequence gaps
``stream_restarts_total``          counter    streams whose sequence numbers went far back
``dead_letters_total{reason}``     counter    messages sent to the dead-letter topic
``alerts_total{status}``           counter    alert updates produced (open / closed)
``batch_size``                     histogram  windows per micro-batch
``alert_latency_seconds``          histogram  window's last sample -> alert produced (wall
                                              clocks, floored at 0: :func:`wall_latency`)
``window_latency_seconds``         histogram  window's last sample -> window scored (every window)
``fetch_latency_seconds``          histogram  record's producer timestamp -> fetched by the service
                                              (the broker and the consumer's fetch)
``consumer_lag``                   gauge      messages behind the end of the assigned partitions
``windows_per_second``             gauge      windows scored per second over the last interval
``tracked_streams``                gauge      streams the service holds state for
``tracked_gaps``                   gauge      remembered gap ranges (missing sequences) in all
``streams_forgotten_total``        counter    idle or least recently seen streams dropped
``gap_windows_forgotten_total``    counter    missing sequence numbers no longer remembered
``rate_limited_total``             counter    windows refused by the per-device rate limit
``producer_restarts_total``        counter    producers recreated after a fatal error
``offset_resets_total``            counter    partitions whose log was reset under the service
=================================  =========  ============================================
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("dropstream.inference.service")

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def wall_latency(now: float | np.ndarray, sample_wall: float | np.ndarray) -> float | np.ndarray:
    """Seconds from a sample's time on the device's wall clock to ``now`` on the server's,
    floored at 0.

    A sample cannot be scored before it was measured, so a negative difference is an artefact of
    the clocks: a producer that stamps samples ahead of their arrival (mne-lsl's ``PlayerLSL``
    stamps the last sample of each chunk with the time the *next* chunk is due, ``chunk_size /
    sfreq`` ahead: -71 ms was seen with a replayed file) or two machines' clocks that NTP does
    not keep together. The floor keeps such differences out of the histograms and the alerts;
    the latency measured is then at most that offset too low.
    """
    return np.maximum(np.subtract(now, sample_wall), 0.0)


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe every value of ``values`` in an unlabelled histogram with one bucket count per
    bucket (prometheus-client's ``observe`` one by one would cost ~1 us per window)."""
    bounds = np.asarray(histogram._upper_bounds, float)  # includes +Inf
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or total is None or len(buckets) != len(bounds):
        for v in values.tolist():  # pragma: no cover - another prometheus-client layout
            histogram.observe(v)
        return
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(values.sum()))


@dataclass
class ServiceMetrics:
    """Counters of one service instance, mirrored to Prometheus and logged every ``interval_s``."""

    interval_s: float = 10.0
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    windows: int = 0
    duplicates: int = 0
    late: int = 0
    lost: int = 0
    unencoded_s: float = 0.0
    restarts: int = 0
    dead_letters: int = 0
    alerts: int = 0
    lag: int = 0
    rate_limited: int = 0
    producer_restarts: int = 0
    offset_resets: int = 0
    streams_forgotten: int = 0
    alert_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    _last_log: float = field(default_factory=time.monotonic)
    _last_windows: int = 0
    _batches: list[int] = field(default_factory=list)
    # this interval's per-window stage latencies (s), for the log line's medians
    _stages: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {"sent": [], "fetched": [], "scored": [], "alert": []}
    )

    def __post_init__(self) -> None:
        r, p = self.registry, "dropstream_serve_"
        self.c_windows = Counter(p + "windows", "windows scored", registry=r)
        self.c_dup = Counter(p + "duplicates", "duplicate windows skipped", registry=r)
        self.c_late = Counter(p + "late", "late windows", registry=r)
        self.c_lost = Counter(p + "lost_windows", "windows missing from gaps", registry=r)
        self.c_unencoded = Counter(
            p + "unencoded_seconds", "signal devices report they did not encode", registry=r
        )
        self.c_restart = Counter(
            p + "stream_restarts", "streams whose sequence restarted", registry=r
        )
        self.c_dead = Counter(p + "dead_letters", "dead letters", ["reason"], registry=r)
        self.c_alerts = Counter(p + "alerts", "alert updates produced", ["status"], registry=r)
        self.h_batch = Histogram(
            p + "batch_size", "windows per micro-batch", buckets=_BATCH_BUCKETS, registry=r
        )
        self.h_alert = Histogram(
            p + "alert_latency_seconds",
            "window's last sample to alert produced",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.h_window = Histogram(
            p + "window_latency_seconds",
            "window's last sample to window scored",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.h_fetch = Histogram(
            p + "fetch_latency_seconds",
            "record's producer timestamp to fetched by the service",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.g_lag = Gauge(p + "consumer_lag", "messages behind the partition ends", registry=r)
        self.g_rate = Gauge(p + "windows_per_second", "windows scored per second", registry=r)
        self.g_streams = Gauge(p + "tracked_streams", "streams with state", registry=r)
        self.g_gaps = Gauge(p + "tracked_gaps", "remembered gap ranges", registry=r)
        self.c_forgot = Counter(p + "streams_forgotten", "streams dropped", registry=r)
        self.c_gap_drop = Counter(
            p + "gap_windows_forgotten", "missing sequences no longer remembered", registry=r
        )
        self.c_limited = Counter(p + "rate_limited", "windows over a device's rate", registry=r)
        self.c_producer = Counter(p + "producer_restarts", "producers recreated", registry=r)
        self.c_reset = Counter(p + "offset_resets", "partitions reset under us", registry=r)

    def serve_http(self, port: int, addr: str = "127.0.0.1") -> tuple[str, int]:
        """Expose the registry at ``http://addr:port/metrics`` (a daemon thread); only on this
        host unless ``addr`` says otherwise (e.g. ``"0.0.0.0"``). Returns the bound address."""
        started = start_http_server(port, addr=addr, registry=self.registry)
        if isinstance(started, tuple):  # (server, thread) in prometheus-client >= 0.17
            host, bound_port = started[0].server_address[:2]
            return str(host), int(bound_port)
        return addr, port  # pragma: no cover - older prometheus-client returns nothing

    def batch(
        self,
        n_windows: int,
        window_latencies: np.ndarray | None = None,
        send_latencies: np.ndarray | None = None,
    ) -> None:
        """Record one scored micro-batch: its windows' latencies (s) from their last sample to
        scored and, where known, to the record's producer timestamp (the device's send)."""
        self.windows += n_windows
        self.c_windows.inc(n_windows)
        self.h_batch.observe(n_windows)
        self._batches.append(n_windows)
        if window_latencies is not None and window_latencies.size:
            observe_many(self.h_window, window_latencies)
            self._stages["scored"].append(window_latencies)
        if send_latencies is not None:
            send_latencies = send_latencies[np.isfinite(send_latencies)]
            if send_latencies.size:
                self._stages["sent"].append(send_latencies)

    def fetched(self, latencies: np.ndarray) -> None:
        """Record the seconds from records' producer timestamps to their fetch by the service."""
        if latencies.size:
            observe_many(self.h_fetch, latencies)
            self._stages["fetched"].append(latencies)

    def duplicate(self, n: int = 1) -> None:
        self.duplicates += n
        self.c_dup.inc(n)

    def late_window(self, n: int = 1) -> None:
        self.late += n
        self.c_late.inc(n)

    def lost_windows(self, n: int) -> None:
        self.lost += n
        self.c_lost.inc(n)

    def unencoded(self, seconds: float) -> None:
        """Devices reported ``seconds`` of signal they did not encode (counted as lost
        windows too, see :meth:`lost_windows`)."""
        self.unencoded_s += seconds
        self.c_unencoded.inc(seconds)

    def restart(self) -> None:
        self.restarts += 1
        self.c_restart.inc()

    def set_tracked(self, streams: int, gaps: int) -> None:
        self.g_streams.set(streams)
        self.g_gaps.set(gaps)

    def forgot_streams(self, n: int) -> None:
        self.streams_forgotten += n
        self.c_forgot.inc(n)

    def gaps_dropped(self, n_windows: int) -> None:
        self.c_gap_drop.inc(n_windows)

    def rate_limit(self, n: int) -> None:
        self.rate_limited += n
        self.c_limited.inc(n)

    def producer_restart(self) -> None:
        self.producer_restarts += 1
        self.c_producer.inc()

    def offset_reset(self) -> None:
        self.offset_resets += 1
        self.c_reset.inc()

    def dead_letter(self, reason: str) -> None:
        self.dead_letters += 1
        self.c_dead.labels(reason=reason).inc()

    def alert(self, status: str, latency_s: float) -> None:
        self.alerts += 1
        self.c_alerts.labels(status=status).inc()
        self.h_alert.observe(latency_s)
        self.alert_latencies.append(latency_s)
        self._stages["alert"].append(np.array([latency_s]))

    def set_lag(self, lag: int) -> None:
        self.lag = lag
        self.g_lag.set(lag)

    def maybe_log(self, force: bool = False) -> None:
        """Log throughput, batch sizes, lag, counts and per-window stage latency medians once
        per ``interval_s``."""
        now = time.monotonic()
        dt = now - self._last_log
        if not force and dt < self.interval_s:
            return
        rate = (self.windows - self._last_windows) / max(dt, 1e-9)
        self.g_rate.set(rate)
        sizes = np.asarray(self._batches or [0])
        # per-window stage medians of the interval (ms): window end -> sent (the producer's
        # timestamp), sent -> fetched by serve, window end -> scored, -> alert produced
        medians = {k: np.median(np.concatenate(v)) * 1e3 for k, v in self._stages.items() if v}
        stages = ", ".join(f"{k} {v:.1f}" for k, v in medians.items())
        log.info(
            "windows/s %.0f | batches %d (mean %.1f, max %d) | lag %d | windows %d, dup %d, "
            "late %d, lost %d, dead letters %d, alerts %d%s",
            rate,
            len(self._batches),
            sizes.mean(),
            sizes.max(),
            self.lag,
            self.windows,
            self.duplicates,
            self.late,
            self.lost,
            self.dead_letters,
            self.alerts,
            f" | latency medians (ms): {stages}" if stages else "",
        )
        self._last_log, self._last_windows, self._batches = now, self.windows, []
        self._stages = {k: [] for k in self._stages}
