"""Turn per-window scores into alert *events* with an onset and an offset.

Each (device, stream) gets an :class:`EventDetector`, a small state machine fed the windows of
that stream in sequence order:

``idle``
    A window scoring at or above the **high** threshold starts a *candidate* event (unless the
    stream is still in its refractory period).
``candidate``
    The candidate becomes an **open** event once ``min_windows`` consecutive windows score at or
    above the **low** threshold (hysteresis: low <= high); a window below low, or a lost window,
    drops the candidate. With ``min_windows == 1`` the first window over high opens the event.
``open``
    Windows at or above low extend the event. After the score falls below low the event stays
    open for a *merge gap* of ``merge_gap_windows``: a window at or above high within the gap
    continues the same event (two bursts close together are one event). When the gap expires
    the event is **closed** at its last active window and a **refractory** period of
    ``refractory_windows`` follows in which no new event can start.

Sequence gaps (lost windows) count as windows below threshold, and so does signal the device
reports it did not encode (``unencoded_windows`` of :meth:`EventDetector.update`: windows that
would have been cut from it, on top of any sequence gap). A stream that falls silent is
*expired* by the service after a while (:meth:`EventDetector.expire`): an open event is closed at
its last active window. An alert is emitted twice under
one id (:func:`dropstream.broker.alert_message.make_alert_id` of device, stream and onset sequence):
once ``open`` and once ``closed``. Everything is a pure function of the window sequence and scores,
so replaying the same windows from a *clean* point (see :attr:`EventDetector.clean`) reproduces the
same alert ids; the service commits Kafka offsets only at such points.

Thresholds come from the bundle's calibration (quantiles of held-out normal scores) and can be
adapted per device from the first ``adapt_windows`` windows it sends (see :class:`AlertPolicy`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dropstream.errors import DropstreamError


class AlertPolicyError(DropstreamError):
    """Alert settings that cannot work (e.g. low threshold above the high one)."""


@dataclass(frozen=True)
class AlertTiming:
    """Event timing of served streams, in seconds: the one place of its defaults.

    ``ServiceSettings``, ``dropstream serve`` and the demo start from these values;
    :class:`AlertPolicy` on its own defaults to a bare detector (no minimum duration, no
    refractory period).

    Attributes
    ----------
    min_duration_s, merge_gap_s, refractory_s : float
        See :class:`AlertPolicy`.
    """

    min_duration_s: float = 0.5
    merge_gap_s: float = 1.0
    refractory_s: float = 2.0


@dataclass(frozen=True)
class AlertPolicy:
    """Thresholds and event timing, in seconds (converted to windows with the stream's hop).

    Attributes
    ----------
    high, low : float
        Score thresholds: an event starts at >= high and lasts while >= low (low <= high).
    min_duration_s : float
        Minimum event duration before it is reported (0: the first window over high reports).
    merge_gap_s : float
        Below-threshold time that still joins two bursts into one event.
    refractory_s : float
        Quiet time after an event closes in which no new event starts.
    adapt_windows : int
        Per-device adaptation: the first ``adapt_windows`` windows of each stream estimate its
        own ``adapt_level`` quantile; its thresholds become ``max(bundle, own)`` (ratio low/high
        kept). 0 disables adaptation.
    adapt_level : float
        Quantile of a stream's first windows used by the adaptation.
    kind, label : str
        ``kind``/``label`` of the alert messages (``"anomaly"`` for a novelty model).
    """

    high: float
    low: float
    min_duration_s: float = 0.0
    merge_gap_s: float = 1.0
    refractory_s: float = 0.0
    adapt_windows: int = 0
    adapt_level: float = 0.99
    kind: str = "anomaly"
    label: str = "anomaly"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.high) and np.isfinite(self.low)):
            raise AlertPolicyError("alert thresholds must be finite")
        if self.low > self.high:
            raise AlertPolicyError(
                f"hysteresis low threshold {self.low} is above the high threshold {self.high}; "
                "pick a lower --hysteresis-level"
            )
        if min(self.min_duration_s, self.merge_gap_s, self.refractory_s) < 0:
            raise AlertPolicyError("min duration, merge gap and refractory period must be >= 0 s")
        if self.adapt_windows < 0 or not 0.0 < self.adapt_level < 1.0:
            raise AlertPolicyError("adapt_windows must be >= 0 and adapt_level in (0, 1)")

    @classmethod
    def from_calibration(
        cls,
        calibration: dict,
        level: float | None = None,
        hysteresis_level: float | None = 0.95,
        **timing: float | int | str,
    ) -> AlertPolicy:
        """Thresholds from a novelty bundle's calibration quantiles.

        Parameters
        ----------
        calibration : dict
            ``head_config["calibration"]`` with ``levels``, ``quantiles`` and ``threshold``.
        level : float, optional
            Quantile level of held-out normal scores for the high threshold (default: the
            bundle's stored threshold, its 0.99 quantile).
        hysteresis_level : float, optional
            Level for the low threshold (clipped to the high one); ``None``: low = high.
        """
        try:
            levels = np.asarray(calibration["levels"], float)
            quantiles = np.asarray(calibration["quantiles"], float)
            stored = float(calibration["threshold"])
        except (KeyError, TypeError, ValueError) as exc:
            raise AlertPolicyError(f"bundle calibration is incomplete: {exc!r}") from exc

        def at(q: float) -> float:
            return float(np.interp(q, levels, quantiles))

        high = stored if level is None else at(level)
        low = high if hysteresis_level is None else min(high, at(hysteresis_level))
        return cls(high=high, low=low, **timing)  # type: ignore[arg-type]


@dataclass
class AlertEvent:
    """One alert update produced by a detector (rendered to an AlertMessage by the service)."""

    status: str  # "open" or "closed"
    device_id: str
    stream_id: str
    onset_sequence: int
    onset_time: float  # LSL-clock start of the onset window
    offset_sequence: int | None
    offset_time: float | None
    score: float
    threshold: float
    deciding_window_end: float  # LSL-clock time of the last sample of the deciding window
    onset_window: float | None = None  # LSL-clock start of the onset window (None: onset_time)


@dataclass
class EventDetector:
    """Event state machine of one (device, stream); feed windows with :meth:`update`.

    Parameters
    ----------
    device_id, stream_id : str
    policy : AlertPolicy
    """

    device_id: str
    stream_id: str
    policy: AlertPolicy
    high: float = field(init=False)
    low: float = field(init=False)
    state: str = field(default="idle", init=False)
    last_sequence: int | None = field(default=None, init=False)
    onset_sequence: int = field(default=0, init=False)
    onset_time: float = field(default=0.0, init=False)
    onset_window: float = field(default=0.0, init=False)  # the onset window's start
    run_windows: int = field(default=0, init=False)
    active_sequence: int = field(default=0, init=False)
    active_time: float = field(default=0.0, init=False)
    peak: float = field(default=0.0, init=False)
    refractory_until: int = field(default=-1, init=False)  # a position (see update)
    # positions count every window, encoded or not: sequence + windows reported unencoded so far
    _unencoded: int = field(default=0, init=False, repr=False)
    _active_at: int = field(default=0, init=False, repr=False)
    _adapt: list[float] = field(default_factory=list, init=False, repr=False)
    _windows: tuple[int, int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.high = self.policy.high
        self.low = self.policy.low

    @property
    def clean(self) -> bool:
        """No candidate, open event, merge gap, refractory period or adaptation in progress:
        replaying from the next window with a fresh detector gives the same alerts."""
        return (
            self.state == "idle"
            and ((at := self._position()) is None or at >= self.refractory_until)
            and not (0 < len(self._adapt) < self.policy.adapt_windows)
        )

    def _position(self) -> int | None:
        """The last window's position (sequence plus the unencoded windows before it)."""
        return None if self.last_sequence is None else self.last_sequence + self._unencoded

    def _timing(self, hop_s: float) -> tuple[int, int, int]:
        if self._windows is None:
            hop = max(hop_s, 1e-9)
            p = self.policy
            self._windows = (
                max(1, int(np.ceil(p.min_duration_s / hop - 1e-9))),
                int(np.floor(p.merge_gap_s / hop + 1e-9)),
                int(np.ceil(p.refractory_s / hop - 1e-9)),
            )
        return self._windows

    def _close(self, out: list[AlertEvent], end_time: float) -> None:
        _, _, refractory = self._windows or (1, 0, 0)
        out.append(
            AlertEvent(
                "closed",
                self.device_id,
                self.stream_id,
                self.onset_sequence,
                self.onset_time,
                self.active_sequence,
                self.active_time,
                self.peak,
                self.high,
                end_time,
                self.onset_window,
            )
        )
        self.state = "idle"
        self.refractory_until = self._active_at + 1 + refractory

    def update(
        self,
        sequence: int,
        score: float,
        window_start: float,
        window_end: float,
        hop_s: float,
        unencoded_windows: int = 0,
        located: tuple[float, float] | None = None,
    ) -> list[AlertEvent]:
        """Feed one window (in sequence order); returns the alert updates it causes.

        Parameters
        ----------
        sequence : int
            The window's sequence number (must exceed the last one fed).
        score : float
            Its anomaly score (higher = more anomalous).
        window_start, window_end : float
            LSL-clock times of its first and last sample, seconds.
        hop_s : float
            Hop between windows, seconds.
        unencoded_windows : int
            Windows missing just before this one that its sequence number does not show: the
            device did not encode that signal (``unencoded_s`` of the message, in hops). They
            count exactly like lost windows of a sequence gap.
        located : (float, float), optional
            Where in the window the head located the anomaly (LSL times within
            ``window_start``..``window_end``; :meth:`dropstream.inference.energy.EnergyScorer.
            scores_and_spans`): an event's onset and offset times use it instead of the
            window's ends (the latency still counts from ``window_end``). ``None``: the whole
            window.
        """
        first, last = (window_start, window_end) if located is None else located
        min_w, gap_w, _ = self._timing(hop_s)
        out: list[AlertEvent] = []
        p = self.policy
        if p.adapt_windows and len(self._adapt) < p.adapt_windows:  # still adapting
            self._adapt.append(float(score))
            if len(self._adapt) == p.adapt_windows:
                own = float(np.quantile(self._adapt, p.adapt_level))
                if own > self.high:
                    ratio = self.low / self.high if self.high > 0 else 1.0
                    self.high, self.low = own, own * ratio
        last_at = self._position()
        self._unencoded += unencoded_windows
        at = sequence + self._unencoded  # the window's position: gaps of both kinds counted
        lost = last_at is not None and at > last_at + 1
        self.last_sequence = sequence
        if self.state == "open":
            if at - self._active_at - 1 > gap_w:
                self._close(out, window_end)  # lost or quiet windows used up the merge gap
            elif (at == self._active_at + 1 and score >= self.low) or (score >= self.high):
                self.active_sequence, self.active_time = sequence, last
                self._active_at = at
                self.peak = max(self.peak, score)
                return out
            else:
                if at - self._active_at > gap_w:
                    self._close(out, window_end)
                return out  # a quiet window: inside the merge gap, or the one that closed it
        if self.state == "candidate":
            if not lost and score >= self.low:
                self.run_windows += 1
                self.active_sequence, self.active_time = sequence, last
                self._active_at = at
                self.peak = max(self.peak, score)
                if self.run_windows >= min_w:
                    self._open(out, window_end)
                return out
            self.state = "idle"
        if self.state == "idle" and at >= self.refractory_until and score >= self.high:
            self.state = "candidate"
            self.onset_sequence, self.onset_time = sequence, first
            self.onset_window = window_start
            self.run_windows = 1
            self.active_sequence, self.active_time = sequence, last
            self._active_at = at
            self.peak = score
            if min_w <= 1:
                self._open(out, window_end)
        return out

    def expire(self) -> list[AlertEvent]:
        """The stream went silent: close an open event at its last active window, drop a
        candidate, end the refractory period and any unfinished adaptation (keeping the
        thresholds in use), so the detector is :attr:`clean`. Returns the closing update."""
        out: list[AlertEvent] = []
        if self.state == "open":
            self._close(out, self.active_time)
        self.state = "idle"
        self.refractory_until = -1
        if 0 < len(self._adapt) < self.policy.adapt_windows:
            self._adapt.extend([float("nan")] * (self.policy.adapt_windows - len(self._adapt)))
        return out

    def _open(self, out: list[AlertEvent], window_end: float) -> None:
        self.state = "open"
        out.append(
            AlertEvent(
                "open",
                self.device_id,
                self.stream_id,
                self.onset_sequence,
                self.onset_time,
                None,
                None,
                self.peak,
                self.high,
                window_end,
                self.onset_window,
            )
        )
