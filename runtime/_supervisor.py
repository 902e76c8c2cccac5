"""The supervisor: runs one actor's cell in the session's nursery and applies its restart policy.

After a crash the actor is restarted after a backoff (:class:`~runtime.RestartPolicy`), or the
crash escalates: the actor is marked crashed and its exception ends the session.
"""

from __future__ import annotations

from collections import deque

import trio

from ._cell import Cell
from ._errors import RestartIntensityExceeded
from ._lifecycle import RESTARTING, STOPPING, TERMINAL
from ._supervision import collapse_exception_group

__all__ = ["supervise"]


async def supervise(cell: Cell) -> None:
    """Run ``cell``'s loops until its actor stops; restart them after a crash as its policy
    allows, else mark it crashed and raise the crash (escalation)."""
    policy = cell.actor.restart_policy
    log = cell.core.log
    # The times of its recent restarts: made by the first crash (most actors never crash,
    # and a deque kept by every actor's task is one more object for the garbage collector).
    recent: deque[float] | None = None
    while True:
        try:
            await cell.run()
        except BaseExceptionGroup as group:
            exc = collapse_exception_group(group)
        except Exception as single:  # pragma: no cover - a nursery always groups
            exc = single
        else:
            cell.finish(crashed=False)  # the loops ended: stopped (if not already)
            return
        if not isinstance(exc, Exception):
            raise exc
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
                return
            now = trio.current_time()
            if recent is None:
                recent = deque()
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
                    return  # stopped (removed) while waiting to restart
                cell.restart()
                continue
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
