"""How :class:`~actors.storage.SQLiteConversationStorage` reaches its engine: the
:class:`EngineLink` protocol, which a process link and a thread link implement."""

from __future__ import annotations

from typing import Any, Protocol

from ._background import Background

__all__ = ["EngineLink"]


class EngineLink(Protocol):
    """Carries requests to one :class:`~actors.storage._sqlite_engine.SQLiteEngine` and
    their answers back, without blocking the trio loop. A request, once handed over, is
    carried out to its end even if its caller is cancelled (the caller waits for it)."""

    @property
    def running(self) -> bool:
        """Whether requests are accepted."""
        ...

    @property
    def failure(self) -> str | None:
        """Why the link stopped on its own (its worker died), or ``None``."""
        ...

    async def start(self, background: Background) -> None:
        """Start the worker and open the database (tasks, if any, go in ``background``).

        Raises:
            StorageUnavailableError: The database cannot be opened, or the worker cannot
                start.
        """
        ...

    async def call(self, op: str, arg: Any, *, heavy: bool = False) -> Any:
        """Carry out one request (grouped with others of the same operation when it is one
        of ``BATCHED``); its result.

        Raises:
            WorkerClosedError: The link is stopped or was never started.
            StorageError: What the request raised, or the worker died.
        """
        ...

    async def stop(self) -> None:
        """Finish the requests handed over, close the database, end the worker.
        Idempotent."""
        ...
