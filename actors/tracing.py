"""OpenTelemetry traces of the conversation stages (optional: ``pip install 'trouper[otel]'``).

Once :func:`enable` is called, the stages emit spans with the attribute names of
OpenTelemetry's GenAI semantic conventions:

- ``turn``: one per conversation turn (an inference and the follow-up inferences its tool
  calls lead to), the parent of the others;
- ``chat {model}`` (kind ``CLIENT``): one per LLM request, with ``gen_ai.operation.name``
  ``"chat"``, ``gen_ai.provider.name`` (and the older ``gen_ai.system``) ``"openai"``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.response.id``,
  ``gen_ai.usage.input_tokens``/``output_tokens``, ``gen_ai.response.finish_reasons``, the
  time to first token (``trouper.ttfb_ms``, and a ``first_token`` event);
- ``execute_tool {name}``: one per tool call, with ``gen_ai.operation.name``
  ``"execute_tool"``, ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.type``: a
  child of the ``chat`` span that asked for it, although tools run in tasks of their own.

A span of work that was interrupted or cancelled ends with status ``ERROR`` and
``error.type`` ``"cancelled"``; a failed request sets ``error.type`` to the HTTP status (or
the error's class when there was no response), a failed tool call to its outcome.

OpenTelemetry is imported by :func:`enable` only: trouper imports and runs without it, and
tracing costs nothing while it is disabled. Example::

    from opentelemetry.sdk.trace import TracerProvider
    from actors import tracing

    tracing.enable(TracerProvider())  # or enable(): the global tracer provider
"""

from __future__ import annotations

from typing import Any

from runtime import __version__

from ._observe import Otel, set_otel, tracing_parts

__all__ = ["disable", "enable", "is_enabled"]

_INSTALL_HINT = "pip install 'trouper[otel]'"


def enable(tracer_provider: Any = None) -> None:
    """Emit OpenTelemetry spans from now on (see the module docs).

    Args:
        tracer_provider: The ``TracerProvider`` spans go to; ``None``: OpenTelemetry's global
            one (``opentelemetry.trace.get_tracer_provider()``).

    Raises:
        ImportError: OpenTelemetry is not installed; the message says to
            ``pip install 'trouper[otel]'``.
    """
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            f"tracing needs OpenTelemetry, which is not installed: {_INSTALL_HINT}"
        ) from exc
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    set_otel(
        Otel(
            tracer=provider.get_tracer("trouper", __version__),
            trace=trace,
            status=trace.Status,
            status_code=trace.StatusCode,
            span_kind=trace.SpanKind,
        )
    )


def disable() -> None:
    """Stop emitting spans (spans already started still end)."""
    set_otel(None)


def is_enabled() -> bool:
    """Whether :func:`enable` was called (and not :func:`disable` since)."""
    return tracing_parts() is not None
