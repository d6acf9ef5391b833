"""Benchmark: cost of device authentication and alert signatures, microseconds per message.

Times, on one core, for a real-sized activation message (the demo bundle's layout, m = 128,
K = 32; 247 bytes): the device's :meth:`DeviceKey.sign`, the service's
:meth:`DeviceKeys.verify` and :meth:`DeviceKeys.check_batch` (per message) with 1,000 devices in
the store, a forged message's refusal, and for comparison an Ed25519 verification of the same
bytes (the scheme not chosen for devices) and the service's alert signature.

Usage::

    python benchmarks/auth_speed.py
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dropstream.broker.auth import AlertSigner, AuthError, DeviceKey, DeviceKeys
from dropstream.broker.wire import ActivationMessage, encode_activation


def _per_call_us(fn, n: int) -> float:  # noqa: ANN001 - any callable without arguments
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    """Print one line per operation."""
    devices = [DeviceKey.generate(f"clinic-{i:04d}/patch") for i in range(1000)]
    store = DeviceKeys({d.device_id: d.secret for d in devices})
    dev = devices[500]
    msg = ActivationMessage(
        "ecg-novelty", 1, dev.device_id, "ECG-1", 7, 100.0, 1.79e9, 250.0, 250, 62, 128,
        np.arange(0, 128, 4), np.linspace(-1, 1, 32),
    )  # fmt: skip
    raw = encode_activation(msg)
    signed = dev.sign(raw)
    key = dev.device_id.encode()
    batch_keys, batch_values = [key] * 1000, [signed] * 1000

    def refuse() -> None:
        with contextlib.suppress(AuthError):
            store.verify(key, raw)

    ed = Ed25519PrivateKey.generate()
    sig, pub = ed.sign(signed), ed.public_key()
    alert_signer = AlertSigner(Ed25519PrivateKey.generate())
    alert = b'{"schema":"dropstream.alert","version":1}' + b" " * 400
    rows = [
        ("device: DeviceKey.sign", lambda: dev.sign(raw), 20_000, 1),
        ("service: DeviceKeys.verify (genuine)", lambda: store.verify(key, signed), 20_000, 1),
        ("service: DeviceKeys.verify (forged, refused)", refuse, 20_000, 1),
        (
            "service: DeviceKeys.check_batch, per message",
            lambda: store.check_batch(batch_keys, batch_values),
            20,
            1000,
        ),
        ("comparison: Ed25519 verify of the same bytes", lambda: pub.verify(sig, signed), 2000, 1),
        (
            "service: AlertSigner.headers (one alert)",
            lambda: alert_signer.headers(key, alert),
            2000,
            1,
        ),
    ]
    print(f"message {len(signed)} bytes; {len(store)} devices in the store")
    for name, fn, n, per in rows:
        print(f"{name:<48} {_per_call_us(fn, n) / per:8.1f} us")


if __name__ == "__main__":
    main()
