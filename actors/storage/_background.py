"""The tasks a storage runs while it is open (lease renewals, Redis appends and
compactions): :class:`Background`.

They live in a nursery of the task that opened the storage, entered by ``__aenter__``, so
that nursery's cancel scope also covers the caller's ``async with`` block. Cancelling it
to close the storage would cancel the caller's own code (silently: the nursery absorbs the
cancellation at the block's end). The tasks therefore run under a cancel scope of their
own, inside that nursery, and closing the storage cancels only that scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import trio

__all__ = ["Background"]


class Background:
    """A storage's background tasks; :meth:`open` starts their nursery."""

    def __init__(self) -> None:
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    @classmethod
    async def open(cls, stack: AsyncExitStack) -> Background:
        """Open the tasks' nursery in a nursery entered on ``stack`` (which the storage's
        ``__aexit__`` closes, waiting for the tasks once they are cancelled)."""
        background = cls()
        outer = await stack.enter_async_context(trio.open_nursery())
        background._nursery = await outer.start(background._serve)
        return background

    async def _serve(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()

    @property
    def running(self) -> bool:
        """Whether tasks can be started (not cancelled yet)."""
        return self._nursery is not None

    def start_soon(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None
    ) -> bool:
        """Start ``fn(*args)`` in the background; whether it was started (not after
        :meth:`cancel`)."""
        if self._nursery is None:
            return False
        self._nursery.start_soon(fn, *args, name=name)
        return True

    def cancel(self) -> None:
        """Cancel every background task (and refuse new ones). Idempotent."""
        self._nursery = None
        self._scope.cancel()
