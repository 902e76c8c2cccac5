"""What a session is doing right now: :class:`SessionSnapshot` and :class:`ActorSnapshot`."""

from __future__ import annotations

from typing import Any

import attrs

from ._mailbox import MailboxStatistics

__all__ = ["ActorSnapshot", "SessionSnapshot"]


@attrs.frozen
class ActorSnapshot:
    """One actor in a :class:`SessionSnapshot`.

    Args:
        name: The actor's name.
        kind: Its class name.
        state: Lifecycle state.
        mailbox: Mailbox statistics.
        busy_with: Name of the frame its data handler is working on, if any.
        background_tasks: Tasks it started with ``create_task`` that are still running.
        restarts: How often its restart policy restarted it.
        dead_letters: Frames it pushed to neighbours that had stopped.
        downstream: Names of its downstream neighbours.
        companion_of: For a companion (see :meth:`~runtime.Actor.add_companion`), the name of
            the actor it belongs to.
    """

    name: str
    kind: str
    state: str
    mailbox: MailboxStatistics | None
    busy_with: str | None
    background_tasks: int
    restarts: int
    dead_letters: int
    downstream: tuple[str, ...]
    companion_of: str | None = None


@attrs.frozen
class SessionSnapshot:
    """What a session is doing right now (see :meth:`Session.snapshot`)."""

    name: str
    turn: int
    running: bool
    actors: tuple[ActorSnapshot, ...]
    turn_tasks: int

    def as_dict(self) -> dict[str, Any]:
        """Plain data, ready for a log line or JSON."""
        return attrs.asdict(self)
