"""Structured logging for trouper: configure structlog once, JSON or console.

Every line an actor logs carries ``session``, ``actor`` and ``turn``; the runtime logs actor
lifecycle (started, stopped, restarting, crashed), interruptions (with how many frames were
dropped and tasks cancelled) and session snapshots. Only structlog's synchronous methods are
used: its ``a*`` methods need asyncio.

No line carries what must not be shown: :func:`configure` passes every event and every rendered
line through the registered scrubbers (:func:`runtime.add_scrubber`; ``import actors`` installs
the redaction of credentials), and renders tracebacks without local variables (they may hold
secrets that no scrubber could recognise once cut short).

Applications that configure structlog themselves add :func:`scrub_event` and
:class:`ScrubbingRenderer` the same way::

    structlog.configure(processors=[..., rlog.scrub_event,
                                    rlog.ScrubbingRenderer(structlog.processors.JSONRenderer())])

Example::

    from runtime import logging as rlog

    rlog.configure(json=True, level="info", file=open("trouper.jsonl", "a"))
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import attrs
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from ._scrub import scrub

__all__ = ["ScrubbingRenderer", "configure", "get_logger", "scrub_event"]

_LEVELS = {
    "debug": _stdlib_logging.DEBUG,
    "info": _stdlib_logging.INFO,
    "warning": _stdlib_logging.WARNING,
    "error": _stdlib_logging.ERROR,
    "critical": _stdlib_logging.CRITICAL,
}


def configure(
    *,
    json: bool = False,
    level: str | int = "info",
    file: TextIO | None = None,
    colors: bool | None = None,
) -> None:
    """Configure structlog for the whole process.

    Args:
        json: One JSON object per line (for files and log pipelines) instead of console text.
        level: Lowest level written (``"debug"``, ``"info"``, ``"warning"``, ``"error"``).
        file: Where lines go (default ``sys.stderr``).
        colors: Colour console output (default: when ``file`` is a terminal).

    Every event and every rendered line passes through the registered scrubbers
    (:func:`runtime.add_scrubber`).

    Raises:
        ValueError: unknown level name.
    """
    if isinstance(level, str):
        try:
            numeric = _LEVELS[level.lower()]
        except KeyError:
            raise ValueError(
                f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}"
            ) from None
    else:
        numeric = level
    out = file if file is not None else sys.stderr
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if json:
        # Tracebacks as data, without the frames' local variables: they may hold secrets that
        # no scrubber could find once cut at 80 characters.
        processors.append(
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        )
        renderer = structlog.processors.JSONRenderer(default=repr)
    else:
        use_colors = out.isatty() if colors is None else colors
        # Plain tracebacks: no locals, and no wrapping that could split a secret in two.
        renderer = structlog.dev.ConsoleRenderer(
            colors=use_colors, exception_formatter=structlog.dev.plain_traceback
        )
    processors += [scrub_event, ScrubbingRenderer(renderer)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=(
            structlog.PrintLoggerFactory(file=out) if file is not None else _stderr_logger
        ),
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Whatever sys.stderr is when the line is written (it may be swapped, e.g. by pytest).
    return structlog.PrintLogger(sys.stderr)


def get_logger(name: str = "trouper") -> structlog.typing.FilteringBoundLogger:
    """A structlog logger (use its sync methods only)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


def scrub_event(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor: pass every value of the event dict through the registered
    scrubbers (:func:`runtime.scrub`).

    Place it after the processors that turn tracebacks into data and before the renderer.
    """
    del logger, method_name
    return scrub(event_dict)


@attrs.frozen
class ScrubbingRenderer:
    """Wraps a structlog renderer: the line it renders passes through the registered scrubbers
    (:func:`runtime.scrub`) before it is written, whatever was in the event (an object whose
    ``repr`` holds a secret, a traceback's text).

    Args:
        renderer: The renderer (last processor) to wrap, e.g. ``JSONRenderer()``.
    """

    renderer: Callable[[Any, str, Any], Any]

    def __call__(self, logger: Any, method_name: str, event_dict: Any) -> Any:
        """Render, then scrub the rendered line."""
        rendered = self.renderer(logger, method_name, event_dict)
        if isinstance(rendered, str):
            return scrub(rendered)
        if isinstance(rendered, (bytes, bytearray)):
            return scrub(bytes(rendered).decode("utf-8", "surrogateescape")).encode(
                "utf-8", "surrogateescape"
            )
        return rendered
