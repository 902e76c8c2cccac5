"""``OpenAILLMService``: the LLM streamer actor.

It turns each :class:`OpenAILLMContextFrame` (or ``LLMMessagesFrame``/``VisionImageRawFrame``)
into one streamed chat completion: exactly one ``LLMFullResponseStartFrame``/
``LLMFullResponseEndFrame`` pair, an ``LLMTextFrame`` per content delta, and, when the model
asks for tools, one ``FunctionCallsStartedFrame`` followed by the calls running concurrently
in its tool executor. The stream runs inside the turn: an interruption cancels it at once,
closes its socket, and still emits the end frame and the usage seen so far.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import trio

from runtime import (
    Actor,
    ErrorCategory,
    Frame,
    FrameDirection,
    MetricsData,
    MetricsFrame,
    ProcessingMetricsData,
    TTFBMetricsData,
    current_turn,
)

from ._aggregators import (
    LLMAssistantContextAggregator,
    LLMUserAggregatorParams,
    LLMUserContextAggregator,
    OpenAIContextAggregatorPair,
)
from ._context import DEFAULT_MAX_IMAGE_BYTES, ContextSnapshot, OpenAILLMContext, image_message
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
    VisionImageRawFrame,
)
from ._metrics import MetricsCollector
from ._params import metrics_settings
from ._storage import SQLiteContextStorage
from ._store import ContextStore
from ._tools import (
    FunctionHandler,
    FunctionRegistration,
    RunFunctionCallsRequest,
    ToolExecutor,
    check_handler,
)
from .client import (
    DEFAULT_MAX_EVENT_BYTES,
    ChatClientError,
    ChatCompletionsClient,
    ChatRequest,
    GenerationParams,
    RetryPolicy,
    Timeouts,
)

if TYPE_CHECKING:
    from .client import ChatStream, StreamResult, Usage

__all__ = ["OpenAILLMService"]

_CATEGORIES = {
    "auth": ErrorCategory.AUTHENTICATION,
    "rate_limit": ErrorCategory.RATE_LIMIT,
    "server": ErrorCategory.SERVER,
    "invalid_request": ErrorCategory.INVALID_REQUEST,
    "connectivity": ErrorCategory.CONNECTIVITY,
    "timeout": ErrorCategory.TIMEOUT,
}

#: How long the closing frames of an interrupted inference may wait for room downstream.
_CLOSING_PUSH_SECS = 2.0

_shared_tls: ssl.SSLContext | None = None


def _default_http_client() -> httpx.AsyncClient:
    """The pool of a service that was given no ``http_client``: the chat client's own default
    (same limits, no redirects), but with one TLS context shared by the whole process.

    httpx builds a fresh TLS context per client, loading the CA bundle each time: ~30-60 ms
    of CPU and ~1 MB of RSS per service, which dominated the cost of many concurrent
    sessions. The context is built like httpx's default (``verify=True``, honouring
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), once, when the first service is made.
    """
    global _shared_tls
    if _shared_tls is None:
        _shared_tls = httpx.create_ssl_context()
    return httpx.AsyncClient(
        verify=_shared_tls,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        follow_redirects=False,
    )


class OpenAILLMService(Actor[Frame]):
    """Streams chat completions from OpenAI or any OpenAI-compatible server.

    Args:
        model: Model name (default ``gpt-4.1``).
        api_key: API key (default: ``OPENAI_API_KEY``; none for local servers).
        base_url: API root (default: ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``).
        organization: ``OpenAI-Organization`` header.
        project: ``OpenAI-Project`` header.
        default_headers: Extra headers for every request.
        service_tier: OpenAI service tier (also settable in ``params``).
        params: Generation parameters (``OpenAILLMService.InputParams``), validated.
        timeouts: Connect, first-token, stream-idle and total timeouts.
        retry: Retry policy (connection errors, 408/409/429/5xx; never after content).
        function_call_timeout_secs: Default timeout of function calls (``None``: none).
        max_image_bytes: Largest encoded image accepted from a ``VisionImageRawFrame``.
        max_event_bytes: Most bytes one server-sent event of the answer may hold (default
            8 MiB); past it the turn fails with ``EventTooLargeError`` instead of the stream
            holding an endless line in memory.
        http_client: An ``httpx.AsyncClient`` to share (not closed by the service).
        name: Actor name.
    """

    #: The generation parameters, validated against their documented ranges.
    InputParams = GenerationParams

    accepts = (OpenAILLMContextFrame, LLMMessagesFrame, VisionImageRawFrame, LLMUpdateSettingsFrame)

    def __init__(
        self,
        *,
        model: str = "gpt-4.1",
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        service_tier: str | None = None,
        params: GenerationParams | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        function_call_timeout_secs: float | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        http_client: httpx.AsyncClient | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not isinstance(model, str) or not model.strip():
            raise ValueError("model must be a non-empty string, e.g. 'gpt-4o-mini'")
        if params is not None and not isinstance(params, GenerationParams):
            raise TypeError(
                f"params must be OpenAILLMService.InputParams, got {type(params).__name__}"
            )
        params = params or GenerationParams()
        if service_tier is not None:
            params = params.with_updates({"service_tier": service_tier})
        self._model = model
        self._params = params
        #: The pool this service made for itself (closed in ``on_stop``), if none was given.
        self._own_http = _default_http_client() if http_client is None else None
        self._client = ChatCompletionsClient(
            api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
            timeouts=timeouts,
            retry=retry,
            http_client=http_client if http_client is not None else self._own_http,
            max_event_bytes=max_event_bytes,
        )
        self._max_image_bytes = max_image_bytes
        self._registrations: dict[str | None, FunctionRegistration] = {}
        self.executor = ToolExecutor(
            self._registrations,
            default_timeout_secs=function_call_timeout_secs,
            name=f"{self.name}:tools",
        )
        self.metrics = MetricsCollector(name=f"{self.name}:metrics")
        # Both run beside the service, started and stopped with it; the executor's frames
        # leave through the service's own links.
        self.add_companion(self.executor)
        self.add_companion(self.metrics)
        self._ttfb_reported = False

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
    def base_url(self) -> str:
        """The API root requests go to, fit to show: credentials in it are masked."""
        return self._client.base_url

    def register_function(
        self,
        function_name: str | None,
        handler: FunctionHandler,
        *,
        cancel_on_interruption: bool = True,
        timeout_secs: float | None = None,
    ) -> None:
        """Register ``handler`` for calls of ``function_name`` (``None``: every function
        without a handler of its own). Registering again replaces the handler.

        Args:
            function_name: The function's name, or ``None`` for the catch-all.
            handler: ``async def handler(params: FunctionCallParams) -> None`` that calls
                ``await params.result_callback(result)``.
            cancel_on_interruption: Cancel running calls when the user interrupts (default).
                ``False``: the call keeps running and its result lands in the context later.
            timeout_secs: Cancel the call after this long (its result then says it timed out
                and the LLM runs again).

        Raises:
            TypeError: ``handler`` is not an ``async def`` function (or an object whose
                ``__call__`` is one, or a ``functools.partial`` of one).
            ValueError: a bad name or timeout.
        """
        check_handler(function_name, handler)
        if function_name is not None and (not isinstance(function_name, str) or not function_name):
            raise ValueError("function_name must be a non-empty string or None (catch-all)")
        if timeout_secs is not None and not timeout_secs > 0:
            raise ValueError(f"timeout_secs must be positive, got {timeout_secs!r}")
        self._registrations[function_name] = FunctionRegistration(
            function_name, handler, cancel_on_interruption, timeout_secs
        )

    def unregister_function(self, function_name: str | None) -> None:
        """Remove a handler (no error if there is none)."""
        self._registrations.pop(function_name, None)

    def has_function(self, function_name: str) -> bool:
        """Whether calls of ``function_name`` have a handler (its own or the catch-all)."""
        return function_name in self._registrations or None in self._registrations

    def create_context_aggregator(
        self,
        context: OpenAILLMContext,
        *,
        user_params: LLMUserAggregatorParams | None = None,
        storage: SQLiteContextStorage | None = None,
        conversation_id: str | None = None,
    ) -> OpenAIContextAggregatorPair:
        """The user/assistant aggregator pair for ``context``, sharing one context store.

        The store owns ``context`` while the session runs and sends follow-up inferences
        (after tool calls) to this service. With ``storage`` and ``conversation_id`` it also
        writes the conversation to ``storage`` after every change (resume it later with
        ``storage.load(conversation_id)``).

        Raises:
            TypeError: ``context`` is not an ``OpenAILLMContext``.
            ValueError: ``storage`` without ``conversation_id``, or the reverse.
        """
        if not isinstance(context, OpenAILLMContext):
            raise TypeError(
                f"create_context_aggregator needs an OpenAILLMContext, got {type(context).__name__}"
            )
        store = ContextStore(
            context,
            self,
            name=f"{self.name}:context",
            storage=storage,
            conversation_id=conversation_id,
        )
        suffix = self.name.rsplit("#", 1)[-1] if "#" in self.name else self.name
        return OpenAIContextAggregatorPair(
            LLMUserContextAggregator(store, user_params, name=f"UserAggregator#{suffix}"),
            LLMAssistantContextAggregator(store, name=f"AssistantAggregator#{suffix}"),
            store,
        )

    # ----------------------------------------------------------------- lifecycle

    async def on_stop(self) -> None:
        """Close the HTTP connection pool (unless it was given to the service)."""
        await self._client.aclose()
        own, self._own_http = self._own_http, None
        if own is not None:
            with trio.CancelScope(shield=True):
                await own.aclose()

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
        try:
            if not isinstance(model, str) or not model.strip():
                raise ValueError(f"model must be a non-empty string, got {model!r}")
            params = self._params.with_updates(values) if values else self._params
        except (ValueError, TypeError) as exc:
            await self.push_error(
                f"LLMUpdateSettingsFrame rejected, nothing changed: {exc}",
                exception=exc,
                category=ErrorCategory.INVALID_REQUEST,
            )
            return
        self._model, self._params = model, params
        self.log.info("llm settings updated", model=model, changed=sorted(settings))

    # ----------------------------------------------------------------- inference

    async def _infer(self, context: ContextSnapshot) -> None:
        turn = current_turn()
        started = trio.current_time()
        stream: ChatStream | None = None
        calls: list[FunctionCallFromLLM] = []
        interrupted = failed = announced = False
        ttfb_sent = False
        await self.push_frame(LLMFullResponseStartFrame())
        try:
            # The snapshot's own messages and tools, not get_messages()'s deep copies: the
            # request is serialised at once (in ``stream``, before any checkpoint) and never
            # changes them, so copying the whole conversation per inference bought nothing.
            request = ChatRequest(
                model=self._model,
                messages=context.messages,
                tools=context.tools or None,
                tool_choice=context.tool_choice,
                params=self._params,
            )
            async with self._client.stream(request) as stream:
                with self.on_interruption(stream.abort):
                    # On interruption the socket is shut down inside interrupt() itself: the
                    # server stops generating without waiting for this task to unwind.
                    async for text in stream.text_deltas():
                        await self.push_frame(LLMTextFrame(text))
                        if not ttfb_sent and stream.first_token_at is not None:
                            # After the first text goes out: the measurement must not delay it.
                            ttfb_sent = True
                            await self._emit(self._ttfb(stream))
            result = stream.result()
            calls = _function_calls(result)
            if result.refusal and not result.text:
                await self.push_frame(LLMTextFrame(result.refusal))
            if calls:
                await self.push_frame(FunctionCallsStartedFrame(calls))
                announced = True
        except trio.Cancelled:
            interrupted = True
            raise
        except ChatClientError as exc:
            failed = True
            # Returns once the task has the error: the end frame below leaves after it.
            await self.push_error(
                f"Error during completion: {exc}",
                exception=exc,
                category=_CATEGORIES.get(exc.category, ErrorCategory.UNKNOWN),
            )
        finally:
            try:
                if interrupted:
                    # Cancelled: the closing frames still go out, but never hang the teardown.
                    with trio.move_on_after(_CLOSING_PUSH_SECS, shield=True):
                        await self._close_inference(stream, started, interrupted, failed, ttfb_sent)
                else:
                    try:
                        await self._close_inference(stream, started, interrupted, failed, ttfb_sent)
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
                    self.executor.ref.tell(
                        RunFunctionCallsRequest(
                            calls, context, self, batch_turn=turn if turn is not None else 0
                        )
                    )

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
        ttfb_sent: bool,
    ) -> None:
        # A stream without text (tool calls only, or interrupted before its first text)
        # reports its TTFB here.
        data: list[MetricsData] = [] if ttfb_sent else self._ttfb(stream)
        usage = stream.usage if stream is not None else None
        if usage is not None:
            data.append(LLMUsageMetricsData(self.name, self._model, value=_token_usage(usage)))
        data.append(
            ProcessingMetricsData(self.name, self._model, value=trio.current_time() - started)
        )
        await self._emit(data)
        await self.push_frame(LLMFullResponseEndFrame(interrupted=interrupted, error=failed))

    async def _emit(self, data: list[MetricsData]) -> None:
        self.metrics.offer(data)
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
