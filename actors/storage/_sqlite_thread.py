"""The SQLite engine on a thread of the storage's own process: :class:`ThreadLink`
(``SQLiteConversationStorage(..., worker="thread")``).

The thread gives the GIL up around every SQLite call and must take it back while the trio
loop runs; with hundreds of busy sessions each take-back can wait for CPython's switch
interval, so the process link is the default. The thread link suits an application that
cannot start processes (a frozen executable, a sandbox).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import outcome

from ._background import Background
from ._sqlite_engine import BATCHED, SQLiteEngine
from ._worker import Batcher, WorkerThread

__all__ = ["ThreadLink"]


def _opened(engine: SQLiteEngine) -> SQLiteEngine:
    engine.open()
    return engine


def _close(engine: SQLiteEngine) -> None:
    engine.close()


def _group(op: str, engine: SQLiteEngine, items: list[Any]) -> list[outcome.Outcome[Any]]:
    return engine.run_group(op, items)


class ThreadLink:
    """The engine on one dedicated thread (see :mod:`actors.storage._worker`)."""

    def __init__(self, engine: SQLiteEngine) -> None:
        self._engine = engine
        self._worker: WorkerThread[SQLiteEngine] = WorkerThread(
            f"trouper-sqlite:{Path(engine.path).name}", functools.partial(_opened, engine), _close
        )
        self._groups: dict[str, Batcher[SQLiteEngine, Any, Any]] = {
            op: Batcher(self._worker, functools.partial(_group, op)) for op in BATCHED
        }

    @property
    def running(self) -> bool:
        """Whether requests are accepted."""
        return self._worker.running

    @property
    def failure(self) -> str | None:
        """A thread does not die on its own: always ``None``."""
        return None

    async def start(self, background: Background) -> None:
        """Start the thread and open the database in it."""
        await self._worker.start()

    async def call(self, op: str, arg: Any, *, heavy: bool = False) -> Any:
        """Carry out one request on the thread (see :class:`EngineLink`)."""
        group = self._groups.get(op)
        if group is None:
            return await self._worker.call(lambda engine: engine.run(op, arg))
        result = await group.call(arg)
        if self._engine.compaction_due:
            self._worker.post(SQLiteEngine.compact_due)
        return result

    async def stop(self) -> None:
        """Finish the queued requests, close the database, end the thread."""
        await self._worker.stop()
