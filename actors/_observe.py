"""What the stages tell about their work: the story lines (``_logs``) and, when tracing is
enabled (:mod:`actors.tracing`), OpenTelemetry spans.

The LLM streamer opens an :class:`InferenceWatch` per request, the tool executor a
:class:`ToolWatch` per call. When neither debug lines nor tracing are on, both are a shared
object whose methods do nothing: the stages' cost is one call at the start of the work and
one at its end (none per token).

Spans: a ``turn`` span per LLM actor and conversation turn (an inference and the follow-up
inferences its tool calls lead to), a ``chat {model}`` span per request under it, an
``execute_tool {name}`` span per call under the ``chat`` span that asked for it. The executor
runs calls in tasks of its own, so the ``chat`` span of each call is looked up by the call's
id, registered when the calls are handed over.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._logs import story_log

if TYPE_CHECKING:
    from runtime import Actor

    from ._frames import FunctionCallFromLLM
    from .client import ChatClientError, ChatRequest, ChatStream

__all__ = [
    "InferenceWatch",
    "Otel",
    "ToolWatch",
    "end_turn_trace",
    "set_otel",
    "tracing_parts",
    "watch_inference",
    "watch_tool",
]

#: Outcomes of an inference or a tool call, in the story lines and spans.
OK, ERROR, CANCELLED = "ok", "error", "cancelled"

#: Calls handed over whose executor has not started them yet, at most (older ones are
#: forgotten: their spans then have no parent).
_MAX_WAITING_CALLS = 1024


@attrs.frozen
class Otel:
    """What the stages use of OpenTelemetry, imported by :func:`actors.tracing.enable`."""

    tracer: Any
    trace: Any
    status: Any
    status_code: Any
    span_kind: Any


_otel: Otel | None = None


def set_otel(otel: Otel | None) -> None:
    """Start (or, with ``None``, stop) tracing."""
    global _otel
    _otel = otel


def tracing_parts() -> Otel | None:
    """OpenTelemetry's parts while tracing is enabled, else ``None``."""
    return _otel


@attrs.define(eq=False)
class _TurnTrace:
    """The ``turn`` span of an LLM actor and what keeps it open."""

    span: Any
    turn: int | None
    #: The last inference handed calls over: the next one (same turn) is their follow-up.
    awaiting: bool = False
    #: Calls handed over that have not settled.
    pending: int = 0
    error_type: str | None = None
    closed: bool = False

    def close(self, otel: Otel) -> None:
        if self.closed:
            return
        self.closed = True
        if self.error_type is not None:
            self.span.set_status(otel.status(otel.status_code.ERROR))
            self.span.set_attribute("error.type", self.error_type)
        self.span.end()

    def settled_one(self, otel: Otel) -> None:
        self.pending -= 1
        if self.pending <= 0 and (not self.awaiting or self.error_type is not None):
            self.close(otel)


_turns: weakref.WeakKeyDictionary[Actor[Any], _TurnTrace] = weakref.WeakKeyDictionary()
#: tool_call_id -> (the context of the chat span that asked for it, its turn).
_waiting_calls: dict[str, tuple[Any, _TurnTrace]] = {}


def _turn_trace(llm: Actor[Any], turn: int | None, otel: Otel) -> _TurnTrace:
    """The turn span of ``llm``'s next inference: the open one if this inference follows up
    the previous one's tool calls, else a new one (the open one is closed)."""
    current = _turns.get(llm)
    if current is not None and not current.closed:
        if current.awaiting and current.turn == turn and current.error_type is None:
            current.awaiting = False
            return current
        current.awaiting = False
        if current.pending <= 0:
            current.close(otel)
    attributes: dict[str, Any] = {"trouper.actor": llm.name}
    session = _session_name(llm)
    if session is not None:
        attributes["trouper.session"] = session
    if turn is not None:
        attributes["trouper.turn"] = turn
    span = otel.tracer.start_span("turn", attributes=attributes)
    trace = _turns[llm] = _TurnTrace(span, turn)
    return trace


def _session_name(actor: Actor[Any]) -> str | None:
    try:
        return actor.session.name
    except Exception:
        return None


def end_turn_trace(llm: Actor[Any]) -> None:
    """End ``llm``'s open turn span (it stops)."""
    current = _turns.pop(llm, None)
    if current is not None and _otel is not None:
        current.close(_otel)


def _error_type(error: ChatClientError) -> str:
    status = error.status
    return str(status) if status is not None else type(error).__name__


class InferenceWatch:
    """The story and span of one LLM request (see the module docs)."""

    __slots__ = ("_log", "_otel", "_span", "_started", "_ttfb_told", "_turn")

    def __init__(self, log: Any, otel: Otel | None, span: Any, turn: _TurnTrace | None) -> None:
        self._log = log
        self._otel = otel
        self._span = span
        self._turn = turn
        self._started = trio.current_time() if log is not None or otel is not None else 0.0
        self._ttfb_told = False

    def first_token(self, stream: ChatStream) -> None:
        """The first output arrived (told once)."""
        if self._ttfb_told or (self._log is None and self._span is None):
            return
        self._ttfb_told = True
        first, started = stream.first_token_at, stream.request_started_at
        if first is None or started is None:
            return
        ttfb_ms = round((first - started) * 1000, 3)
        if self._log is not None:
            self._log.debug("first token", ttfb_ms=ttfb_ms)
        if self._span is not None:
            self._span.set_attribute("trouper.ttfb_ms", ttfb_ms)
            self._span.add_event("first_token", {"trouper.ttfb_ms": ttfb_ms})

    def end(
        self,
        stream: ChatStream | None,
        calls: Sequence[FunctionCallFromLLM],
        *,
        interrupted: bool,
        error: ChatClientError | None,
    ) -> None:
        """The request ended (the ``calls`` it asked for are handed over)."""
        log, otel, span = self._log, self._otel, self._span
        if log is None and otel is None:
            return
        if stream is not None and stream.first_token_at is not None:
            self.first_token(stream)
        result = stream.result() if stream is not None else None
        usage = stream.usage if stream is not None else None
        prompt = usage.prompt_tokens if usage is not None else None
        completion = usage.completion_tokens if usage is not None else None
        finish = result.finish_reason if result is not None else None
        outcome = CANCELLED if interrupted else ERROR if error is not None else OK
        error_type = CANCELLED if interrupted else _error_type(error) if error else None
        if log is not None:
            log.debug(
                "response end",
                outcome=outcome,
                finish_reason=finish,
                prompt_tokens=prompt,
                completion_tokens=completion,
                tool_calls=len(calls),
                attempts=stream.attempts if stream is not None else None,
                duration_ms=round((trio.current_time() - self._started) * 1000, 3),
                **({"error": error_type} if error_type is not None else {}),
            )
        if otel is None or span is None:
            return
        if result is not None and result.model:
            span.set_attribute("gen_ai.response.model", result.model)
        if result is not None and result.id:
            span.set_attribute("gen_ai.response.id", result.id)
        if finish is not None:
            span.set_attribute("gen_ai.response.finish_reasons", (finish,))
        if prompt is not None:
            span.set_attribute("gen_ai.usage.input_tokens", prompt)
        if completion is not None:
            span.set_attribute("gen_ai.usage.output_tokens", completion)
        if error_type is not None:
            span.set_status(otel.status(otel.status_code.ERROR))
            span.set_attribute("error.type", error_type)
        span.end()
        turn = self._turn
        if turn is None:
            return
        if calls:
            context = otel.trace.set_span_in_context(span)
            for call in calls:
                _waiting_calls[call.tool_call_id] = (context, turn)
            while len(_waiting_calls) > _MAX_WAITING_CALLS:
                del _waiting_calls[next(iter(_waiting_calls))]
            turn.pending += len(calls)
        if error_type is not None:
            turn.error_type = error_type
        turn.awaiting = bool(calls) and error_type is None
        if turn.pending <= 0 and not turn.awaiting:
            turn.close(otel)


_QUIET_INFERENCE = InferenceWatch(None, None, None, None)


def watch_inference(llm: Actor[Any], request: ChatRequest, turn: int | None) -> InferenceWatch:
    """Tell that ``llm`` sends ``request`` (in ``turn``); the returned watch tells the rest."""
    log = story_log(llm)
    otel = _otel
    if log is None and otel is None:
        return _QUIET_INFERENCE
    tools = len(request.tools) if request.tools else 0
    if log is not None:
        log.debug("llm request", model=request.model, messages=len(request.messages), tools=tools)
    if otel is None:
        return InferenceWatch(log, None, None, None)
    turn_trace = _turn_trace(llm, turn, otel)
    span = otel.tracer.start_span(
        f"chat {request.model}",
        context=otel.trace.set_span_in_context(turn_trace.span),
        kind=otel.span_kind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.system": "openai",
            "gen_ai.request.model": request.model,
            "trouper.messages": len(request.messages),
            "trouper.tools": tools,
        },
    )
    return InferenceWatch(log, otel, span, turn_trace)


class ToolWatch:
    """The story and span of one tool call (see the module docs)."""

    __slots__ = ("_call", "_log", "_otel", "_span", "_started", "_turn")

    def __init__(
        self,
        call: FunctionCallFromLLM | None,
        log: Any,
        otel: Otel | None,
        span: Any,
        turn: _TurnTrace | None,
    ) -> None:
        self._call = call
        self._log = log
        self._otel = otel
        self._span = span
        self._turn = turn
        self._started = trio.current_time() if call is not None else 0.0

    def settled(self, outcome: str, error_type: str | None = None) -> None:
        """The call settled: ``outcome`` is ``"ok"``, ``"error"`` or ``"cancelled"``."""
        call = self._call
        if call is None:
            return
        if self._log is not None:
            self._log.debug(
                "tool call settled",
                name=call.function_name,
                tool_call_id=call.tool_call_id,
                duration_ms=round((trio.current_time() - self._started) * 1000, 3),
                outcome=outcome,
                **({"error": error_type} if error_type is not None else {}),
            )
        otel, span = self._otel, self._span
        if otel is None or span is None:
            return
        if outcome != OK:
            span.set_status(otel.status(otel.status_code.ERROR))
            span.set_attribute("error.type", error_type or outcome)
        span.end()
        turn = self._turn
        if turn is not None:
            if outcome == CANCELLED and turn.error_type is None:
                turn.error_type = CANCELLED
            turn.settled_one(otel)


_QUIET_TOOL = ToolWatch(None, None, None, None, None)


def watch_tool(executor: Actor[Any], call: FunctionCallFromLLM) -> ToolWatch:
    """Tell that ``executor`` starts ``call``; the returned watch tells how it settled."""
    otel = _otel
    waiting = _waiting_calls.pop(call.tool_call_id, None)
    log = story_log(executor)
    if log is None and otel is None:
        return _QUIET_TOOL
    if log is not None:
        log.debug("tool call started", name=call.function_name, tool_call_id=call.tool_call_id)
    if otel is None:
        return ToolWatch(call, log, None, None, None)
    context, turn = waiting if waiting is not None else (None, None)
    span = otel.tracer.start_span(
        f"execute_tool {call.function_name}",
        context=context,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.function_name,
            "gen_ai.tool.call.id": call.tool_call_id,
            "gen_ai.tool.type": "function",
        },
    )
    return ToolWatch(call, log, otel, span, turn)
