"""The turn of the frame the running task is handling (read it with :func:`current_turn`)."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["CURRENT_TURN", "current_turn"]

#: Set by an actor's loops while a handler runs; a frame created meanwhile takes this turn.
#: Internal to the runtime: read it through :func:`current_turn`.
CURRENT_TURN: ContextVar[int | None] = ContextVar("trouper_current_turn", default=None)


def current_turn() -> int | None:
    """The turn of the frame being handled by the calling task, or ``None`` outside a handler.

    Inside :meth:`~runtime.Actor.process_frame` (and :meth:`~runtime.Actor.on_ask`) it is the
    turn the frame belongs to; a frame created there is stamped with it. Tasks started with
    :meth:`~runtime.Actor.create_task` inherit the value of the handler that started them.
    Outside any handler (application code, a fresh task) it is ``None``; the session's current
    turn is then :attr:`runtime.Session.turn`.
    """
    return CURRENT_TURN.get()
