"""The story of a turn, at debug level, on the logger ``trouper.actors``.

What the stages tell (see ``docs/observability.md``): ``llm request`` (model, message and tool
counts), ``first token`` (``ttfb_ms``), ``response end`` (tokens, finish reason, outcome),
``tool call started`` and ``tool call settled`` (name, id, duration, outcome). Each line
carries ``session``, ``actor`` and ``turn``.

Whether debug lines are written is checked once per inference or tool call, when its logger
is bound (:func:`story_log`), never per token: with debug off, a stage pays for one bind.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

from runtime import Actor, SessionStateError, current_turn

__all__ = ["STORY_LOGGER", "debug_enabled", "story_log"]

#: The logger name of the story lines.
STORY_LOGGER = "trouper.actors"

_logger = structlog.get_logger(STORY_LOGGER)


def story_log(actor: Actor[Any]) -> Any | None:
    """A logger bound to ``actor``'s session, name and the current turn if debug lines are
    written, else ``None``."""
    try:
        session: str | None = actor.session.name
    except SessionStateError:  # not running in a session (a stage driven by hand)
        session = None
    log = _logger.bind(session=session, actor=actor.name, turn=current_turn())
    return log if debug_enabled(log) else None


def debug_enabled(log: Any) -> bool:
    """Whether ``log`` writes debug lines (structlog's filtering loggers and the standard
    library's say; any other kind of logger is assumed to)."""
    check = getattr(log, "is_enabled_for", None) or getattr(log, "isEnabledFor", None)
    return True if check is None else bool(check(logging.DEBUG))
