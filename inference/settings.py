"""The one settings object of a serve process, and the service's error."""

from __future__ import annotations

from dataclasses import dataclass

from dropstream.errors import DropstreamError
from dropstream.inference.alerting import AlertTiming


class ServiceError(DropstreamError):
    """The service cannot start or lost its connection to Kafka for good."""


@dataclass(frozen=True)
class ServiceSettings:
    """Batching, device and alert settings of one service process.

    Attributes
    ----------
    max_batch : int
        Most windows scored in one forward pass.
    max_wait_ms : float
        Longest a window waits for its batch to fill, milliseconds (the latency cap).
    device : str
        Torch device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"`` or ``"cuda"``.
    threshold_level, hysteresis_level : float or None
        Calibration quantile levels for the high and low thresholds of a novelty model
        (``None``: the bundle's stored threshold; low = high).
    class_threshold : float
        For a classifier: alert when ``1 - P(normal)`` reaches this.
    min_duration_s, merge_gap_s, refractory_s : float
        Event timing (see :class:`dropstream.inference.alerting.AlertPolicy`).
    adapt_windows : int
        Per-device threshold adaptation from its first windows (0: off).
    adapt_level : float
        Quantile of a device's own first scores used by that adaptation.
    dedup_windows : int
        How far back (in windows) a stream's missing sequence numbers are remembered: a window
        that fills such a gap later is *late* (scored); anything else at or below the newest
        sequence seen is a duplicate and dropped. Memory per stream is O(open gaps).
    stale_after_s : float
        A stream with an event (or candidate, merge gap, refractory period) in progress that
        sends nothing for this long (wall clock) is expired: its open event is closed at its
        last active window, and its partition can commit past it again.
    log_interval_s : float
        Seconds between metric log lines.
    torch_threads : int or None
        Sets torch's intra-op CPU threads for the whole process (``None``: leave torch's
        setting alone, right for a library call). ``dropstream serve`` uses 1: it keeps torch's
        OpenMP workers from spinning on the cores the Kafka client threads need; on the 2-core
        dev box that cut the p99 alert latency with 100 devices from ~190 ms to ~40 ms
        (docs/bench/inference.md).
    """

    max_batch: int = 1024
    max_wait_ms: float = 5.0
    device: str = "auto"
    threshold_level: float | None = None
    hysteresis_level: float | None = 0.95
    class_threshold: float = 0.5
    min_duration_s: float = AlertTiming.min_duration_s
    merge_gap_s: float = AlertTiming.merge_gap_s
    refractory_s: float = AlertTiming.refractory_s
    adapt_windows: int = 0
    adapt_level: float = 0.99
    dedup_windows: int = 4096
    stale_after_s: float = 30.0
    log_interval_s: float = 10.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ServiceError("max_batch must be >= 1 and max_wait_ms >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ServiceError(f"device must be auto, cpu or cuda, not {self.device!r}")
