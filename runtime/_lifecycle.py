"""An actor's life as one state machine: :class:`ActorState` and the moves between states.

Every state change of an actor goes through :meth:`Lifecycle.to`, which refuses a move the
table below does not list (a bug in the runtime, reported as :class:`LifecycleError`). The
usual path, and what a crash adds::

    CREATED ──► STARTING ──► RUNNING ──► STOPPING ──► STOPPED
                   ▲
                   └── RESTARTING ◄── crash, the restart policy allows one more restart
                                      (from CREATED, STARTING or RUNNING)
    crash, no restart left: any live state ──► CRASHED

=============  ==============================================================================
from           to
=============  ==============================================================================
CREATED        STARTING (its ``StartFrame`` arrives), STOPPING (stopped before it started),
               RESTARTING, CRASHED
STARTING       RUNNING (``on_start`` returned), STOPPING, RESTARTING, CRASHED
RUNNING        STOPPING (end, cancel, removal, session close), RESTARTING, CRASHED
RESTARTING     STARTING (after the backoff, the ``StartFrame`` it started with arrives again),
               STOPPING (removed or closed meanwhile), CRASHED
STOPPING       STOPPED (``on_stop`` done, mailbox closed), CRASHED
STOPPED        (final)
CRASHED        (final)
=============  ==============================================================================

A restarted actor keeps its mailbox and the frames queued in it.
"""

from __future__ import annotations

import enum

import trio

__all__ = ["LIVE", "SERVING", "TERMINAL", "ActorState", "Lifecycle", "LifecycleError"]


class ActorState(enum.Enum):
    """Where an actor is in its life (see :mod:`runtime._lifecycle` for the moves)."""

    CREATED = "created"
    """Made, or spawned and waiting for its ``StartFrame``."""
    STARTING = "starting"
    """Its ``on_start`` runs."""
    RUNNING = "running"
    """Handling frames."""
    RESTARTING = "restarting"
    """Crashed; its restart policy starts it again after a backoff."""
    STOPPING = "stopping"
    """Its ``on_stop`` runs."""
    STOPPED = "stopped"
    """Stopped for good; its mailbox refuses frames."""
    CRASHED = "crashed"
    """Failed for good (no restart left); the crash escalated."""

    # The members are singletons compared by identity: hash them by identity too (C speed).
    # ``Enum.__hash__`` hashes the name in Python, and the runtime tests states against sets
    # of states (``SERVING``, ``TERMINAL``, the table of moves) several times per actor start.
    __hash__ = object.__hash__


CREATED = ActorState.CREATED
STARTING = ActorState.STARTING
RUNNING = ActorState.RUNNING
RESTARTING = ActorState.RESTARTING
STOPPING = ActorState.STOPPING
STOPPED = ActorState.STOPPED
CRASHED = ActorState.CRASHED

#: States after which nothing changes any more.
TERMINAL = frozenset({STOPPED, CRASHED})
#: States an actor can still be stopped (or crash) from.
LIVE = frozenset({CREATED, STARTING, RUNNING, RESTARTING})

_MOVES: dict[ActorState, frozenset[ActorState]] = {
    CREATED: frozenset({STARTING, STOPPING, RESTARTING, CRASHED}),
    STARTING: frozenset({RUNNING, STOPPING, RESTARTING, CRASHED}),
    RUNNING: frozenset({STOPPING, RESTARTING, CRASHED}),
    RESTARTING: frozenset({STARTING, STOPPING, CRASHED}),
    STOPPING: frozenset({STOPPED, CRASHED}),
    STOPPED: frozenset(),
    CRASHED: frozenset(),
}

#: States in which the data loop serves frames (or has stopped for good).
SERVING = frozenset({RUNNING, STOPPING, STOPPED, CRASHED})


class LifecycleError(RuntimeError):
    """A state change the actor state machine does not allow: a bug in the runtime."""


class Lifecycle:
    """The state of one actor, its allowed moves and a way to wait for a change.

    Made with the actor (so an actor that was never spawned is ``CREATED`` and can be waited
    for); only the cell that runs it moves it.
    """

    __slots__ = ("_changed", "owner", "state")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.state = CREATED
        # Made by the first waiter and set (then dropped) by the next move.
        self._changed: trio.Event | None = None

    def to(self, new: ActorState) -> None:
        """Move to ``new`` and wake the waiters.

        Raises:
            LifecycleError: the move is not in the table (the runtime has a bug).
        """
        old = self.state
        if new not in _MOVES[old]:
            raise LifecycleError(
                f"actor {self.owner!r} cannot go from {old.value} to {new.value}; "
                f"allowed from {old.value}: "
                f"{sorted(s.value for s in _MOVES[old]) or 'nothing (final state)'}"
            )
        self.state = new
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def wait_for(self, states: frozenset[ActorState]) -> None:
        """Wait until the state is one of ``states`` (a checkpoint if it is already)."""
        if self.state in states:
            await trio.lowlevel.checkpoint()
            return
        while self.state not in states:
            if self._changed is None:
                self._changed = trio.Event()
            await self._changed.wait()
