"""The SQLite engine in a process of its own: :class:`ProcessLink`, the default of
:class:`~actors.storage.SQLiteConversationStorage`.

Why a process: Python's ``sqlite3`` gives the GIL up around every call into SQLite and
must take it back. On a thread of a busy trio process each take-back waits for the loop to
reach CPython's switch interval, so the database work crawls and the loop is preempted in
the middle of its steps. A process has its own GIL: the loop only pickles requests, writes
them to a socket and wakes the callers when the answers arrive (one message per group).

The worker's stdin and stdout are one end of a Unix socket pair, not pipes: a pipe's
reader and writer share one lock, and the loop's write waited (2.6 ms measured) while the
worker read a large chunk from the same pipe.

The worker is ``sys.executable`` running :mod:`actors.storage._sqlite_child`. It
finishes every request it was handed and exits when its stdin closes: when the storage
closes, or when this process dies (even by SIGKILL), so it never outlives its owner. If
it dies first, every waiting call and every later one fails with one
:class:`StorageUnavailableError` naming how it died.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import pickle
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import outcome
import structlog
import trio

from ._background import Background
from ._errors import StorageUnavailableError
from ._fold import OFF_LOOP_BYTES
from ._sqlite_wire import HEADER, encode, length_of, to_wire
from ._worker import WorkerClosedError

__all__ = ["ProcessLink"]

log = structlog.get_logger("trouper.actors.storage")

#: Imports the worker's module without running the packages' ``__init__`` (which would
#: import the whole library: trio, httpx, ...): the worker starts in tens of milliseconds.
_BOOT = (
    "import json, sys, types\n"
    "sys.path[:0] = [p for p in json.loads(sys.argv[3]) if p and p not in sys.path]\n"
    "for name, path in (('actors', sys.argv[1]), ('actors.storage', sys.argv[2])):\n"
    "    module = types.ModuleType(name)\n"
    "    module.__path__ = [path]\n"
    "    sys.modules[name] = module\n"
    "from actors.storage._sqlite_child import main\n"
    "main()\n"
)

_STORAGE_DIR = Path(__file__).resolve().parent

#: Requests per message at most (the worker answers in slices of the same size): a step
#: of the loop pickles or wakes at most that many.
_SLICE = 256

#: Bytes of stderr kept to explain a worker's death.
_TAIL = 4096


def _cannot_abort(_: object) -> trio.lowlevel.Abort:
    """A request handed over runs to its end: its caller waits for it even when cancelled."""
    return trio.lowlevel.Abort.FAILED


def _decode(payload: bytes | bytearray) -> list[Any]:
    entries: list[Any] = pickle.loads(payload)
    return entries


class ProcessLink:
    """The engine in a worker process, reached through a socket pair (its stdin and
    stdout).

    Args:
        config: The engine's settings (``SQLiteEngine``'s arguments, ``note`` aside).
        name: How messages name the storage.
        grace: How long :meth:`stop` waits for the worker to finish before killing it.
    """

    def __init__(self, config: dict[str, Any], name: str, grace: float) -> None:
        self._config = config
        self._name = name
        self._grace = grace
        self._process: trio.Process | None = None
        self._ids = itertools.count()
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._outbox: list[tuple[int, str, Any]] = []
        self._heavy = False
        self._writer = trio.lowlevel.ParkingLot()
        self._accepting = False
        self._failure: str | None = None
        self._done = trio.Event()
        self._stderr = bytearray()
        self._stream: trio.SocketStream | None = None

    @property
    def running(self) -> bool:
        """Whether requests are accepted."""
        return self._accepting

    @property
    def failure(self) -> str | None:
        """Why the worker stopped on its own, or ``None``."""
        return self._failure

    async def start(self, background: Background) -> None:
        """Start the worker (its reader, writer and stderr tasks in ``background``) and
        open the database in it.

        Raises:
            StorageUnavailableError: The worker cannot start, or the database cannot be
                opened.
        """
        if self._process is not None:
            raise RuntimeError(f"{self._name}'s worker was started already")
        # The parent's import path goes along: the worker imports attrs, orjson and
        # outcome from wherever this process found them.
        path = json.dumps([p for p in sys.path if isinstance(p, str)])
        argv = [sys.executable, "-c", _BOOT, str(_STORAGE_DIR.parent), str(_STORAGE_DIR), path]
        ours, theirs = socket.socketpair()
        try:
            self._process = await trio.lowlevel.open_process(
                argv, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE
            )
        except OSError as exc:
            ours.close()
            theirs.close()
            self._done.set()
            raise StorageUnavailableError(
                f"cannot start the SQLite worker process of {self._name} with "
                f"{sys.executable!r} ({exc}); pass worker='thread' to do the database work "
                "in this process instead"
            ) from exc
        theirs.close()
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        self._accepting = True
        background.start_soon(self._read, name=f"{self._name}: answers")
        background.start_soon(self._write, name=f"{self._name}: requests")
        background.start_soon(self._read_stderr, name=f"{self._name}: worker stderr")
        try:
            await self.call("open", self._config)
        except BaseException:
            await self.stop()
            raise

    async def call(self, op: str, arg: Any, *, heavy: bool = False) -> Any:
        """Hand one request to the worker and wait for its answer (see
        :class:`EngineLink`). ``heavy``: the request is big, pickle it off the loop."""
        if not self._accepting:
            raise WorkerClosedError(self._failure or f"{self._name}'s worker is not running")
        request = to_wire(op, arg)
        rid = next(self._ids)
        self._waiting[rid] = trio.lowlevel.current_task()
        self._outbox.append((rid, op, request))
        self._heavy = self._heavy or heavy
        self._writer.unpark()
        return await trio.lowlevel.wait_task_rescheduled(_cannot_abort)

    async def stop(self) -> None:
        """Send what is queued, let the worker answer it and exit; kill it if it takes
        longer than the grace period. Idempotent."""
        process = self._process
        if process is None:
            return
        self._accepting = False
        self._writer.unpark()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._grace):
                await self._done.wait()
            if not self._done.is_set():
                log.warning(
                    "the SQLite worker did not finish in time: killed",
                    storage=self._name,
                    grace=self._grace,
                )
                process.kill()
                await self._done.wait()
            await process.wait()
            if self._stream is not None:
                await trio.aclose_forcefully(self._stream)

    # ----------------------------------------------------------------- the socket

    async def _write(self) -> None:
        assert self._process is not None
        stdin = self._stream
        assert stdin is not None
        try:
            while True:
                if not self._outbox:
                    if not self._accepting:
                        break
                    await self._writer.park()
                    continue
                batch = self._outbox[:_SLICE]
                del self._outbox[:_SLICE]
                heavy = self._heavy
                if not self._outbox:
                    self._heavy = False
                if heavy:
                    message = await trio.to_thread.run_sync(encode, batch)
                else:
                    message = encode(batch)
                await stdin.send_all(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the worker is gone: the reader reports it
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stdin.send_eof()

    async def _read(self) -> None:
        assert self._process is not None
        stdout = self._stream
        assert stdout is not None
        buffer = bytearray()
        try:
            while chunk := await stdout.receive_some(1 << 20):
                buffer += chunk
                while len(buffer) >= HEADER:
                    size = length_of(buffer)
                    if len(buffer) < HEADER + size:
                        break
                    payload = bytes(buffer[HEADER : HEADER + size])
                    del buffer[: HEADER + size]
                    if size > OFF_LOOP_BYTES:
                        entries = await trio.to_thread.run_sync(_decode, payload)
                    else:
                        entries = _decode(payload)
                    self._deliver(entries)
                    if len(buffer) >= HEADER:
                        await trio.lowlevel.checkpoint()  # one message per step
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the worker died with requests unread (a reset, not an end): as an end
        finally:
            with trio.CancelScope(shield=True):
                await self._ended()

    def _deliver(self, entries: list[Any]) -> None:
        for entry in entries:
            if entry[0] == "r":
                task = self._waiting.pop(entry[1], None)
                if task is not None:
                    result = outcome.Value(entry[3]) if entry[2] else outcome.Error(entry[3])
                    trio.lowlevel.reschedule(task, result)
            else:
                _, level, event, fields = entry
                getattr(log, level, log.warning)(event, storage=self._name, **fields)

    async def _ended(self) -> None:
        """The answers' socket closed: the worker exited (or this task was cancelled). Every
        caller still waiting gets an error; later calls are refused."""
        assert self._process is not None
        stopping = not self._accepting
        self._accepting = False
        self._writer.unpark()
        if self._waiting or not stopping:
            with trio.move_on_after(1.0):
                await self._process.wait()
            self._failure = self._death()
            error = StorageUnavailableError(self._failure)
            waiting, self._waiting = self._waiting, {}
            for task in waiting.values():
                trio.lowlevel.reschedule(task, outcome.Error(error))
            log.error("the SQLite worker process died", storage=self._name, reason=self._failure)
        self._done.set()

    def _death(self) -> str:
        assert self._process is not None
        code = self._process.returncode
        if code is None:
            how = "its answers stopped"
        elif code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit status {code}"
        lines = bytes(self._stderr).decode("utf-8", "replace").strip().splitlines()
        said = f": {lines[-1]}" if lines else ""
        return (
            f"the SQLite worker process of {self._name} ended ({how}){said}; open the storage again"
        )

    async def _read_stderr(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        stderr = self._process.stderr
        while chunk := await stderr.receive_some(_TAIL):
            self._stderr += chunk
            del self._stderr[:-_TAIL]
            text = chunk.decode("utf-8", "replace").strip()
            if text:
                log.warning(
                    "the SQLite worker process wrote to stderr", storage=self._name, text=text
                )
