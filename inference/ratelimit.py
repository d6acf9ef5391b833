"""Per-device rate limiting: a token bucket per device, so one device cannot starve the others.

Pure bookkeeping, no Kafka: per batch the service takes each device's tokens at once
(:meth:`DeviceRateLimiter.take`, by Kafka key, the device id, after authentication) before
decoding; a refused record costs a by-reference dead letter, not a decode or a forward pass.
"""

from __future__ import annotations


class DeviceRateLimiter:
    """Token buckets: ``rate`` windows per second per device, up to ``burst`` at once.

    Parameters
    ----------
    rate : float
        Sustained windows per second one device may send.
    burst : float
        Bucket size, windows (a device's spool catching up after an outage).
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._buckets: dict[bytes, list[float]] = {}  # device -> [tokens, time last refilled]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, device: bytes, n: int, now: float) -> int:
        """Take up to ``n`` tokens of ``device`` at monotonic time ``now`` (seconds); returns
        how many it had (its first that many windows pass)."""
        bucket = self._buckets.get(device)
        if bucket is None:
            tokens = self.burst
            bucket = self._buckets[device] = [tokens, now]
        else:
            tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
        granted = min(n, int(tokens))
        bucket[0] = tokens - granted
        return granted

    def allow(self, device: bytes, now: float) -> bool:
        """Take one token of ``device`` at monotonic time ``now`` (seconds); whether it had one."""
        return self.take(device, 1, now) == 1

    def prune(self, now: float) -> None:
        """Forget devices whose bucket is full again (they are as good as new)."""
        full_after = self.burst / self.rate
        for device in [d for d, (_, t) in self._buckets.items() if now - t >= full_after]:
            del self._buckets[device]
