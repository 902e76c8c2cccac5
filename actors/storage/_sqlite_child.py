"""The SQLite worker process: reads requests on stdin, runs them on one
:class:`~actors.storage._sqlite_engine.SQLiteEngine`, writes the answers on stdout.

Started by :mod:`actors.storage._sqlite_process` with a bootstrap that imports this module
without the package's ``__init__`` modules (so it starts in tens of milliseconds, without
trio, httpx or structlog). The requests read together are planned as the thread's batcher
would run them: the requests of one batched operation (appends, loads, lease acquisitions
and renewals) form one group, run where the first of them stands; the others run alone,
in order. Answers go back after each group; compactions run when the requests read so far
are answered.

It ignores SIGINT (a Ctrl-C in a terminal reaches the whole process group: the storage
closes it in order) and ends when its stdin closes, after answering what it read: when
the storage closes, or when its process dies.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
from typing import Any

import outcome

from ._errors import StorageUnavailableError
from ._sqlite_engine import BATCHED, SQLiteEngine
from ._sqlite_wire import HEADER, answer, encode, from_wire, length_of

__all__ = ["SLICE", "main", "plan", "serve"]

_READ = 1 << 20

#: Answers per message at most: the storage wakes one message's callers per loop step.
SLICE = 256


class _Channel:
    """Length-prefixed messages over two file descriptors, blocking."""

    def __init__(self, fd_in: int, fd_out: int) -> None:
        self._in = fd_in
        self._out = fd_out
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        chunk = os.read(self._in, _READ)
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _take(self, into: list[Any]) -> None:
        buffer = self._buffer
        while len(buffer) >= HEADER:
            size = length_of(buffer)
            if len(buffer) < HEADER + size:
                return
            into.extend(pickle.loads(buffer[HEADER : HEADER + size]))
            del buffer[: HEADER + size]

    def receive(self) -> list[Any] | None:
        """Every request available: waits for one message at least, then takes what else
        has arrived; ``None`` once stdin is closed and nothing is left."""
        requests: list[Any] = []
        while not requests:
            self._take(requests)
            if requests:
                break
            if self._eof or not self._fill():
                return None
        while select.select([self._in], [], [], 0)[0] and self._fill():
            self._take(requests)
        return requests

    def send(self, entries: list[Any]) -> None:
        """Write one message (blocks while the socket's buffer is full)."""
        view = memoryview(encode(entries))
        while view:
            view = view[os.write(self._out, view) :]


def plan(requests: list[Any]) -> list[tuple[str, list[int], list[Any]]]:
    """The steps for ``requests`` (``(id, operation, argument as sent)``): ``(operation,
    ids, arguments)``, a batched operation's requests gathered where its first one
    stands."""
    steps: list[tuple[str, list[int], list[Any]]] = []
    groups: dict[str, tuple[str, list[int], list[Any]]] = {}
    for rid, op, wired in requests:
        arg = from_wire(op, wired)
        step = groups.get(op)
        if step is None:
            step = (op, [], [])
            steps.append(step)
            if op in BATCHED:
                groups[op] = step
        step[1].append(rid)
        step[2].append(arg)
    return steps


def _open(config: dict[str, Any], notes: list[Any]) -> SQLiteEngine:
    def note(level: str, event: str, fields: dict[str, Any]) -> None:
        notes.append(("n", level, event, fields))

    engine = SQLiteEngine(**config, note=note)
    engine.open()
    return engine


def _answer(
    engine: SQLiteEngine | None, op: str, args: list[Any], notes: list[Any]
) -> tuple[SQLiteEngine | None, list[outcome.Outcome[Any]]]:
    if op == "open":
        if engine is not None:
            return engine, [outcome.Error(StorageUnavailableError("opened twice")) for _ in args]
        opened = outcome.capture(_open, args[0], notes)
        engine = opened.value if isinstance(opened, outcome.Value) else None
        return engine, [outcome.Value(None) if engine else opened]
    if engine is None:
        error = StorageUnavailableError("the conversation database is not open")
        return None, [outcome.Error(error) for _ in args]
    if op in BATCHED:
        try:
            return engine, engine.run_group(op, args)
        except Exception as exc:  # a bug: every caller gets it rather than hanging
            return engine, [outcome.Error(exc) for _ in args]
    return engine, [outcome.capture(engine.run, op, arg) for arg in args]


def serve(fd_in: int, fd_out: int) -> None:
    """Answer requests from ``fd_in`` on ``fd_out`` until ``fd_in`` closes."""
    channel = _Channel(fd_in, fd_out)
    engine: SQLiteEngine | None = None
    notes: list[Any] = []
    try:
        while (requests := channel.receive()) is not None:
            for op, rids, args in plan(requests):
                engine, results = _answer(engine, op, args, notes)
                answers = [answer(rid, result) for rid, result in zip(rids, results, strict=True)]
                for start in range(0, len(answers), SLICE):
                    channel.send(notes + answers[start : start + SLICE])
                    notes.clear()
            if engine is not None and engine.compaction_due:
                engine.compact_due()
                if notes:
                    channel.send(notes)
                    notes.clear()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the storage's process is gone: nobody is waiting for answers
    finally:
        if engine is not None:
            engine.close()


def main() -> None:
    """The worker process's entry point: stdin in, stdout out (anything else printed goes
    to stderr)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.dup(1)
    os.dup2(2, 1)
    serve(0, out)
