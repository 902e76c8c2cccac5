"""What the cells of one session share: :class:`SessionCore`.

The current turn, the cancel scopes of the turn's work, the frames whose delivery a sender
awaits, the session's logger and two ways back up to the session (apply an interruption,
spawn a companion). The :class:`~runtime.Session` makes one and hands it to every cell it
creates; the cells never import the session module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from ._actor import Actor, SessionView
from ._frames import Frame

__all__ = ["Delivery", "SessionCore", "SessionHooks"]


@attrs.define(eq=False)
class Delivery:
    """A frame whose sender waits until it has been delivered (``Actor.push_error``):
    ``count`` is the number of lanes it is queued in or being handled from; ``done`` is set
    when that falls to zero (it reached the end of its path, or a stage took it)."""

    count: int = 0
    done: trio.Event = attrs.Factory(trio.Event)


class SessionHooks(Protocol):
    """The two ways from the cells back up to their session (the session is its own hooks:
    no bound method kept per session for the garbage collector to scan)."""

    def _apply_interruption(self, frame: Frame) -> None:
        """Apply an interruption frame to the whole session (once per frame)."""

    def _spawn_companion_of(self, owner: str, actor: Actor[Any], stop_with_owner: bool) -> None:
        """Spawn ``actor`` as a companion of the actor named ``owner``."""


@attrs.define(eq=False)
class SessionCore:
    """The state a session's cells share (see the module docs).

    Args:
        session: The session, as its actors see it.
        log: The session's bound logger.
        stop_timeout_secs: Bound on each actor's ``on_stop``.
        hooks: The ways back up to the session (:meth:`interrupt`, :meth:`spawn_companion`).
    """

    session: SessionView
    log: Any
    stop_timeout_secs: float
    hooks: SessionHooks
    #: The current turn: raised by one at every interruption.
    turn: int = 0
    #: Cancel scopes of work that the next interruption cancels (turn scopes, tasks), each
    #: with the name of the actor it works for.
    turn_scopes: dict[trio.CancelScope, str] = attrs.Factory(dict)
    #: Frames whose delivery their sender awaits, by frame id (empty nearly always).
    in_flight: dict[int, Delivery] = attrs.Factory(dict)
    #: The session's nursery while it is open: every actor's task runs in it, and so do
    #: the tasks an actor starts (each under a cancel scope its cell keeps).
    nursery: trio.Nursery | None = None

    def interrupt(self, frame: Frame) -> None:
        """Apply an interruption frame to the whole session (once per frame)."""
        self.hooks._apply_interruption(frame)

    def spawn_companion(self, owner: str, actor: Actor[Any], stop_with_owner: bool) -> None:
        """Spawn ``actor`` as a companion of the actor named ``owner``."""
        self.hooks._spawn_companion_of(owner, actor, stop_with_owner)

    @asynccontextmanager
    async def tracking(self, frame: Frame) -> AsyncIterator[None]:
        """Count the lanes ``frame`` is queued in while the block runs; leaving the block
        normally then waits until none holds it any more."""
        delivery = self.in_flight[frame.id] = Delivery()
        try:
            yield
            if delivery.count:
                await delivery.done.wait()
        finally:
            self.in_flight.pop(frame.id, None)

    def delivery_step(self, frame: Frame) -> None:
        """One lane is done with a tracked frame (handled, passed on, or dropped)."""
        delivery = self.in_flight.get(frame.id)
        if delivery is not None:
            delivery.count -= 1
            if delivery.count <= 0:
                delivery.done.set()

    def queued(self, frame: Frame) -> None:
        """A tracked frame was queued in one more lane."""
        delivery = self.in_flight.get(frame.id)
        if delivery is not None:
            delivery.count += 1
