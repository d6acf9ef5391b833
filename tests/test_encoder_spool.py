"""The on-disk spool: order, durability across reopen, locking, and the full policies."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from dropstream.local_encoder.spool import Spool, SpoolError, SpoolFullError, SpoolLockedError


def test_messages_come_back_in_order_and_survive_a_reopen(tmp_path):
    with Spool(tmp_path) as spool:
        for i in range(10):
            assert spool.put(b"dev", f"msg-{i}".encode(), "dev/s", i + 1)
        assert spool.depth == 10 and spool.size_bytes == sum(3 + len(f"msg-{i}") for i in range(10))
        items = spool.peek(4)
        assert [it.value for it in items] == [f"msg-{i}".encode() for i in range(4)]
        assert [it.value for it in spool.peek(3, after=items[-1].id)] == [
            b"msg-4",
            b"msg-5",
            b"msg-6",
        ]
        spool.remove([items[0].id, items[1].id])
        assert spool.depth == 8
    with Spool(tmp_path) as again:  # a restarted agent
        assert again.depth == 8
        assert [it.value for it in again.peek(100)] == [f"msg-{i}".encode() for i in range(2, 10)]
        assert again.next_sequence("dev/s") == 10
        assert again.next_sequence("other") == 0
        again.put(b"dev", b"msg-10", "dev/s", 11)
        assert again.peek(100)[-1].value == b"msg-10"  # ids keep increasing after a reopen


def test_two_agents_cannot_share_a_spool(tmp_path):
    with Spool(tmp_path), pytest.raises(SpoolLockedError, match="another agent"):
        Spool(tmp_path)
    Spool(tmp_path).close()  # released on close


def test_drop_oldest_warns_and_keeps_the_newest(tmp_path, caplog):
    with Spool(tmp_path, max_bytes=100, full_policy="drop-oldest") as spool:
        with caplog.at_level(logging.WARNING):
            for i in range(10):
                assert spool.put(b"k", bytes([i]) * 19, "s", i + 1)  # 20 bytes each
        assert spool.depth == 5 and spool.dropped == 5 and spool.size_bytes == 100
        assert [it.value[0] for it in spool.peek(10)] == [5, 6, 7, 8, 9]
        assert "dropped the 1 oldest" in caplog.text
        assert spool.next_sequence("s") == 10


def test_drop_newest_refuses_and_counts(tmp_path, caplog):
    with Spool(tmp_path, max_bytes=60, full_policy="drop-newest") as spool:
        with caplog.at_level(logging.WARNING):
            results = [spool.put(b"k", bytes([i]) * 19, "s", i + 1) for i in range(5)]
        assert results == [True, True, True, False, False]
        assert spool.dropped == 2 and "dropped the newest" in caplog.text
        assert [it.value[0] for it in spool.peek(10)] == [0, 1, 2]
        assert spool.next_sequence("s") == 5  # the gap stays visible to the server


def test_block_waits_for_room_then_times_out(tmp_path):
    with Spool(tmp_path, max_bytes=40, full_policy="block", block_timeout=0.3) as spool:
        spool.put(b"k", b"a" * 19)
        spool.put(b"k", b"b" * 19)
        first = spool.peek(1)[0].id
        threading.Timer(0.1, spool.remove, args=([first],)).start()
        t0 = time.monotonic()
        assert spool.put(b"k", b"c" * 19)  # waits until the sender removed one
        assert time.monotonic() - t0 >= 0.05
        assert [it.value[:1] for it in spool.peek(10)] == [b"b", b"c"]
        with pytest.raises(SpoolFullError, match="full"):
            spool.put(b"k", b"d" * 19, "s", 7)
        assert spool.depth == 2  # nothing already accepted was lost
        assert spool.next_sequence("s") == 0  # nor was the refused window's number spent


def test_bad_settings_and_files_give_typed_errors(tmp_path):
    with pytest.raises(SpoolError, match="policy"):
        Spool(tmp_path / "a", full_policy="whatever")
    with (
        Spool(tmp_path / "b", max_bytes=10) as spool,
        pytest.raises(SpoolFullError, match="exceeds"),
    ):
        spool.put(b"k", b"x" * 20)
    corrupt = tmp_path / "c"
    corrupt.mkdir()
    (corrupt / "spool.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError, match="move it"):
        Spool(corrupt)
    spool = Spool(tmp_path / "d")
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.put(b"k", b"v")


class _Unbindable:
    """A 19-byte "value" SQLite refuses to bind: the INSERT fails after the drop-oldest DELETE."""

    def __len__(self) -> int:
        return 19


def test_drop_oldest_and_insert_are_one_transaction(tmp_path):
    """A failed insert must not leave the oldest messages deleted (they were committed)."""
    with Spool(tmp_path, max_bytes=100, full_policy="drop-oldest") as spool:
        for i in range(5):
            spool.put(b"k", bytes([i]) * 19, "s", i + 1, 1000.0 + i)
        before = [it.value for it in spool.peek(10)]
        with pytest.raises(SpoolError, match="writing to spool"):
            spool.put(b"k", _Unbindable(), "s", 6, 1005.0)  # drops one, then fails
        assert [it.value for it in spool.peek(10)] == before  # the drop was rolled back
        assert (spool.depth, spool.size_bytes, spool.dropped) == (5, 100, 0)
        assert spool.next_sequence("s") == 5 and spool.resume_wall_time("s") == 1004.0
    with Spool(tmp_path) as again:  # and on disk
        assert [it.value for it in again.peek(10)] == before


def test_resume_point_is_stored_with_the_message(tmp_path):
    with Spool(tmp_path) as spool:
        assert spool.resume_wall_time("s") is None
        spool.put(b"k", b"v", "s", 1, 1_790_000_000.125)
        spool.put(b"k", b"v", "s", 2, 1_790_000_000.625)
    with Spool(tmp_path) as again:
        assert again.next_sequence("s") == 2
        assert again.resume_wall_time("s") == 1_790_000_000.625
