"""Raw samples never leave the device: search everything the agent sent for them.

Every byte the agent wrote to the broker (each record's key and value, read back from the
topic) and its spool file are searched for

* the float16 and float32 encodings of any 8 consecutive raw samples of the replayed EEG
  (per channel in time, and interleaved as LSL sends them), in microvolts and in volts, and of
  the filtered, normalised signal the first layer sees;
* scaled copies: any 16 consecutive activation values whose correlation with 16 consecutive
  samples of the raw or normalised signal exceeds 0.999 in absolute value (a copy scaled
  and shifted, even rounded to float16, correlates above 0.9999; activations of real EEG
  windows reach about 0.98 by chance over the ~10^8 pairs compared).

A negative control plants a raw window (exactly, and scaled) in a message and checks that both
searches find it, so the test can fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from dropstream.acquisition import LiveStream
from dropstream.broker.auth import DeviceKey
from dropstream.broker.wire import ActivationMessage, decode_activation, encode_activation
from dropstream.local_encoder.agent import EncoderAgent
from dropstream.local_encoder.preprocessing import filter_signal, normalise
from dropstream.local_encoder.spool import Spool
from tests.encoder_support import (
    PREPROCESSING,
    consume_all,
    eeg_track,
    load_eeg,
    make_bundle,
    start_replay,
    unique_source,
)
from tests.test_encoder_agent import expected_windows, wait_until

RUN_BYTES = 8  # consecutive samples searched for as bytes
RUN_CORR = 16  # consecutive values checked for correlation


def raw_views(data: np.ndarray, bundle) -> list[np.ndarray]:
    """Signals ``(C, n)`` an attacker might find: raw uV, raw V, filtered+normalised."""
    filtered = filter_signal(data.T, bundle.sfreq, PREPROCESSING)
    normed = normalise(filtered, bundle.norm_mean, bundle.norm_std)
    return [data.T, data.T * 1e-6, normed.astype(np.float64)]


def byte_patterns(views: list[np.ndarray]) -> set[bytes]:
    """Byte encodings of every run of RUN_BYTES consecutive samples."""
    out: set[bytes] = set()
    for v in views:
        series = [*v, v.T.reshape(-1)]  # per channel, and interleaved (sample-major) as LSL sends
        for s in series:
            for dt, size in (("<f2", 2), ("<f4", 4)):
                with np.errstate(over="ignore"):
                    b = s.astype(dt).tobytes()
                n = RUN_BYTES * size
                runs = (b[i : i + n] for i in range(0, len(b) - n + 1, size))
                # a constant run (e.g. float16 underflow to zeros) carries no signal
                out.update(r for r in runs if r != r[:size] * RUN_BYTES)
    return out


def byte_hits(blob: bytes, patterns: set[bytes]) -> int:
    hits = 0
    for n in (RUN_BYTES * 2, RUN_BYTES * 4):
        hits += sum(blob[i : i + n] in patterns for i in range(len(blob) - n + 1))
    return hits


def zruns(x: np.ndarray, L: int) -> np.ndarray:
    """z-normalised runs of length L of a 1-D series (constant runs dropped)."""
    r = np.lib.stride_tricks.sliding_window_view(np.asarray(x, np.float64), L)
    r = r - r.mean(axis=1, keepdims=True)
    sd = np.linalg.norm(r, axis=1)
    keep = sd > 1e-9 * max(1.0, float(np.abs(x).max()))
    return (r[keep] / sd[keep, None]).astype(np.float32)


def max_correlation(messages: list[ActivationMessage], views: list[np.ndarray]) -> float:
    """Largest |correlation| between RUN_CORR consecutive values of a message and of a signal."""
    cand = [zruns(m.values, RUN_CORR) for m in messages if m.values.size >= RUN_CORR]
    cand = np.concatenate([c for c in cand if c.size]) if cand else np.zeros((0, RUN_CORR))
    raw = np.concatenate([zruns(ch, RUN_CORR) for v in views[::2] for ch in v])
    best = 0.0
    for i in range(0, cand.shape[0], 512):
        best = max(best, float(np.abs(cand[i : i + 512] @ raw.T).max(initial=0.0)))
    return best


@pytest.mark.slow
def test_no_raw_window_nor_a_scaled_copy_leaves_the_device(data_dir, kafka_config, tmp_path):
    data, sfreq, names = load_eeg(data_dir)
    data = data[: int(20 * sfreq)]
    bundle = make_bundle(data, sfreq, names)
    src = unique_source()
    pub = start_replay(eeg_track(data, sfreq, names, src), speed=4.0)
    inlet = LiveStream.connect(source_id=src, timeout=10.0)
    spool = Spool(tmp_path / "spool")
    try:
        agent = EncoderAgent(
            bundle, inlet, kafka_config, spool, DeviceKey.generate("device-P")
        ).start()
        assert pub.wait(20.0)
        n = expected_windows(len(data))
        assert wait_until(lambda: agent.stats.windows_made == n, 5.0), agent.stats
        agent.stop()
    finally:
        inlet.close()
        pub.stop()
        spool.close()
    records = consume_all(kafka_config, expected=n)
    assert len(records) == n
    sent = b"".join(key + value for _, key, value in records)
    spool_file = (tmp_path / "spool" / "spool.sqlite3").read_bytes()
    views = raw_views(data, bundle)
    patterns = byte_patterns(views)
    assert byte_hits(sent, patterns) == 0
    assert byte_hits(spool_file, patterns) == 0
    corr = max_correlation([m for m, _, _ in records], views)
    print(f"largest |correlation| of {RUN_CORR} activation values with the signal: {corr:.3f}")
    assert corr < 0.999, corr

    # negative control: a message carrying a raw window (as is, and scaled) is caught
    m0 = records[0][0]
    run = data[1000:1064, 3]
    for values, dtype, caught_by_bytes in (
        (run.astype(np.float32), "float32", True),
        (0.25 * run + 3.0, "float16", False),
    ):
        leak = ActivationMessage(**{**m0.__dict__, "values": values.astype(np.float32)})
        blob = encode_activation(leak, dtype)
        assert (byte_hits(blob, patterns) > 0) == caught_by_bytes
        assert max_correlation([decode_activation(blob)], views) > 0.9999
