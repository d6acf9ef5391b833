"""Service metrics: bulk histogram observations equal one-by-one ones; the log line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from dropstream.inference.metrics import ServiceMetrics, observe_many


def samples(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line.startswith("h_") and "created" not in line]


def test_observe_many_matches_observe():
    values = np.random.default_rng(0).exponential(0.03, 500)
    values[:3] = [0.005, 0.01, 10.0]  # on bucket bounds and beyond the last one
    bulk, single = CollectorRegistry(), CollectorRegistry()
    buckets = (0.005, 0.01, 0.02, 0.05, 0.1, 1.0)
    h_bulk = Histogram("h", "h", buckets=buckets, registry=bulk)
    h_single = Histogram("h", "h", buckets=buckets, registry=single)
    observe_many(h_bulk, values)
    for v in values:
        h_single.observe(float(v))
    a, b = samples(bulk), samples(single)
    assert [x for x in a if "_sum" not in x] == [x for x in b if "_sum" not in x]
    sums = [float(x.split()[-1]) for x in a + b if x.startswith("h_sum")]
    assert sums[0] == pytest.approx(sums[1], rel=1e-12)


def test_log_line_reports_rate_batches_lag_and_counts(caplog):
    m = ServiceMetrics(interval_s=3600)
    m.batch(10, np.full(10, 0.02))
    m.batch(30, np.full(30, 0.04))
    m.set_lag(7)
    m.dead_letter("malformed")
    with caplog.at_level(logging.INFO, logger="dropstream.inference.service"):
        m.maybe_log(force=True)
    line = caplog.records[-1].getMessage()
    assert "batches 2 (mean 20.0, max 30)" in line
    assert "lag 7" in line and "windows 40" in line and "dead letters 1" in line


def test_the_metrics_endpoint_binds_localhost_unless_told_otherwise():
    import urllib.request

    from dropstream.broker.embedded import free_port
    from dropstream.inference.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    host, port = metrics.serve_http(free_port())
    assert host == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert b"dropstream_serve_tracked_streams" in resp.read()


def test_log_line_reports_each_stage_median(caplog):
    m = ServiceMetrics(interval_s=3600)
    m.fetched(np.array([0.010, 0.030, 0.020]))
    m.batch(3, np.array([0.040, 0.050, 0.060]), np.array([0.001, np.nan, 0.003]))
    m.alert("open", 0.090)
    with caplog.at_level(logging.INFO, logger="dropstream.inference.service"):
        m.maybe_log(force=True)
    line = caplog.records[-1].getMessage()
    assert line.endswith("sent 2.0, fetched 20.0, scored 50.0, alert 90.0")
    with caplog.at_level(logging.INFO, logger="dropstream.inference.service"):
        m.maybe_log(force=True)  # a new interval: nothing measured, no stage line
    assert "medians" not in caplog.records[-1].getMessage()
    assert "windows 3" in caplog.records[-1].getMessage()
