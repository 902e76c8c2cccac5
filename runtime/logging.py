"""Structured logging for trouper, fitted into the application's own.

Every line an actor logs carries ``session``, ``actor`` and ``turn``; the runtime logs actor
lifecycle (started, stopped, restarting, crashed), interruptions (with how many frames were
dropped, tasks cancelled and which actors were interrupted) and session snapshots. Only
structlog's synchronous methods are used: its ``a*`` methods need asyncio.

:func:`configure` works in three modes: *standalone* (trouper configures structlog: console
text or JSON lines), *structlog* (the application configured structlog: trouper adds its
processors to the application's chain) and *stdlib* (the application uses the standard
``logging`` module: trouper's lines go to the standard loggers named ``trouper.*``).

No line carries what must not be shown: in every mode every event and every rendered line
pass through the registered scrubbers (:func:`runtime.add_scrubber`; ``import actors``
installs the redaction of credentials), and tracebacks are rendered without local variables
(they may hold secrets that no scrubber could recognise once cut short).

Applications that configure structlog themselves after trouper, and so without
:func:`configure`, add :func:`add_actor_fields`, :func:`scrub_event` and
:class:`ScrubbingRenderer` the same way::

    structlog.configure(processors=[structlog.contextvars.merge_contextvars,
                                    rlog.add_actor_fields, ..., rlog.scrub_event,
                                    rlog.ScrubbingRenderer(structlog.processors.JSONRenderer())])

Example::

    from runtime import logging as rlog

    rlog.configure(json=True, level="info", file=open("trouper.jsonl", "a"))
"""

from __future__ import annotations

import logging as _stdlib_logging
import sys
from collections.abc import Callable
from typing import Any, Literal, TextIO

import attrs
import structlog
from structlog.tracebacks import ExceptionDictTransformer

from ._cell import CURRENT_CELL
from ._scrub import scrub
from ._turn import CURRENT_TURN

__all__ = [
    "Mode",
    "ScrubbingRenderer",
    "add_actor_fields",
    "configure",
    "get_logger",
    "scrub_event",
]

#: How :func:`configure` fits trouper's logging into the application's (see there).
Mode = Literal["auto", "standalone", "structlog", "stdlib"]

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
    level: str | int | None = None,
    file: TextIO | None = None,
    colors: bool | None = None,
    mode: Mode = "auto",
) -> Mode:
    """Set up trouper's logging, fitting what the application already set up.

    Three modes (``mode="auto"`` picks one; name it to force it):

    - ``"standalone"``: trouper configures structlog for the whole process: console text (or
      JSON lines with ``json=True``) written to ``file`` (default ``sys.stderr``), lines below
      ``level`` (default ``"info"``) dropped. Picked when ``file`` is given, or when neither
      structlog nor the standard ``logging`` module has been configured.
    - ``"structlog"``: the application configured structlog itself. Its configuration is kept
      (processors, renderer, level, logger factory); trouper only adds its processors to the
      chain: :func:`add_actor_fields` first, :func:`scrub_event` just before the renderer,
      and the renderer wrapped in :class:`ScrubbingRenderer`. ``json``, ``level``, ``file``
      and ``colors`` are not used: the application's chain decides.
    - ``"stdlib"``: the application uses the standard ``logging`` module (its root logger has
      handlers). structlog is set up to hand every event, rendered and scrubbed, to the
      standard logger named like trouper's (``trouper.runtime``, ``trouper.actors``...), so the
      application's handlers, formatters and levels apply. ``level``, when given, is set on
      the ``trouper`` logger; ``json=True`` renders the message as JSON instead of
      ``key=value`` pairs.

    Calling it again replaces what trouper set up in standalone or stdlib mode; in structlog
    mode, processors already in the chain are not added twice.

    Args:
        json: One JSON object per line (for files and log pipelines) instead of console text.
        level: Lowest level written (``"debug"``, ``"info"``, ``"warning"``, ``"error"``).
        file: Where lines go (default ``sys.stderr``); giving it means standalone mode.
        colors: Colour console output (default: when ``file`` is a terminal).
        mode: ``"auto"``, ``"standalone"``, ``"structlog"`` or ``"stdlib"``.

    Returns:
        The mode used.

    Every event and every rendered line passes through the registered scrubbers
    (:func:`runtime.add_scrubber`), in every mode.

    Raises:
        ValueError: unknown level name or mode.
    """
    numeric = None if level is None else _level_number(level)
    if mode == "auto":
        mode = _detect(file)
    if mode == "standalone":
        _configure_standalone(
            json=json,
            level=_stdlib_logging.INFO if numeric is None else numeric,
            file=file,
            colors=colors,
        )
    elif mode == "structlog":
        _join_app_chain()
    elif mode == "stdlib":
        _configure_stdlib(json=json, level=numeric)
    else:
        raise ValueError(
            f"unknown logging mode {mode!r}; use 'auto', 'standalone', 'structlog' or 'stdlib'"
        )
    return mode


def _configure_by_default() -> None:
    """What a session does when the application has not configured structlog: warnings
    only, on ``sys.stderr`` (standalone), or through the standard ``logging`` module if the
    application uses it (its levels then apply)."""
    mode = _detect(None)
    configure(level="warning" if mode == "standalone" else None, mode=mode)


def _level_number(level: str | int) -> int:
    if not isinstance(level, str):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None


def _detect(file: TextIO | None) -> Mode:
    if file is not None:
        return "standalone"
    if structlog.is_configured() and not _is_trouper_chain(_processors()):
        return "structlog"
    if _stdlib_logging.getLogger().handlers:
        return "stdlib"
    return "standalone"


class _TrouperChain(list):  # type: ignore[type-arg]
    """The processor list trouper installed (standalone or stdlib): configured again, it is
    replaced; any other configured chain is the application's."""


def _processors() -> Any:
    return structlog.get_config()["processors"]


def _is_trouper_chain(processors: object) -> bool:
    return isinstance(processors, _TrouperChain)


def _no_locals_tracebacks() -> structlog.typing.Processor:
    # Tracebacks as data, without the frames' local variables: they may hold secrets that no
    # scrubber could find once cut at 80 characters.
    return structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False))


def _configure_standalone(
    *, json: bool, level: int, file: TextIO | None, colors: bool | None
) -> None:
    out = file if file is not None else sys.stderr
    processors: list[structlog.typing.Processor] = _TrouperChain(
        [
            structlog.contextvars.merge_contextvars,
            add_actor_fields,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ]
    )
    renderer: structlog.typing.Processor
    if json:
        processors.append(_no_locals_tracebacks())
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
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=(
            structlog.PrintLoggerFactory(file=out) if file is not None else _stderr_logger
        ),
        cache_logger_on_first_use=False,
    )


def _configure_stdlib(*, json: bool, level: int | None) -> None:
    renderer: structlog.typing.Processor
    if json:
        renderer = structlog.processors.JSONRenderer(default=repr)
        tracebacks = _no_locals_tracebacks()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["event", "session", "actor", "turn"], drop_missing=True
        )
        # The traceback as text inside the message (plain, without locals), so that it is
        # scrubbed with the rest of the line.
        tracebacks = structlog.processors.format_exc_info
    processors = _TrouperChain(
        [
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            add_actor_fields,
            tracebacks,
            scrub_event,
            ScrubbingRenderer(renderer),
        ]
    )
    structlog.configure(
        processors=processors,
        wrapper_class=_StdlibLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    if level is not None:
        _stdlib_logging.getLogger("trouper").setLevel(level)


class _StdlibLogger(structlog.stdlib.BoundLogger):
    """structlog's standard-library logger, except that ``exception()`` hands the standard
    logger no ``exc_info``: the traceback is already in the message, scrubbed (the standard
    formatter would append it again, unscrubbed)."""

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """Process the event with its traceback and log it at error level."""
        kw.setdefault("exc_info", True)
        return self._proxy_to_logger("error", event, *args, **kw)


def _join_app_chain() -> None:
    processors = _processors()
    chain = list(processors)
    if add_actor_fields not in chain:
        chain.insert(_after_contextvars(chain), add_actor_fields)
    if scrub_event not in chain:
        chain.insert(max(len(chain) - 1, 0), scrub_event)
    if chain and not isinstance(chain[-1], ScrubbingRenderer):
        chain[-1] = ScrubbingRenderer(chain[-1])
    if isinstance(processors, list):
        # In place: loggers that cached the chain on first use see the new one too.
        processors[:] = chain
    else:
        structlog.configure(processors=chain)


def _after_contextvars(chain: list[Any]) -> int:
    for i, processor in enumerate(chain):
        if processor is structlog.contextvars.merge_contextvars:
            return i + 1
    return 0


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Whatever sys.stderr is when the line is written (it may be swapped, e.g. by pytest).
    return structlog.PrintLogger(sys.stderr)


def get_logger(name: str = "trouper") -> structlog.typing.FilteringBoundLogger:
    """A structlog logger (use its sync methods only)."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


def add_actor_fields(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor: a line logged while an actor works (its handlers, hooks and the
    tasks it started, and whatever they call: an HTTP client, a library's own logger) gets
    ``session``, ``actor`` and ``turn`` (the handled frame's turn, else the session's current
    one), unless the line has them already.

    :func:`configure` installs it; an application that configures structlog itself puts it
    after ``structlog.contextvars.merge_contextvars``. It does nothing outside an actor.
    """
    del logger, method_name
    cell = CURRENT_CELL.get()
    if cell is not None:
        core = cell.core
        if "session" not in event_dict:
            event_dict["session"] = core.session.name
        if "actor" not in event_dict:
            event_dict["actor"] = cell.name
        if "turn" not in event_dict:
            turn = CURRENT_TURN.get()
            event_dict["turn"] = core.turn if turn is None else turn
    return event_dict


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
