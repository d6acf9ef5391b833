"""A bounded, ordered, on-disk spool of encoded messages that survives restarts.

Every message the agent produces is written here first (SQLite in WAL mode with
``synchronous=FULL``, so a committed message is on disk - fsync - before :meth:`Spool.put`
returns) and removed only after the broker acknowledged it. The spool also stores each
stream's resume point (next sequence number, and the wall-clock time its next window is due) in
the same transaction, so a restarted agent continues the numbering where it stopped, every
dropped window shows up as a sequence gap, and the time the agent was down is known.

When the spool would exceed ``max_bytes`` the ``full_policy`` decides, explicitly:

``"drop-oldest"`` (default)
    delete the oldest messages to make room and warn (the server sees the sequence gap);
``"drop-newest"``
    refuse the new message and warn (it is counted as dropped);
``"block"``
    wait up to ``block_timeout`` seconds for the sender to make room, then raise
    :class:`SpoolFullError` (the caller's stream stalls meanwhile; use with care).

The spool directory is locked (``flock``) so that two agents never share it.
The spool holds only encoded activation messages, never raw samples.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from dropstream.errors import DropstreamError

log = logging.getLogger(__name__)

FULL_POLICIES = ("drop-oldest", "drop-newest", "block")
SPOOL_FILE = "spool.sqlite3"
LOCK_FILE = "spool.lock"


class SpoolError(DropstreamError):
    """The spool cannot be opened, read or written."""


class SpoolLockedError(SpoolError):
    """Another agent holds the spool directory."""


class SpoolFullError(SpoolError):
    """The spool is full and the ``block`` policy timed out waiting for room."""


@dataclass(frozen=True)
class SpoolItem:
    """One spooled message.

    Attributes
    ----------
    id : int
        Position in the spool (increasing in the order messages were put).
    key, value : bytes
        Kafka key and value.
    created : float
        Wall-clock time (Unix seconds) at which it was spooled.
    """

    id: int
    key: bytes
    value: bytes
    created: float


class Spool:
    """Bounded on-disk FIFO of Kafka messages; thread-safe.

    Parameters
    ----------
    directory : path-like
        Folder holding the spool (created if missing).
    max_bytes : int
        Upper bound of the stored message bytes (keys + values).
    full_policy : {"drop-oldest", "drop-newest", "block"}
        What happens when a message does not fit (see the module docstring).
    block_timeout : float
        Seconds ``put`` waits under the ``block`` policy before raising :class:`SpoolFullError`.

    Raises
    ------
    SpoolLockedError
        If another process uses the directory.
    SpoolError
        If the database cannot be opened (e.g. corrupt: move the file away).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 256 * 1024 * 1024,
        full_policy: str = "drop-oldest",
        block_timeout: float = 60.0,
    ) -> None:
        if full_policy not in FULL_POLICIES:
            raise SpoolError(f"full policy {full_policy!r} unknown; choose one of {FULL_POLICIES}")
        if max_bytes < 1:
            raise SpoolError(f"spool size must be positive, got {max_bytes} bytes")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)
        self.full_policy = full_policy
        self.block_timeout = float(block_timeout)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise SpoolLockedError(
                f"spool {self.directory} is in use by another agent; stop it or give this one "
                "its own --spool-dir"
            ) from exc
        self.path = self.directory / SPOOL_FILE
        self._cond = threading.Condition()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "key BLOB NOT NULL, value BLOB NOT NULL, size INTEGER NOT NULL, "
                "created REAL NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)"
            )
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages"
            ).fetchone()
        except sqlite3.Error as exc:
            self._release_lock()
            raise SpoolError(
                f"spool database {self.path} cannot be opened ({exc}); if it is corrupt, move it "
                "away (its unsent windows are then lost) and start again"
            ) from exc
        self._count, self._bytes = int(row[0]), int(row[1])
        #: Messages dropped by the full policy since this spool was opened.
        self.dropped = 0
        self._closed = False

    # -- state -----------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Messages waiting in the spool."""
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes of the messages waiting in the spool."""
        return self._bytes

    def next_sequence(self, stream_key: str) -> int:
        """The next sequence number stored for ``stream_key`` (0 if none)."""
        value = self._meta("seq:" + stream_key)
        return 0 if value is None else int(value)

    def resume_wall_time(self, stream_key: str) -> float | None:
        """Wall-clock time (Unix seconds) at which the stream's next window was due when the
        last window was spooled (``None`` if none was): the start of any unencoded signal."""
        value = self._meta("wall:" + stream_key)
        return None if value is None else float(value)

    def _meta(self, name: str) -> float | int | None:
        with self._cond:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else row[0]

    # -- writing ---------------------------------------------------------------------------

    def put(
        self,
        key: bytes,
        value: bytes,
        stream_key: str | None = None,
        next_sequence: int | None = None,
        next_wall_time: float | None = None,
    ) -> bool:
        """Append a message durably; returns False when the full policy dropped it.

        One transaction: the oldest messages the ``drop-oldest`` policy deletes, the new
        message and the stream's resume point are committed together or not at all. When this
        raises, nothing was written (the caller must not count the window's sequence number
        as spent).

        Parameters
        ----------
        key, value : bytes
            Kafka key and value.
        stream_key : str, optional
            The stream whose resume point is stored with the message.
        next_sequence : int, optional
            The sequence number the stream continues with.
        next_wall_time : float, optional
            Wall-clock time (Unix seconds) at which the stream's next window is due.

        Raises
        ------
        SpoolFullError
            Under the ``block`` policy when no room appeared within ``block_timeout`` seconds,
            or under any policy for a message larger than the whole spool.
        SpoolError
            If the database write failed (nothing was written).
        """
        size = len(key) + len(value)
        if size > self.max_bytes:
            raise SpoolFullError(
                f"a message of {size} bytes exceeds the whole spool ({self.max_bytes} bytes); "
                "raise --spool-max-mb"
            )
        with self._cond:
            self._check_open()
            full = self._bytes + size > self.max_bytes
            if full and self.full_policy == "block":
                ok = self._cond.wait_for(
                    lambda: self._closed or self._bytes + size <= self.max_bytes,
                    self.block_timeout,
                )
                self._check_open()
                if not ok:
                    raise SpoolFullError(
                        f"spool {self.directory} full ({self._bytes} bytes) for "
                        f"{self.block_timeout:g} s: is the broker reachable? Raise "
                        "--spool-max-mb or use --full-policy drop-oldest"
                    )
                full = False
            drop_newest = full and self.full_policy == "drop-newest"
            dropped_n = dropped_bytes = 0
            try:
                self._db.execute("BEGIN IMMEDIATE")
                if full and not drop_newest:
                    dropped_n, dropped_bytes = self._drop_oldest(size)
                if not drop_newest:
                    self._db.execute(
                        "INSERT INTO messages (key, value, size, created) VALUES (?, ?, ?, ?)",
                        (key, value, size, time.time()),
                    )
                if stream_key is not None:
                    self._store_meta("seq:" + stream_key, next_sequence)
                    self._store_meta("wall:" + stream_key, next_wall_time)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"writing to spool {self.path} failed: {exc}") from exc
            if drop_newest:
                self.dropped += 1
                log.warning(
                    "spool full (%d bytes): dropped the newest window (%d dropped so far)",
                    self._bytes,
                    self.dropped,
                )
                return False
            if dropped_n:
                self._count -= dropped_n
                self._bytes -= dropped_bytes
                self.dropped += dropped_n
                log.warning(
                    "spool full (max %d bytes): dropped the %d oldest window(s), %d dropped so "
                    "far; the server will see the sequence gap. Is the broker reachable?",
                    self.max_bytes,
                    dropped_n,
                    self.dropped,
                )
            self._count += 1
            self._bytes += size
            self._cond.notify_all()
        return True

    def _store_meta(self, name: str, value: float | None) -> None:
        """Record a resume value inside the open transaction (raises ``sqlite3.Error``)."""
        if value is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value)
            )

    def _drop_oldest(self, size: int) -> tuple[int, int]:
        """Delete the oldest messages until ``size`` more bytes fit, inside the open
        transaction; returns the number and bytes deleted (counters are the caller's)."""
        rows = self._db.execute("SELECT id, size FROM messages ORDER BY id")
        freed, last, n = 0, None, 0
        for rid, rsize in rows:
            if self._bytes - freed + size <= self.max_bytes:
                break
            freed += rsize
            last = rid
            n += 1
        if last is not None:
            self._db.execute("DELETE FROM messages WHERE id <= ?", (last,))
        return n, freed

    # -- reading ---------------------------------------------------------------------------

    def peek(self, limit: int = 100, after: int = 0) -> list[SpoolItem]:
        """Up to ``limit`` oldest messages with ``id > after``, in order; removes nothing."""
        with self._cond:
            self._check_open()
            try:
                rows = self._db.execute(
                    "SELECT id, key, value, created FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                    (int(after), int(limit)),
                ).fetchall()
            except sqlite3.Error as exc:
                raise SpoolError(f"reading spool {self.path} failed: {exc}") from exc
        return [SpoolItem(int(r[0]), bytes(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def remove(self, ids: list[int]) -> None:
        """Delete acknowledged messages by id (ids already gone are ignored)."""
        if not ids:
            return
        with self._cond:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                marks = ",".join("?" * len(ids))
                row = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE id IN ({marks})",
                    ids,
                ).fetchone()
                self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise SpoolError(f"writing to spool {self.path} failed: {exc}") from exc
            self._count -= int(row[0])
            self._bytes -= int(row[1])
            self._cond.notify_all()

    # -- lifecycle -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolError(f"spool {self.directory} is closed")

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _release_lock(self) -> None:
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(self._lock_fd)

    def close(self) -> None:
        """Close the database and release the directory lock (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._db.close()
            self._release_lock()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
