"""Benchmark: windows/s of one serve process (CPU here), against kafka-python's own read rate.

Publishes ``--windows`` activation messages from ``--devices`` simulated devices (the demo
recording encoded with the shipped ECG bundle, or random messages of a chosen width/keep) to a
fresh topic on the embedded broker, then measures, each on the full backlog:

1. **kafka-python alone**: a consumer with the service's settings that only reads the messages
   (``poll`` + touch ``value``) - the client's own cost, the ceiling for the service (its rate,
   and its CPU per message: ``serve_to_read_cpu`` = that CPU / serve's CPU per window, a ratio
   less sensitive than the rates to what other jobs on the machine do meanwhile);
2. **serve**: one :class:`~dropstream.inference.service.InferenceService` (consumer group, batch
   decoding, per-stream duplicate/gap checks, scoring, event detectors, offset commits every
   ``--commit-interval-ms``, by default the service's) from its first scored window until every
   window is scored. There is no device key store here: the messages are not verified (see
   ``benchmarks/decode_speed.py`` for verification's cost per window).

Usage::

    python benchmarks/serve_throughput.py --windows 100000 --devices 100
    python benchmarks/serve_throughput.py --width 1024 --keep 512 --windows 50000  # ~2 KB msgs
    python benchmarks/serve_throughput.py --windows 50000 --profile serve.prof  # cProfile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np


def _messages(args: argparse.Namespace, bundle_path: Path) -> list[tuple[bytes, bytes]]:
    from dropstream.inference.demo import DEMO_RECORDING, read_recording
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.simulated import encode_recording

    bundle = load_device_bundle(bundle_path)
    samples, _, _ = read_recording(DEMO_RECORDING)
    if args.width is None:
        per_device = args.windows // args.devices
        base = encode_recording(bundle, samples, "bench", seed=0)
        loops = -(-per_device // len(base))
        samples = np.tile(samples, (1, loops))
    out: list[tuple[bytes, bytes]] = []
    for d in range(args.devices):
        dev = f"bench-{d:04d}"
        msgs = encode_recording(bundle, samples, dev, seed=d)[: args.windows // args.devices]
        out.extend((dev.encode(), raw) for _, raw in msgs)
    return out


def _random_bundle(width: int, keep: int, path: Path) -> Path:
    """A novelty bundle with random weights of the given width/keep (cost as a trained one)."""
    from dropstream.inference.training import TrainConfig, train_novelty

    rng = np.random.default_rng(0)
    t = max(keep * 2, 64)
    X = rng.standard_normal((40, 1, t)).astype(np.float32)
    config = TrainConfig(
        width=width,
        keep=keep,
        pool=1,
        epochs=1,
        progress=False,
        device="cpu",
        min_calibration_windows=1,  # random weights for timing: the threshold is never used
    )
    model = train_novelty(X, config, sfreq=float(t), hop_samples=t, prefiltered=True)
    model.save(path, model_id="bench", model_version=1)
    return path


def _random_messages(args: argparse.Namespace, bundle_path: Path) -> list[tuple[bytes, bytes]]:
    from dropstream.broker.wire import ActivationMessage, encode_activation
    from dropstream.local_encoder.bundle import load_device_bundle
    from dropstream.local_encoder.first_layer import draw_kept_units

    b = load_device_bundle(bundle_path)
    rng = np.random.default_rng(1)
    out = []
    per_device = args.windows // args.devices
    for d in range(args.devices):
        dev = f"bench-{d:04d}"
        for seq in range(per_device):
            idx = draw_kept_units(rng, b.layer.width, b.keep)
            msg = ActivationMessage(
                b.model_id, b.model_version, dev, "s", seq, 1000.0 + seq, time.time(), b.sfreq,
                b.window_samples, b.hop_samples, b.layer.width, idx,
                np.abs(rng.standard_normal(b.keep)).astype(np.float32) * 0.1,
            )  # fmt: skip
            out.append((dev.encode(), encode_activation(msg)))
    return out


def _profiled(run, path: str | None):
    """``run``, or ``run`` under cProfile writing its stats to ``path`` when it returns."""
    if not path:
        return run

    def wrapped() -> None:
        import cProfile

        prof = cProfile.Profile()
        try:
            prof.runcall(run)
        finally:
            prof.dump_stats(path)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--device", default="auto", help="torch device: auto, cpu or cuda")
    parser.add_argument("--torch-threads", type=int, default=1, help="0: torch's default")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument(
        "--commit-interval-ms", type=float, help="serve's (default: ServiceSettings')"
    )
    parser.add_argument("--width", type=int, help="random bundle of this width (default: demo)")
    parser.add_argument("--keep", type=int, help="kept units of the random bundle")
    parser.add_argument("--bootstrap", help="use this broker instead of an embedded one")
    parser.add_argument("--json", help="append the result as a JSON line to this file")
    parser.add_argument("--profile", help="run serve's thread under cProfile, stats to this file")
    args = parser.parse_args()

    import torch
    from kafka import KafkaConsumer

    from dropstream.broker.clients import make_producer
    from dropstream.broker.config import ClientConfig
    from dropstream.broker.embedded import EmbeddedBroker
    from dropstream.broker.topics import delete_topics, ensure_topics, topic_names
    from dropstream.inference.demo import DEMO_BUNDLE
    from dropstream.inference.service import InferenceService, ServiceSettings

    tmp = Path(tempfile.mkdtemp())
    if args.width:
        bundle_path = _random_bundle(args.width, args.keep or args.width // 4, tmp / "b.dsb")
        messages = _random_messages(args, bundle_path)
    else:
        bundle_path = DEMO_BUNDLE
        messages = _messages(args, bundle_path)
    n = len(messages)
    size = float(np.mean([len(v) for _, v in messages]))

    broker = None if args.bootstrap else EmbeddedBroker().start()
    tag = uuid.uuid4().hex[:8]
    config = ClientConfig(
        bootstrap=args.bootstrap or broker.bootstrap,  # type: ignore[union-attr]
        activations_topic=f"bench.{tag}.activations",
        alerts_topic=f"bench.{tag}.alerts",
        dead_letter_topic=f"bench.{tag}.dead",
        partitions=args.partitions,
        group_id=f"bench-{tag}",
        session_timeout_ms=6000,
    )
    try:
        ensure_topics(config)
        producer = make_producer(config, linger_ms=20)
        t = time.perf_counter()
        for key, value in messages:
            producer.send(config.activations_topic, key=key, value=value)
        producer.flush()
        producer.close()
        publish_s = time.perf_counter() - t

        # 1. kafka-python alone
        consumer = KafkaConsumer(**config.consumer_kwargs(f"raw-{tag}"), consumer_timeout_ms=5000)
        consumer.subscribe([config.activations_topic])
        got, t0, raw_cpu0 = 0, None, 0.0
        while got < n:
            for recs in consumer.poll(timeout_ms=500, max_records=2000).values():
                if t0 is None:
                    t0, raw_cpu0 = time.perf_counter(), time.process_time()
                for r in recs:
                    _ = r.value
                got += len(recs)
        raw_rate = n / (time.perf_counter() - t0)  # type: ignore[operator]
        raw_cpu = time.process_time() - raw_cpu0
        consumer.close()

        # 2. the service
        settings = ServiceSettings(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            device=args.device,
            log_interval_s=3600,
            torch_threads=args.torch_threads or None,
            **(
                {}
                if args.commit_interval_ms is None
                else {"commit_interval_ms": args.commit_interval_ms}
            ),
        )
        service = InferenceService(config, bundle_path, settings)
        thread = threading.Thread(target=_profiled(service.run, args.profile), daemon=True)
        thread.start()
        while service.metrics.windows == 0:
            time.sleep(0.001)
        t0 = time.perf_counter()
        first = service.metrics.windows
        cpu0 = time.process_time()
        while service.metrics.windows < n:
            time.sleep(0.005)
        serve_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        service.stop()
        thread.join(30)
        serve_rate = (n - first) / serve_s
        result = {
            "benchmark": "serve_throughput",
            "windows": n,
            "devices": args.devices,
            "partitions": args.partitions,
            "message_bytes": round(size, 1),
            "width": service.width,
            "keep": service.keep,
            "torch_device": str(service.torch_device),
            "torch_threads": torch.get_num_threads(),
            "max_batch": args.max_batch,
            "commit_interval_ms": settings.commit_interval_ms,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "publish_msgs_per_s": round(n / publish_s),
            "kafka_python_read_msgs_per_s": round(raw_rate),
            "serve_windows_per_s": round(serve_rate),
            "serve_cpu_s_per_window_us": round(1e6 * cpu_s / max(n - first, 1), 1),
            "kafka_python_cpu_s_per_msg_us": round(1e6 * raw_cpu / n, 1),
            "serve_to_read_rate": round(serve_rate / raw_rate, 3),
            "serve_to_read_cpu": round(raw_cpu / n / (cpu_s / max(n - first, 1)), 3),
            "alerts": service.metrics.alerts,
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "torch": torch.__version__,
        }
        print(json.dumps(result, indent=1))
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(result) + "\n")
    finally:
        try:
            delete_topics(config, topic_names(config))
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
