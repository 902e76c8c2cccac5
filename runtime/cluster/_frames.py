"""The frames a remote handle adds to a session's output: an acknowledged interruption and
the end of a placement."""

from __future__ import annotations

import attrs

from .._frames import SystemFrame

__all__ = ["OwnerLostFrame", "RemoteInterruptedFrame"]


@attrs.frozen(slots=True)
class RemoteInterruptedFrame(SystemFrame):
    """The owner interrupted the key's current turn and acknowledged it: every output frame
    after this one belongs to a later turn (anything older is dropped before it reaches the
    subscriber).

    Args:
        key: The entity key.
        epoch: The placement that was interrupted.
        generation: The interruption's number in that placement (1 for the first).
        request: The id of the request that asked for it.
    """

    key: str
    epoch: int
    generation: int
    request: str = ""


@attrs.frozen(slots=True)
class OwnerLostFrame(SystemFrame):
    """The key's session ended without finishing what was sent to it: its worker died (its
    placement expired) or the session crashed. Whatever was in flight is lost; the next send
    places the key again (on a live worker).

    Args:
        key: The entity key.
        epoch: The placement that ended.
        reason: What happened.
    """

    key: str
    epoch: int
    reason: str
