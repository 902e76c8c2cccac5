"""``OpenAILLMStreamer``: the LLM streamer actor, over one chat-completions client.

It turns each :class:`OpenAILLMContextFrame` (or ``LLMMessagesFrame``/``VisionImageRawFrame``)
into one streamed chat completion: exactly one ``LLMFullResponseStartFrame``/
``LLMFullResponseEndFrame`` pair, an ``LLMTextFrame`` per content delta, and, when the model
asks for tools, one ``FunctionCallsStartedFrame``, after which the calls are handed over to
be run. The stream runs inside the turn: an interruption cancels it at once, closes its
socket, and still emits the end frame and the usage seen so far.

This module depends on the client and the frames only. Who runs the calls and who collects
the measurements is left to a subclass: :class:`~actors.OpenAILLMService` (``_service.py``)
adds its tool executor and metrics collector.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import trio

from runtime import Actor, Frame, FrameDirection, MetricsData, MetricsFrame, current_turn

from ._context import DEFAULT_MAX_IMAGE_BYTES, ContextSnapshot, image_message
from ._frames import (
    FunctionCallFromLLM,
    FunctionCallsStartedFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesFrame,
    LLMTextFrame,
    LLMTokenUsage,
    LLMUpdateSettingsFrame,
    LLMUsageMetricsData,
    OpenAILLMContextFrame,
    ProcessingMetricsData,
    TTFBMetricsData,
    VisionImageRawFrame,
    new_llm_text,
)
from ._observe import InferenceWatch, end_turn_trace, watch_inference
from ._params import metrics_settings
from ._planner import harder_start
from ._window import TokenCounter
from .client import (
    ChatClientError,
    ChatCompletionsClient,
    ChatRequest,
    ContextLengthExceededError,
    ErrorCategory,
    GenerationParams,
)

if TYPE_CHECKING:
    from .client import ChatStream, StreamResult, Usage

__all__ = ["OpenAILLMStreamer", "check_model", "check_params", "check_system_instruction"]

#: How long the closing frames of an interrupted inference may wait for room downstream.
_CLOSING_PUSH_SECS = 2.0

#: Estimates the messages of a request the server refused as too long.
_ESTIMATE = TokenCounter()


def check_model(model: object) -> str:
    """``model`` if it names a model.

    Raises:
        ValueError: it is not a non-empty string.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a non-empty string, e.g. 'gpt-4o-mini', got {model!r}")
    return model


def check_system_instruction(instruction: object) -> str | None:
    """``instruction`` if it is ``None`` or non-empty text.

    Raises:
        ValueError: anything else.
    """
    if instruction is None:
        return None
    if isinstance(instruction, str) and instruction.strip():
        return instruction
    raise ValueError(f"system_instruction must be a non-empty string or None, got {instruction!r}")


#: The generation parameters of a service given none (frozen: one instance serves all).
_DEFAULT_GENERATION = GenerationParams()


def check_params(params: object) -> GenerationParams:
    """``params``, or the defaults for ``None``.

    Raises:
        TypeError: ``params`` is not a ``GenerationParams``.
    """
    if params is None:
        return _DEFAULT_GENERATION
    if not isinstance(params, GenerationParams):
        raise TypeError(f"params must be OpenAILLMService.InputParams, got {type(params).__name__}")
    return params


class OpenAILLMStreamer(Actor[Frame], abc.ABC):
    """Streams chat completions through one :class:`~actors.client.ChatCompletionsClient`.

    A subclass decides where the tool calls the model asks for run
    (:meth:`_run_function_calls`) and where the measurements of each inference go
    (:meth:`_collect_metrics`); :class:`~actors.OpenAILLMService` is the one trouper
    provides. The streamer closes the client when it stops.

    Each ``FunctionCallsStartedFrame`` it pushes names it (``llm``) and the actor that runs
    the calls (``tools``, :attr:`_calls_run_by`), so the context store knows where the
    follow-up inference goes.

    Args:
        client: The client requests go through.
        model: Model name.
        params: Generation parameters.
        system_instruction: Sent as a ``system`` message before the conversation's messages
            in every request (not written into the conversation); ``None``: none.
        max_image_bytes: Largest encoded image accepted from a ``VisionImageRawFrame``.
        name: Actor name.

    Raises:
        ValueError: an empty model name or system instruction.
        TypeError: ``params`` is not a ``GenerationParams``.
    """

    #: The name of the actor that runs the calls handed to :meth:`_run_function_calls`, if
    #: one does (announced in ``FunctionCallsStartedFrame.tools``).
    _calls_run_by: str | None = None

    accepts = (OpenAILLMContextFrame, LLMMessagesFrame, VisionImageRawFrame, LLMUpdateSettingsFrame)

    def __init__(
        self,
        client: ChatCompletionsClient,
        *,
        model: str,
        params: GenerationParams | None = None,
        system_instruction: str | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self._model = check_model(model)
        self._params = check_params(params)
        self._system_instruction = check_system_instruction(system_instruction)
        self._client = client
        self._max_image_bytes = max_image_bytes
        self._ttfb_reported = False

    @abc.abstractmethod
    def _run_function_calls(
        self, calls: Sequence[FunctionCallFromLLM], context: ContextSnapshot, turn: int
    ) -> None:
        """Hand the calls of one response over to be run, without waiting: it is called as
        the inference closes, also when it was interrupted (the calls then settle as
        cancelled at once). ``turn`` is the turn of the response."""

    @abc.abstractmethod
    def _collect_metrics(self, data: Sequence[MetricsData]) -> None:
        """Hand the measurements of an inference over, without waiting (whatever the
        pipeline's metrics settings; these decide only what also goes downstream)."""

    # ----------------------------------------------------------------- configuration

    @property
    def model(self) -> str:
        """The model used by the next request."""
        return self._model

    @property
    def params(self) -> GenerationParams:
        """The generation parameters used by the next request."""
        return self._params

    @property
    def system_instruction(self) -> str | None:
        """The system message sent before the conversation (``None``: none)."""
        return self._system_instruction

    @property
    def base_url(self) -> str:
        """The API root requests go to, fit to show: credentials in it are masked."""
        return self._client.base_url

    # ----------------------------------------------------------------- lifecycle

    async def on_stop(self) -> None:
        """Close the client (and the pool it made itself, if it made one)."""
        end_turn_trace(self)
        await self._client.aclose()

    # ----------------------------------------------------------------- frames

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Run an inference per input frame; apply settings updates."""
        if isinstance(frame, OpenAILLMContextFrame):
            await self._infer(frame.context)
        elif isinstance(frame, LLMMessagesFrame):
            await self._infer(ContextSnapshot(messages=frame.messages))
        elif isinstance(frame, VisionImageRawFrame):
            try:
                message = image_message(
                    frame.format,
                    frame.size,
                    frame.image,
                    frame.text,
                    max_bytes=self._max_image_bytes,
                )
            except ValueError as exc:
                # A refused image is a failed inference: its answer still ends (after the
                # error), so whoever waits for it learns that it failed instead of waiting on.
                await self.push_frame(LLMFullResponseStartFrame())
                await self.push_error(
                    f"VisionImageRawFrame rejected: {exc}",
                    exception=exc,
                    category=ErrorCategory.INVALID_REQUEST,
                )
                await self.push_frame(LLMFullResponseEndFrame(error=True))
                return
            await self._infer(ContextSnapshot(messages=(message,)))
        elif isinstance(frame, LLMUpdateSettingsFrame):
            await self._update_settings(frame.settings)
            await self.push_frame(frame, direction)

    async def _update_settings(self, settings: Mapping[str, Any]) -> None:
        values = dict(settings)
        model = values.pop("model", self._model)
        instruction = values.pop("system_instruction", self._system_instruction)
        try:
            check_model(model)
            check_system_instruction(instruction)
            params = self._params.with_updates(values) if values else self._params
        except (ValueError, TypeError) as exc:
            await self.push_error(
                f"LLMUpdateSettingsFrame rejected, nothing changed: {exc}",
                exception=exc,
                category=ErrorCategory.INVALID_REQUEST,
            )
            return
        self._model, self._params, self._system_instruction = model, params, instruction
        self.log.info("llm settings updated", model=model, changed=sorted(settings))

    # ----------------------------------------------------------------- inference

    async def _infer(self, context: ContextSnapshot) -> None:
        turn = current_turn()
        started = trio.current_time()
        stream: ChatStream | None = None
        calls: list[FunctionCallFromLLM] = []
        interrupted = failed = announced = False
        watch: InferenceWatch | None = None
        error: ChatClientError | None = None
        ttfb: list[MetricsData] | None = None  # the TTFB pushed at the first text

        def sent(request: ChatRequest) -> None:
            nonlocal watch
            if watch is None:  # a retried request is told once, as the first one
                watch = watch_inference(self, request, turn)

        await self.push_frame(LLMFullResponseStartFrame())
        try:
            async with self._open_stream(context, sent) as stream:
                # An interrupted stream closes its socket at once; what the transport had
                # buffered of its body is thrown away later, in a task of this actor.
                stream.finish_unread_body_with(self._finish_later)
                with self.on_interruption(stream.abort):
                    # On interruption the socket is shut down inside interrupt() itself: the
                    # server stops generating without waiting for this task to unwind.
                    async for text in stream.text_deltas():
                        frame = new_llm_text(text)
                        if not self.push_frame_nowait(frame):
                            await self.push_frame(frame)
                        if ttfb is None and stream.first_token_at is not None:
                            # After the first text goes out: the measurement must not delay it.
                            # (The collector gets it with the rest, in one report at the end.)
                            ttfb = self._ttfb(stream)
                            if watch is not None:
                                watch.first_token(stream)
                            await self._emit(ttfb, collect=False)
            result = stream.result()
            calls = _function_calls(result)
            if result.refusal and not result.text:
                await self.push_frame(LLMTextFrame(result.refusal))
            if calls:
                await self.push_frame(
                    FunctionCallsStartedFrame(calls, llm=self.name, tools=self._calls_run_by)
                )
                announced = True
        except trio.Cancelled:
            interrupted = True
            raise
        except ChatClientError as exc:
            failed = True
            error = exc
            # Returns once the task has the error: the end frame below leaves after it.
            await self.push_error(
                f"Error during completion: {exc}",
                exception=exc,
                category=exc.category,
            )
        finally:
            if watch is not None:
                watch.end(stream, calls if announced else (), interrupted=interrupted, error=error)
            try:
                if interrupted:
                    # Cancelled: the closing frames still go out, but never hang the teardown.
                    with trio.move_on_after(_CLOSING_PUSH_SECS, shield=True):
                        await self._close_inference(stream, started, interrupted, failed, ttfb)
                else:
                    try:
                        await self._close_inference(stream, started, interrupted, failed, ttfb)
                    except trio.Cancelled:
                        # Interrupted while the end frame waited for room downstream.
                        with trio.move_on_after(_CLOSING_PUSH_SECS, shield=True):
                            end = LLMFullResponseEndFrame(interrupted=True, error=failed)
                            await self.push_frame(end)
                        raise
            finally:
                if announced:
                    # The calls are in the conversation now: each must settle (run, or be
                    # cancelled at once by the turn scope if the turn is already over).
                    self._run_function_calls(calls, context, turn if turn is not None else 0)

    def _request(self, context: ContextSnapshot) -> ChatRequest:
        # The snapshot's own messages and tools, not get_messages()'s deep copies: the
        # request is serialised at once (in ``stream``, before any checkpoint) and never
        # changes them, so copying the whole conversation per inference bought nothing.
        messages = context.request_messages()
        if self._system_instruction is not None:
            messages = ({"role": "system", "content": self._system_instruction}, *messages)
        return ChatRequest(
            model=self._model,
            messages=messages,
            tools=context.tools or None,
            tool_choice=context.tool_choice,
            params=self._params,
        )

    def _open_stream(
        self, context: ContextSnapshot, sent: Callable[[ChatRequest], None]
    ) -> AbstractAsyncContextManager[ChatStream]:
        """The stream of ``context``'s request (``sent`` is told each request that goes out).
        With a context window, a request the server refuses as too long is trimmed harder and
        sent once more (see ``ContextWindow``)."""
        if context.window_start is None:
            request = self._request(context)
            sent(request)
            return self._client.stream(request)
        return self._windowed_stream(context, sent)

    @contextlib.asynccontextmanager
    async def _windowed_stream(
        self, context: ContextSnapshot, sent: Callable[[ChatRequest], None]
    ) -> AsyncIterator[ChatStream]:
        retried = False
        while True:
            opened = False
            request = self._request(context)
            sent(request)
            try:
                async with self._client.stream(request) as stream:
                    opened = True
                    yield stream
                return
            except ContextLengthExceededError as exc:
                start = context.window_start
                if opened or retried or start is None:
                    raise
                harder = harder_start(context.messages, start, _ESTIMATE.estimate_message)
                if harder is None:
                    raise
                retried = True
                self.log.warning(
                    "context window: the server refused the request as too long; "
                    "trimming harder and retrying once",
                    error=str(exc),
                    start=start,
                    new_start=harder,
                )
                context = context.with_window(harder, context.summary)

    def _finish_later(self, finish: Callable[[], Awaitable[None]]) -> None:
        self.create_task(finish, name=f"{self.name}:discard unread body")

    def _ttfb(self, stream: ChatStream | None) -> list[MetricsData]:
        """The TTFB of ``stream`` as metrics data, if it has one to report."""
        if stream is None or stream.first_token_at is None or stream.request_started_at is None:
            return []
        if metrics_settings(self).report_only_initial_ttfb and self._ttfb_reported:
            return []
        self._ttfb_reported = True
        value = stream.first_token_at - stream.request_started_at
        return [TTFBMetricsData(self.name, self._model, value=value)]

    async def _close_inference(
        self,
        stream: ChatStream | None,
        started: float,
        interrupted: bool,
        failed: bool,
        ttfb: list[MetricsData] | None,
    ) -> None:
        # A stream without text (tool calls only, or interrupted before its first text)
        # reports its TTFB here; one that pushed it at its first text gives it to the
        # collector here, with the rest (one report per inference).
        data: list[MetricsData] = self._ttfb(stream) if ttfb is None else []
        usage = stream.usage if stream is not None else None
        if usage is not None:
            data.append(LLMUsageMetricsData(self.name, self._model, value=_token_usage(usage)))
        data.append(
            ProcessingMetricsData(self.name, self._model, value=trio.current_time() - started)
        )
        if ttfb:
            self._collect_metrics([*ttfb, *data])
        await self._emit(data, collect=not ttfb)
        await self.push_frame(LLMFullResponseEndFrame(interrupted=interrupted, error=failed))

    async def _emit(self, data: list[MetricsData], *, collect: bool = True) -> None:
        """Push ``data`` downstream (as the metrics settings say) and, with ``collect``,
        hand it to the metrics collector."""
        if collect:
            self._collect_metrics(data)
        timing = [d for d in data if not isinstance(d, LLMUsageMetricsData)]
        usage = [d for d in data if isinstance(d, LLMUsageMetricsData)]
        settings = metrics_settings(self)
        out = (timing if settings.enable_metrics else []) + (
            usage if settings.enable_usage_metrics else []
        )
        if out:
            await self.push_frame(MetricsFrame(out))


def _token_usage(usage: Usage) -> LLMTokenUsage:
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
    reasoning = (
        usage.completion_tokens_details.reasoning_tokens
        if usage.completion_tokens_details
        else None
    )
    return LLMTokenUsage(
        prompt_tokens=usage.prompt_tokens or 0,
        completion_tokens=usage.completion_tokens or 0,
        total_tokens=usage.total_tokens or 0,
        cache_read_input_tokens=cached,
        reasoning_tokens=reasoning,
    )


def _function_calls(result: StreamResult) -> list[FunctionCallFromLLM]:
    calls = []
    for i, call in enumerate(result.tool_calls):
        calls.append(
            FunctionCallFromLLM(
                function_name=call.name,
                tool_call_id=call.id or f"call_{result.id or 'x'}_{i}",
                arguments=call.arguments if call.arguments is not None else {},
                arguments_json=call.arguments_json or "{}",
                arguments_error=call.parse_error,
            )
        )
    return calls
