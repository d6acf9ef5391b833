"""The on-device encoder agent: inlet -> windows -> first layer -> dropping -> spool -> Kafka.

:class:`EncoderAgent` ties the device side together with two threads that never wait on each
other:

* the **acquisition** thread polls the inlet (never blocking), cuts windows
  (:class:`~dropstream.local_encoder.windowing.WindowBuffer`), encodes them
  (:class:`~dropstream.local_encoder.encoder.WindowEncoder`) and appends each message, with the
  stream's next sequence number, to the on-disk :class:`~dropstream.local_encoder.spool.Spool`;
* the **sender** thread reads the spool in order and hands messages to a kafka-python producer
  (``acks=all``, idempotent). A message is deleted from the spool only after the broker
  acknowledged it. When a send fails (broker down for longer than the producer retries, a
  broker that restarted and forgot the producer, ...) the producer is closed, a new one is made
  and everything still in the spool is sent again, oldest first.

So a slow or absent broker only makes the spool grow; the LSL side keeps polling. Duplicates can
happen only when the broker stored a message but its acknowledgement was lost (a broker crash,
or the agent killed between the acknowledgement and the deletion); the server drops them by
``(device, stream, sequence)``. Gaps in the sequence numbers mean windows dropped by the spool's
full policy.

Use it in-process::

    key = DeviceKey.load("clinic-7-eeg.key")   # from 'dropstream keys provision'
    agent = EncoderAgent(bundle, inlet, config, spool, key)
    agent.start()            # background threads
    print(agent.stats)       # windows sent, spool depth, send latency, lost samples
    agent.stop()             # flushes what the broker takes in time, spools the rest
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dropstream.broker.auth import DeviceKey
from dropstream.broker.config import ClientConfig
from dropstream.errors import DropstreamError
from dropstream.local_encoder.bundle import DeviceBundle
from dropstream.local_encoder.encoder import WindowEncoder
from dropstream.local_encoder.spool import Spool, SpoolItem
from dropstream.local_encoder.windowing import WindowBuffer

log = logging.getLogger(__name__)


class AgentError(DropstreamError):
    """The agent stopped because of an error it cannot work around."""


class InletLike(Protocol):
    """What the agent needs from an inlet (:class:`acquisition.LiveStream` fits)."""

    info: Any

    def poll(self) -> Any:
        """A chunk with ``data (n, C)``, ``timestamps (n,)`` and ``gaps``; never blocks."""


@dataclass(frozen=True)
class AgentStats:
    """A snapshot of the agent's counters.

    Attributes
    ----------
    windows_made : int
        Windows encoded and spooled since start.
    windows_sent : int
        Messages acknowledged by the broker since start.
    windows_dropped : int
        Messages the spool's full policy dropped since start.
    spool_depth, spool_bytes : int
        Messages (and their bytes) waiting in the spool.
    send_latency_s : float | None
        Seconds from spooling to acknowledgement of the last acknowledged message.
    lost_samples : int
        Samples that did not make it into a window: inlet gaps, non-finite samples and
        unfinished windows at a break.
    resends : int
        Messages handed to a fresh producer again after a failed send.
    broker_ok : bool
        False after a failed send until the next acknowledgement, and while spooled messages
        have waited more than 5 s without any acknowledgement.
    next_sequence : int
        Sequence number of the next window.
    stream_ok : bool
        False while the inlet reports the stream lost (it reconnects by itself).
    unencoded_s : float
        Seconds of signal reported as not encoded (``unencoded_s`` of the messages) since
        start: downtime before this start, stream breaks.
    """

    windows_made: int
    windows_sent: int
    windows_dropped: int
    spool_depth: int
    spool_bytes: int
    send_latency_s: float | None
    lost_samples: int
    resends: int
    broker_ok: bool
    next_sequence: int
    stream_ok: bool = True
    unencoded_s: float = 0.0

    def line(self) -> str:
        """One status line for a terminal."""
        lat = "-" if self.send_latency_s is None else f"{self.send_latency_s * 1e3:.0f} ms"
        return (
            f"windows sent {self.windows_sent} made {self.windows_made}  spool {self.spool_depth} "
            f"({self.spool_bytes / 1024:.0f} KiB)  latency {lat}  lost samples "
            f"{self.lost_samples}  dropped {self.windows_dropped}  "
            f"broker {'ok' if self.broker_ok else 'UNREACHABLE'}"
            + ("" if self.stream_ok else "  stream LOST")
            + (f"  unencoded {self.unencoded_s:.1f} s" if self.unencoded_s else "")
        )


class EncoderAgent:
    """Encode one stream on the device and deliver every window to Kafka, in order.

    Parameters
    ----------
    bundle : DeviceBundle
        Device part of the model; refused if its settings let the server invert windows.
    inlet : InletLike
        An open inlet (e.g. :class:`acquisition.LiveStream`); the caller closes it.
    config : ClientConfig
        Kafka connection and topic settings.
    spool : Spool
        The on-disk spool; the caller closes it.
    device_key : DeviceKey
        This device's id (the Kafka key of every message) and secret; every message is signed
        with it (:meth:`~dropstream.broker.auth.DeviceKey.sign`).
    poll_interval : float
        Shortest wait between inlet polls, seconds. After a poll the acquisition thread
        sleeps until the next window can be complete (its missing samples at the nominal
        rate), between ``poll_interval`` and ``max_poll_interval``: a 1 s hop costs about one
        poll per window instead of one per ``poll_interval``, and a window is still cut within
        ``poll_interval`` of its last sample's arrival.
    max_poll_interval : float
        Longest wait between inlet polls, seconds (stream-loss detection and status).
    max_in_flight : int
        Messages handed to the producer and not yet acknowledged, at most.
    seed : int | None
        Seed of the keep masks, for tests only (``None``: OS entropy).
    producer_overrides : dict, optional
        Extra kafka-python producer arguments.
    clock : callable
        Local LSL clock (seconds); the default is :func:`pylsl.local_clock`.

    Raises
    ------
    dropstream.local_encoder.first_layer.PrivacyGuardError
        If the bundle is invertible.
    dropstream.local_encoder.bundle.BundleError
        If the stream does not fit the bundle (rate, channels).
    """

    def __init__(
        self,
        bundle: DeviceBundle,
        inlet: InletLike,
        config: ClientConfig,
        spool: Spool,
        device_key: DeviceKey,
        *,
        poll_interval: float = 0.01,
        max_poll_interval: float = 0.25,
        max_in_flight: int = 256,
        seed: int | None = None,
        producer_overrides: dict[str, Any] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        bundle.check_privacy()
        if not isinstance(device_key, DeviceKey):
            raise AgentError(
                "the agent needs the device's key (DeviceKey); make one with 'dropstream keys "
                "provision --device-id ID'"
            )
        device_id = device_key.device_id
        if not device_id or len(device_id.encode("utf-8")) > 255:
            raise AgentError("device id must be 1..255 UTF-8 bytes")
        info = inlet.info
        self.bundle = bundle
        self.inlet = inlet
        self.config = config
        self.spool = spool
        self.device_id = device_id
        self.device_key = device_key
        self.stream_id = str(info.source_id or info.name)
        self.buffer = WindowBuffer(bundle, info.channel_names, info.sfreq)
        self.encoder = WindowEncoder(
            bundle, device_id, self.stream_id, seed, getattr(inlet, "recording_time", None)
        )
        self.poll_interval = float(poll_interval)
        self.max_poll_interval = max(float(max_poll_interval), self.poll_interval)
        self.max_in_flight = int(max_in_flight)
        # short bootstrap/metadata waits keep the sender responsive (and stop() quick) while the
        # broker is away; topics are created explicitly (dropstream broker / serve), never here
        self.producer_overrides = {
            "max_block_ms": 2000,
            "bootstrap_timeout_ms": 2000,
            "allow_auto_create_topics": False,
        } | dict(producer_overrides or {})
        if clock is None:
            import pylsl

            clock = pylsl.local_clock
        self._clock = clock
        self._key = device_id.encode("utf-8")
        self._stream_key = f"{device_id}\x1f{self.stream_id}"
        self._seq = spool.next_sequence(self._stream_key)
        # where the next window is due: on the wall clock after a restart (from the spool), on
        # the LSL clock within this run; signal before a later window was not encoded
        self._resume_wall = spool.resume_wall_time(self._stream_key)
        self._next_lsl: float | None = None
        self._hop_s = bundle.hop_samples / bundle.sfreq
        self._unencoded_s = 0.0
        self._lock = threading.Lock()
        self._made = 0
        self._sent = 0
        self._dropped_at_start = spool.dropped
        self._latency: float | None = None
        self._resends = 0
        self._broker_ok = True
        self._waiting_since = float("inf")  # monotonic time since the spool waits for an ack
        self._last_warning = -float("inf")
        self._stream_lost = False
        self._stop_acq = threading.Event()
        self._stop_send = threading.Event()
        self._wake = threading.Event()
        self._send_deadline = float("inf")
        self._acq_thread: threading.Thread | None = None
        self._send_thread: threading.Thread | None = None
        #: The exception that stopped a thread, if any.
        self.error: BaseException | None = None

    # -- public ----------------------------------------------------------------------------

    @property
    def stats(self) -> AgentStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return AgentStats(
                windows_made=self._made,
                windows_sent=self._sent,
                windows_dropped=self.spool.dropped - self._dropped_at_start,
                spool_depth=self.spool.depth,
                spool_bytes=self.spool.size_bytes,
                send_latency_s=self._latency,
                lost_samples=self.buffer.lost_samples,
                resends=self._resends,
                broker_ok=self._broker_ok and time.monotonic() - self._waiting_since < 5.0,
                next_sequence=self._seq,
                stream_ok=not self._stream_lost,
                unencoded_s=self._unencoded_s,
            )

    @property
    def running(self) -> bool:
        """True while the acquisition thread runs."""
        return self._acq_thread is not None and self._acq_thread.is_alive()

    def start(self) -> EncoderAgent:
        """Start the acquisition and sender threads; returns ``self``."""
        if self._acq_thread is not None:
            raise AgentError("agent already started")
        self._send_thread = threading.Thread(
            target=self._guard(self._send_loop), name="dropstream-sender", daemon=True
        )
        self._acq_thread = threading.Thread(
            target=self._guard(self._acquire_loop), name="dropstream-acquire", daemon=True
        )
        self._send_thread.start()
        self._acq_thread.start()
        return self

    def stop(self, flush_timeout: float = 5.0) -> AgentStats:
        """Stop polling, then send what the broker takes within ``flush_timeout`` seconds.

        Every window cut so far is in the spool; what the broker has not acknowledged stays
        there for the next start. Returns the final stats.
        """
        self._stop_acq.set()
        if self._acq_thread is not None:
            self._acq_thread.join()
        self._send_deadline = time.monotonic() + max(0.0, flush_timeout)
        self._stop_send.set()
        self._wake.set()
        if self._send_thread is not None:
            self._send_thread.join()
        return self.stats

    def poll_once(self) -> int:
        """Poll the inlet once, encode and spool every completed window; returns their number."""
        chunk = self.inlet.poll()
        self._stream_lost = bool(getattr(chunk, "stream_lost", False))
        ts = np.asarray(chunk.timestamps, dtype=np.float64)
        breaks = [
            (int(np.searchsorted(ts, gap.start, side="left")), int(gap.lost_samples))
            for gap in getattr(chunk, "gaps", ())
        ]
        if ts.size == 0:
            for _, lost in breaks:
                self.buffer.note_lost(lost)
            return 0
        windows = self.buffer.push(chunk.data, ts, breaks)
        if not windows:
            return 0
        wall_offset = time.time() - self._clock()
        for w in windows:
            seq, wall = self._seq, w.lsl_time + wall_offset
            unencoded = self._unencoded(w.lsl_time, wall)
            msg = self.encoder.encode(w, seq, wall, unencoded)
            value = self.device_key.sign(self.encoder.to_bytes(msg))
            # spooled first, with the resume point; if this raises the number is not spent
            self.spool.put(self._key, value, self._stream_key, seq + 1, wall + self._hop_s)
            with self._lock:
                self._seq = seq + 1
                self._made += 1
                self._unencoded_s += unencoded
            self._next_lsl, self._resume_wall = w.lsl_time + self._hop_s, None
        self._wake.set()
        return len(windows)

    def _unencoded(self, lsl_time: float, wall_time: float) -> float:
        """Seconds of signal before a window starting at ``lsl_time`` / ``wall_time`` that were
        not encoded: since the previous window of this run (LSL clock), or for the first window
        after a restart since the window that was due when the last run stopped (wall clock)."""
        if self._next_lsl is not None:
            gap = lsl_time - self._next_lsl
        elif self._resume_wall is not None:
            gap = wall_time - self._resume_wall
        else:
            return 0.0  # the stream's first window ever
        # under half a sample is clock rounding, not lost signal
        return float(gap) if gap > 0.5 / self.bundle.sfreq else 0.0

    # -- threads ---------------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # surfaced through .error; never die silently
                self.error = exc
                log.exception("encoder agent thread %s failed", threading.current_thread().name)
                self._stop_acq.set()
                self._stop_send.set()
                self._send_deadline = time.monotonic()
                self._wake.set()

        return run

    def _acquire_loop(self) -> None:
        while not self._stop_acq.is_set():
            self.poll_once()
            due = self.buffer.seconds_to_next_window()
            self._stop_acq.wait(min(max(due, self.poll_interval), self.max_poll_interval))
        self.poll_once()  # what arrived until the stop

    def _make_producer(self) -> Any:
        from dropstream.broker.clients import make_producer

        return make_producer(self.config, **self.producer_overrides)

    def _send_loop(self) -> None:
        from kafka.errors import KafkaError

        producer: Any = None
        inflight: deque[tuple[SpoolItem, Any, float]] = deque()
        last_id = 0
        backoff = 0.1
        topic = self.config.activations_topic

        def wake(*_: object) -> None:
            self._wake.set()

        try:
            while True:
                if self._stop_send.is_set():
                    if time.monotonic() >= self._send_deadline:
                        break
                    if not inflight and self.spool.depth == 0:
                        break
                failure: BaseException | None = None
                if producer is None:
                    try:
                        producer = self._make_producer()
                    except DropstreamError as exc:
                        self._set_broker(False)
                        self._warn(f"cannot reach Kafka ({exc}); spooling, retrying")
                        self._wake.wait(backoff)
                        self._wake.clear()
                        backoff = min(backoff * 2, 2.0)
                        continue
                # hand new messages to the producer, in spool order
                if len(inflight) < self.max_in_flight:
                    for item in self.spool.peek(self.max_in_flight - len(inflight), last_id):
                        try:
                            fut = producer.send(topic, key=item.key, value=item.value)
                        except KafkaError as exc:
                            failure = exc
                            break
                        fut.add_both(wake)
                        inflight.append((item, fut, time.monotonic()))
                        last_id = item.id
                # collect acknowledgements from the head, in order
                acked: list[int] = []
                latency = None
                while inflight and inflight[0][1].is_done:
                    item, fut, _ = inflight[0]
                    if fut.failed():
                        failure = fut.exception
                        break
                    inflight.popleft()
                    acked.append(item.id)
                    latency = time.time() - item.created
                if acked or self.spool.depth == 0:
                    self._waiting_since = time.monotonic() if self.spool.depth else float("inf")
                elif self._waiting_since == float("inf"):
                    self._waiting_since = time.monotonic()
                if acked:
                    self.spool.remove(acked)
                    with self._lock:
                        self._sent += len(acked)
                        self._latency = latency
                        self._broker_ok = True
                    backoff = 0.1
                if failure is not None:
                    self._warn(
                        f"send failed ({failure!r}): is {self.config.bootstrap} reachable and "
                        f"does topic {topic!r} exist? {self.spool.depth} window(s) spooled; "
                        "resending them with a new producer"
                    )
                    with self._lock:
                        self._resends += len(inflight)
                        self._broker_ok = False
                    self._close_producer(producer)
                    producer = None
                    inflight.clear()
                    last_id = 0
                    self._wake.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    self._wake.clear()
                    continue
                if not acked:
                    # woken by a new window (acquisition) or an acknowledgement (the producer's
                    # callback); the timeout is a safety net, long when there is nothing to do
                    # (each pass reads the spool: 20 passes a second cost ~ms of CPU)
                    idle = not inflight and self.spool.depth == 0
                    self._wake.wait(0.5 if idle else 0.05)
                    self._wake.clear()
        finally:
            if producer is not None:
                self._close_producer(producer)

    def _warn(self, text: str) -> None:
        """Log a broker problem at most every 30 s (the status line shows it meanwhile)."""
        now = time.monotonic()
        if now - self._last_warning >= 30.0:
            self._last_warning = now
            log.warning(text)

    def _close_producer(self, producer: Any) -> None:
        with contextlib.suppress(Exception):
            producer.close(timeout=1.0)

    def _set_broker(self, ok: bool) -> None:
        with self._lock:
            self._broker_ok = ok
