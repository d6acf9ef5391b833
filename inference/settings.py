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
    freshness_s : float or None
        Windows whose wall-clock start is older than this many seconds are refused (dead
        letter ``stale``) *unless their sequence number is above their stream's high-water
        mark*: such a window was never seen, so it is served whatever its age (a device's spool
        draining after a long outage); the mark is what refuses replays. The bound thus applies
        where no mark is known: a stream this process never saw and that no saved mark
        (``state_dir``) covers, where an old window may be a replay of captured ones. ``None``:
        no bound (then replays of streams with no mark are not refused).
    max_clock_skew_s : float
        Windows whose wall-clock start is more than this ahead of the server's clock are
        refused (dead letter ``from-the-future``).
    jump_tolerance_s : float or None
        A window more than one sequence number ahead of its stream's newest must start that
        many hops later on the wall clock, give or take this many seconds; otherwise it is
        refused (``implausible-sequence``) without touching the stream (``None``: no check).
    idle_forget_s : float
        Streams with nothing in progress and silent this long are forgotten (memory); their
        high-water marks are kept (at most ``max_streams`` of them).
    max_streams : int
        Most streams held; above it the least recently seen idle ones are forgotten.
    max_gaps, max_gaps_total : int
        Most gap ranges (runs of missing sequence numbers) remembered per stream and in all.
    device_rate : float or None
        Windows per second one device may send on average (token bucket; ``None``: no limit).
        Windows above it are refused (``rate-limited``) before decoding, so one device cannot
        starve the others.
    device_burst : float
        Windows a device may send at once above its rate (a spool catching up).
    commit_interval_ms : float
        Alerts and dead letters are handed to the producer after every batch; every this
        many milliseconds (default 100; 0: after every batch) the service waits for their
        acknowledgements and then commits the safe offsets. Longer means fewer broker round
        trips per window under load (at 4,000 windows/s and 5 ms batches: 10 commits per
        second instead of ~200) and a longer replay (same alert ids) after a crash or a
        rebalance (no commit is made inside
        the rebalance callback: kafka-python 3 runs it on its I/O thread, where a blocking
        commit raises).
    dead_letter_inline_bytes : int
        A refused record whose key and value exceed this is dead-lettered by reference (topic,
        partition, offset, size, SHA-256 in headers), without its value.
    delivery_timeout_s : float
        How long the service keeps re-delivering alerts (recreating its producer after fatal
        errors) before it gives up and exits; nothing is committed meanwhile.
    state_dir : str or None
        Folder where the service saves per-stream high-water marks of its partitions (replay
        protection across a restart of the service); ``None``: not saved.
    marks_interval_s : float
        How often those marks are saved, seconds.
    max_marks_bytes : int
        Most bytes of marks per partition; the most recently seen streams are kept when they do
        not all fit.
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
    freshness_s: float | None = 900.0
    max_clock_skew_s: float = 30.0
    jump_tolerance_s: float | None = 2.0
    idle_forget_s: float = 1800.0
    max_streams: int = 100_000
    max_gaps: int = 64
    max_gaps_total: int = 200_000
    device_rate: float | None = 50.0
    device_burst: float = 3000.0
    commit_interval_ms: float = 100.0
    dead_letter_inline_bytes: int = 256 * 1024
    delivery_timeout_s: float = 300.0
    state_dir: str | None = None
    marks_interval_s: float = 5.0
    max_marks_bytes: int = 1 << 20
    log_interval_s: float = 10.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_wait_ms < 0 or self.commit_interval_ms < 0:
            raise ServiceError("max_batch must be >= 1, max_wait_ms and commit_interval_ms >= 0")
        if self.max_streams < 1 or self.max_gaps < 1 or self.max_gaps_total < 1:
            raise ServiceError("max_streams, max_gaps and max_gaps_total must be >= 1")
        if self.device_rate is not None and (self.device_rate <= 0 or self.device_burst < 1):
            raise ServiceError("device_rate must be > 0 windows/s and device_burst >= 1 window")
        if self.freshness_s is not None and self.idle_forget_s < self.freshness_s:
            raise ServiceError(
                f"idle_forget_s ({self.idle_forget_s}) must be >= freshness_s "
                f"({self.freshness_s}): a stream forgotten sooner could be replayed"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ServiceError(f"device must be auto, cpu or cuda, not {self.device!r}")
