"""Per-device rate limiting: a token bucket per device, so one device cannot starve the others.

Pure bookkeeping, no Kafka: the service asks :meth:`DeviceRateLimiter.allow` for each record
(by its Kafka key, the device id, after authentication) before decoding it; a refused record
costs a dictionary lookup and a by-reference dead letter, not a decode or a forward pass.
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

    def allow(self, device: bytes, now: float) -> bool:
        """Take one token of ``device`` at monotonic time ``now`` (seconds); whether it had one."""
        bucket = self._buckets.get(device)
        if bucket is None:
            self._buckets[device] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def prune(self, now: float) -> None:
        """Forget devices whose bucket is full again (they are as good as new)."""
        full_after = self.burst / self.rate
        for device in [d for d, (_, t) in self._buckets.items() if now - t >= full_after]:
            del self._buckets[device]
