"""``dropstream connect`` as a real process: SIGKILL mid-stream, restart, the spool drains.

Slow (~25 s): three agent processes over one 40 s replay at 4x speed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dropstream.broker.auth import DeviceKey, DeviceKeys
from dropstream.broker.embedded import free_port
from dropstream.local_encoder.spool import Spool
from tests.encoder_support import (
    consume_all,
    eeg_track,
    load_eeg,
    make_bundle,
    save_bundle,
    start_replay,
    unique_source,
)


def agent_process(
    bundle: Path, src: str, bootstrap: str, topic: str, spool: Path, log: Path, key: Path
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "dropstream",
        "connect",
        "--bundle",
        str(bundle),
        "--source-id",
        src,
        "--device-id",
        "device-K",
        "--device-key",
        str(key),
        "--bootstrap",
        bootstrap,
        "--activations-topic",
        topic,
        "--spool-dir",
        str(spool),
        "--spool-max-mb",
        "8",
        "--status-interval",
        "0.2",
        "--flush-timeout",
        "10",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def spooled(spool_dir: Path) -> int:
    """Rows in the spool, read while the agent is not running."""
    with Spool(spool_dir) as spool:
        return spool.depth


def wait_for_text(log: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return True
        time.sleep(0.05)
    return False


def windows_in_log(log: Path) -> int:
    """Windows made so far according to the last status line."""
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("windows sent")]
    return int(lines[-1].split()[4]) if lines else 0


@pytest.mark.slow
def test_agent_killed_and_restarted_loses_no_window(data_dir, kafka_config, tmp_path):
    data, sfreq, names = load_eeg(data_dir)
    data = data[: int(40 * sfreq)]
    bundle = save_bundle(tmp_path / "eeg.dsb", make_bundle(data, sfreq, names))
    src = unique_source()
    spool_dir = tmp_path / "spool"
    topic = kafka_config.activations_topic
    device_key = DeviceKey.generate("device-K")
    key = device_key.save(tmp_path / "device-K.key")
    pub = start_replay(eeg_track(data, sfreq, names, src), speed=2.0, wait_for_consumers=20.0)
    procs: list[subprocess.Popen] = []
    try:
        # 1. connected to the broker, killed without warning mid-stream
        log1 = tmp_path / "agent1.log"
        procs.append(
            agent_process(bundle, src, kafka_config.bootstrap, topic, spool_dir, log1, key)
        )
        assert wait_for_text(log1, "connected", 20.0), log1.read_text()
        deadline = time.monotonic() + 10.0
        while windows_in_log(log1) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        made_first = windows_in_log(log1)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(5)
        # 2. the broker unreachable: windows pile up in the spool; killed again
        log2 = tmp_path / "agent2.log"
        dead = f"127.0.0.1:{free_port()}"
        procs.append(agent_process(bundle, src, dead, topic, spool_dir, log2, key))
        assert wait_for_text(log2, "connected", 20.0), log2.read_text()
        deadline = time.monotonic() + 10.0
        while windows_in_log(log2) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(5)
        waiting = spooled(spool_dir)
        assert waiting >= 6, log2.read_text()
        # 3. restarted with the broker back: the spool drains, the stream continues
        log3 = tmp_path / "agent3.log"
        procs.append(
            agent_process(bundle, src, kafka_config.bootstrap, topic, spool_dir, log3, key)
        )
        assert wait_for_text(log3, f"{waiting} window(s) from an earlier run", 20.0)
        assert pub.wait(40.0), "replay did not finish"
        time.sleep(1.0)
        procs[2].send_signal(signal.SIGTERM)  # clean shutdown: flush, then exit
        assert procs[2].wait(20) == 0, log3.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        pub.stop()
    text = log3.read_text()
    assert "stopped: 0 window(s) left in the spool" in text, text
    with Spool(spool_dir) as spool:
        assert spool.depth == 0
        n = spool.next_sequence("device-K\x1f" + src)
    records = consume_all(kafka_config, expected=n)
    got = [m.sequence for m, _, _ in records]
    # every window of the killed runs is there (how many runs 1-3 made depends on machine load)
    assert made_first > 0 and n >= made_first + waiting
    # signed by the device key file, across three processes
    keys = DeviceKeys({"device-K": device_key.secret})
    assert keys.check_batch([k for _, k, _ in records], [v for _, _, v in records]) == []
    assert sorted(set(got)) == list(range(n)), (n, got)  # no window lost
    first_seen = list(dict.fromkeys(got))
    assert first_seen == sorted(first_seen)  # in order
    # duplicates only when a kill fell between the broker's ack and the spool deletion
    assert len(got) - n <= 2, got


def test_bad_invocations_fail_with_a_clear_message(tmp_path, capsys):
    from dropstream.cli import main

    key = DeviceKey.generate("d").save(tmp_path / "d.key")
    base = ["connect", "--device-id", "d", "--spool-dir", str(tmp_path / "spool")]
    base += ["--device-key", str(key)]
    assert main([*base, "--bundle", str(tmp_path / "none.dsb"), "--source-id", "x"]) == 1
    assert "none.dsb does not exist" in capsys.readouterr().err
    assert main([*base, "--bundle", str(tmp_path / "none.dsb")]) == 1
    assert "--source-id, --stream-name or --stream-type" in capsys.readouterr().err
    (tmp_path / "junk.dsb").write_bytes(b"not a bundle")
    assert main([*base, "--bundle", str(tmp_path / "junk.dsb"), "--source-id", "x"]) == 1
    assert "not a dropstream bundle" in capsys.readouterr().err


def test_a_missing_stream_is_reported(data_dir, tmp_path, capsys):
    from dropstream.cli import main

    data, sfreq, names = load_eeg(data_dir)
    bundle = save_bundle(tmp_path / "eeg.dsb", make_bundle(data[:3200], sfreq, names))
    key = DeviceKey.generate("d").save(tmp_path / "d.key")
    argv = ["connect", "--bundle", str(bundle), "--device-id", "d", "--source-id", "nope-x9"]
    argv += ["--spool-dir", str(tmp_path / "spool"), "--resolve-timeout", "0.5"]
    argv += ["--device-key", str(key)]
    assert main(argv) == 1
    assert "nope-x9" in capsys.readouterr().err
