"""The runtime's exceptions.

::

    ActorError
    ├── ActorDeadError        the actor has stopped: send/ask refused, pending asks failed
    ├── AskTimeoutError       no reply within the ask's deadline (also a TimeoutError)
    ├── SelfAskError          an actor asked itself (would deadlock)
    ├── RestartIntensityExceeded  more restarts than the policy allows; the last crash is __cause__
    └── SessionStateError     the session/task is used in a state that does not allow it
    FrameTypeError (TypeError) a frame sent to an actor that does not accept its type
"""

from __future__ import annotations

__all__ = [
    "ActorDeadError",
    "ActorError",
    "AskTimeoutError",
    "FrameTypeError",
    "RestartIntensityExceeded",
    "SelfAskError",
    "SessionStateError",
]


class ActorError(Exception):
    """Base class of the runtime's errors."""


class ActorDeadError(ActorError):
    """The actor has stopped, so it cannot take the frame (raised by send and ask)."""


class AskTimeoutError(ActorError, TimeoutError):
    """The asked actor did not reply within the deadline."""


class SelfAskError(ActorError):
    """An actor asked itself; it would wait for its own mailbox forever."""


class RestartIntensityExceeded(ActorError):
    """An actor crashed more often than its restart policy allows; the crash is ``__cause__``."""


class SessionStateError(ActorError, RuntimeError):
    """The session or task was used in a state that does not allow the operation."""


class FrameTypeError(TypeError):
    """A frame was sent directly to an actor whose mailbox does not accept its type."""
