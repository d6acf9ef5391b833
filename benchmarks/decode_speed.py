"""Benchmark: the service's per-window cost of verifying and decoding real device windows.

Encodes the shipped demo recording as ``--devices`` devices do (signed, the stream block in full
every 16th window and by reference in the others), shuffles the windows as partitions
interleave them, then times, on the calling thread's CPU clock (best of ``--repeats``):
:meth:`~dropstream.broker.auth.DeviceKeys.check_batch` over all of them and
:meth:`~dropstream.inference.batching.BatchDecoder.decode` in batches of 1,024 (the service's
largest batch). Prints one JSON line, in microseconds per window.

Usage::

    python benchmarks/decode_speed.py --devices 20
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dropstream.broker.auth import DeviceKey, DeviceKeys
from dropstream.inference.batching import BatchDecoder
from dropstream.inference.demo import DEMO_BUNDLE, DEMO_RECORDING, read_recording
from dropstream.local_encoder.bundle import load_device_bundle
from dropstream.local_encoder.simulated import encode_recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bundle = load_device_bundle(DEMO_BUNDLE)
    samples, _, _ = read_recording(DEMO_RECORDING)
    secrets, records = {}, []
    for d in range(args.devices):
        key = DeviceKey.generate(f"bench-{d:04d}")
        secrets[key.device_id] = key.secret
        records += [
            (key.device_id.encode(), raw)
            for _, raw in encode_recording(bundle, samples, key.device_id, seed=d, key=key)
        ]
    order = np.random.default_rng(0).permutation(len(records))
    keys = [records[i][0] for i in order]
    values = [records[i][1] for i in order]
    store = DeviceKeys(secrets)
    decoder = BatchDecoder()
    batches = [values[i : i + 1024] for i in range(0, len(values), 1024)]
    assert not store.check_batch(keys, values)
    refused = sum(len(decoder.decode(b).rejected) for b in batches)

    def per_window_us(run) -> float:  # noqa: ANN001 - a callable without arguments
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.thread_time()
            run()
            best = min(best, time.thread_time() - t0)
        return round(1e6 * best / len(values), 2)

    print(
        json.dumps(
            {
                "benchmark": "decode_speed",
                "windows": len(values),
                "by_reference": sum(1 for v in values if v[5] & 0x40),
                # references whose full block comes later in the batch: resolved from anywhere
                # in the batch here; a per-message decoder refuses them on first sight
                "refused_first_time": refused,
                "check_batch_us": per_window_us(lambda: store.check_batch(keys, values)),
                "decode_us": per_window_us(lambda: [decoder.decode(b) for b in batches]),
                "load_avg_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
