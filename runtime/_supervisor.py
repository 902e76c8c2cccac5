"""The supervisor's decision after an actor's crash: restart it (after a backoff) or escalate.

An actor's task runs its cell's loops (:meth:`runtime._cell.Cell.run`); when they crash, the
cell asks :func:`after_crash` what to do. The actor is restarted after a backoff as its
:class:`~runtime.RestartPolicy` allows, or the crash escalates: the actor is marked crashed
and its exception ends the session. (One function called by the loops, not a loop around
them: a coroutine less per actor, resumed at every wake-up of its data loop.)
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

import trio

from ._actor import Actor
from ._errors import RestartIntensityExceeded
from ._lifecycle import RESTARTING, STOPPING, TERMINAL, ActorState

__all__ = ["Supervised", "after_crash"]


class Supervised(Protocol):
    """What the supervisor needs of the cell whose loops crashed (a
    :class:`~runtime._cell.Cell`; a protocol, so that the two modules do not import each
    other)."""

    actor: Actor[Any]
    name: str
    crash: BaseException | None
    restarts: int
    restart_times: deque[float] | None

    @property
    def core(self) -> Any:
        """What the session's cells share (its ``log`` and ``turn`` are read)."""

    @property
    def state(self) -> ActorState:
        """The actor's state."""

    def begin_restart(self) -> None:
        """The crash is answered with a restart (after its backoff)."""

    def restart(self) -> None:
        """Queue the ``StartFrame`` again, after the backoff."""

    def finish(self, *, crashed: bool, keep_upstream: bool = False) -> list[Any]:
        """Mark the actor stopped or crashed and end what is left of it."""


async def after_crash(cell: Supervised, exc: BaseException) -> bool:
    """Apply ``cell``'s restart policy to the crash ``exc`` of its loops: ``True`` once the
    actor is to run again (after the backoff, its ``StartFrame`` queued); ``False`` if it
    was stopped meanwhile (nothing more to do).

    Raises:
        BaseException: ``exc`` itself, when it is not an ``Exception`` (a cancellation) or
            the actor has no restart policy (it is marked crashed first).
        RestartIntensityExceeded: the actor crashed more often than its policy allows.
    """
    if not isinstance(exc, Exception):
        raise exc
    policy = cell.actor.restart_policy
    log = cell.core.log
    cell.crash = exc
    error = f"{type(exc).__name__}: {exc}"
    state = cell.state
    if state in TERMINAL:
        # A task of the actor failed while it was being torn down: the crash escalates.
        log.error("actor crashed", actor=cell.name, turn=cell.core.turn, error=error)
        raise exc
    if policy is not None:
        if state is STOPPING:
            # Stopped by another task meanwhile: no restart, and that stop completes.
            log.warning(
                "actor crashed while stopping",
                actor=cell.name,
                turn=cell.core.turn,
                error=error,
            )
            return False
        now = trio.current_time()
        # The times of its recent restarts: made by the first crash (most actors never
        # crash, and a deque kept by every actor is one more object for the collector).
        recent = cell.restart_times
        if recent is None:
            recent = cell.restart_times = deque()
        while recent and now - recent[0] > policy.within_secs:
            recent.popleft()
        if len(recent) < policy.max_restarts:
            delay = policy.backoff(len(recent))
            recent.append(now)
            cell.begin_restart()
            log.warning(
                "actor restarting",
                actor=cell.name,
                turn=cell.core.turn,
                error=error,
                restart=cell.restarts,
                backoff_secs=delay,
            )
            await trio.sleep(delay)
            if cell.state is not RESTARTING:
                return False  # stopped (removed) while waiting to restart
            cell.restart()
            return True
        log.error(
            "actor restart intensity exceeded",
            actor=cell.name,
            turn=cell.core.turn,
            max_restarts=policy.max_restarts,
            within_secs=policy.within_secs,
        )
        cell.finish(crashed=True)
        raise RestartIntensityExceeded(
            f"actor {cell.name!r} crashed more than {policy.max_restarts} times within "
            f"{policy.within_secs} s; last error: {error}"
        ) from exc
    log.error("actor crashed", actor=cell.name, turn=cell.core.turn, error=error)
    cell.finish(crashed=True)
    raise exc
