"""``OpenAILLMService``: the public LLM service, composed of the streamer and its companions.

:class:`~actors._llm.OpenAILLMStreamer` streams completions and knows nothing else. This
module builds the service the seed describes around it:

* the chat-completions client, from the service's options, over a connection pool of its own
  (closed when the service stops) that shares one TLS context with every other service;
* the :class:`~actors.ToolExecutor`, which owns the function registry
  (``register_function`` and its siblings delegate to it) and runs the calls the streamer
  hands over;
* the :class:`~actors.MetricsCollector`, which gets every measurement;
* the aggregator factory, ``create_context_aggregator``: the context store it makes
  addresses this service and its executor by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import httpx

from runtime import MetricsData

from ._aggregators import (
    LLMAssistantContextAggregator,
    LLMUserAggregatorParams,
    LLMUserContextAggregator,
    OpenAIContextAggregatorPair,
)
from ._context import DEFAULT_MAX_IMAGE_BYTES, ContextSnapshot, OpenAILLMContext
from ._frames import FunctionCallFromLLM
from ._handlers import FunctionHandler, FunctionRegistration
from ._llm import OpenAILLMStreamer, check_model, check_params
from ._metrics import MetricsCollector
from ._settings import LLMSettings
from ._storage import DEFAULT_LEASE_TTL
from ._store import ContextStore
from ._tools import RunFunctionCallsRequest, ToolExecutor
from ._window import ContextWindow, TokenCounter, message_text
from .client import (
    DEFAULT_MAX_EVENT_BYTES,
    ChatCompletionsClient,
    ChatRequest,
    GenerationParams,
    RetryPolicy,
    Timeouts,
)
from .storage import ConversationStorage

__all__ = ["OpenAILLMService"]

#: Pipecat's first-token deadline when ``retry_on_timeout=True`` comes without
#: ``retry_timeout_secs``.
_PIPECAT_RETRY_TIMEOUT_SECS = 5.0

#: Pipecat 1.x constructor options trouper has no switch for: the value that matches what
#: trouper always does (accepted), and what to know instead.
_PIPECAT_OPTIONS: dict[str, tuple[object, str]] = {
    "run_in_parallel": (
        True,
        "trouper always runs the calls of one response concurrently; a handler that must not "
        "overlap another can hold a trio.Lock",
    ),
    "group_parallel_tools": (
        True,
        "trouper always runs one follow-up inference per batch of calls, once all settled",
    ),
    "enable_async_tool_cancellation": (
        False,
        "the model cannot cancel calls here; register a long call with "
        "cancel_on_interruption=True (the user's interruption cancels it) or timeout_secs",
    ),
}


def _check_pipecat_options(options: Mapping[str, object]) -> None:
    """Accept the Pipecat options that ask for what trouper does anyway; refuse the others
    with what to do instead."""
    for key, value in options.items():
        known = _PIPECAT_OPTIONS.get(key)
        if known is None:
            raise TypeError(
                f"OpenAILLMService got an unexpected keyword argument {key!r} (see "
                "docs/pipecat.md for the Pipecat options trouper accepts)"
            )
        accepted, why = known
        if value != accepted:
            raise ValueError(f"OpenAILLMService({key}={value!r}) is not supported: {why}")


def _timeouts_and_retry(
    timeouts: Timeouts | None,
    retry: RetryPolicy | None,
    retry_timeout_secs: float | None,
    retry_on_timeout: bool | None,
) -> tuple[Timeouts | None, RetryPolicy | None]:
    """Pipecat's ``retry_timeout_secs``/``retry_on_timeout`` as trouper's first-token
    deadline and timeout retries (see ``OpenAILLMService``).

    Raises:
        ValueError: one of them given together with the trouper option it sets.
    """
    if retry_on_timeout and retry_timeout_secs is None:
        retry_timeout_secs = _PIPECAT_RETRY_TIMEOUT_SECS
    if retry_timeout_secs is not None:
        if timeouts is not None:
            raise ValueError(
                "give the first-token deadline once: retry_timeout_secs is "
                "Timeouts.first_token; set it in timeouts= or drop retry_timeout_secs"
            )
        timeouts = Timeouts(first_token=retry_timeout_secs)
    if retry_on_timeout is not None:
        if retry is not None:
            raise ValueError(
                "give timeout retries once: retry_on_timeout is RetryPolicy.retry_timeouts; "
                "set it in retry= or drop retry_on_timeout"
            )
        if not isinstance(retry_on_timeout, bool):
            raise TypeError(f"retry_on_timeout must be a bool, got {retry_on_timeout!r}")
        retry = attrs.evolve(RetryPolicy(), retry_timeouts=retry_on_timeout)
    return timeouts, retry


#: What the summary request asks the model to do (the ``"summarize"`` strategy).
SUMMARY_INSTRUCTION = (
    "You summarise conversations. Write a short summary of the conversation below: the "
    "facts, names, numbers, decisions and open questions a reader needs to continue it. "
    "Write plain sentences, no preamble."
)


def _transcript(messages: Sequence[Mapping[str, Any]], previous: str | None, max_chars: int) -> str:
    """The left-out messages as text for the summary request (the most recent part when
    they are longer than ``max_chars``), after the previous summary."""
    lines = []
    for message in messages:
        text, images = message_text(message)
        if images:
            text = (text + f" [{images} image(s)]").strip()
        if text:
            lines.append(f"{message.get('role')}: {text}")
    body = "\n".join(lines)
    if len(body) > max_chars:
        body = "..." + body[-max_chars:]
    if previous:
        return f"Summary so far: {previous}\n\nThen:\n{body}"
    return body


class OpenAILLMService(OpenAILLMStreamer):
    """Streams chat completions from OpenAI or any OpenAI-compatible server, runs the tool
    calls the model asks for and collects the metrics of every inference.

    Pipecat 1.x's ``settings=``, ``retry_timeout_secs`` and ``retry_on_timeout`` are
    accepted too (see ``docs/pipecat.md``).

    Args:
        model: Model name (default ``gpt-4.1``).
        api_key: API key (default: ``OPENAI_API_KEY``; none for local servers).
        base_url: API root (default: ``OPENAI_BASE_URL``, else ``https://api.openai.com/v1``).
        organization: ``OpenAI-Organization`` header.
        project: ``OpenAI-Project`` header.
        default_headers: Extra headers for every request.
        service_tier: OpenAI service tier (also settable in ``params``).
        params: Generation parameters (``OpenAILLMService.InputParams``), validated.
        settings: ``OpenAILLMService.Settings(...)`` (Pipecat 1.x): the model, a system
            instruction (sent as a ``system`` message before the conversation's messages in
            every request) and generation parameters; what it sets wins over ``model`` and
            ``params``.
        timeouts: Connect, first-token, stream-idle and total timeouts.
        retry: Retry policy (connection errors, 408/409/429/5xx; never after content).
        retry_timeout_secs: Pipecat 1.x: how long an attempt may produce no output; it is
            ``Timeouts.first_token`` (not with ``timeouts``).
        retry_on_timeout: Pipecat 1.x: ``True`` retries an attempt that produced no output
            in time (with a 5 s deadline unless ``retry_timeout_secs`` says otherwise),
            ``False`` makes that timeout end the turn with an error; it is
            ``RetryPolicy.retry_timeouts`` (not with ``retry``).
        function_call_timeout_secs: Default timeout of function calls (``None``: none).
        max_image_bytes: Largest encoded image accepted from a ``VisionImageRawFrame``.
        max_event_bytes: Most bytes one server-sent event of the answer may hold (default
            8 MiB); past it the turn fails with ``EventTooLargeError`` instead of the stream
            holding an endless line in memory.
        http_client: An ``httpx.AsyncClient`` to share (not closed by the service). Without
            one, the service makes its own pool at its first request and closes it when it
            stops.
        context_window: How many tokens a request may hold (off by default: every request
            holds the whole conversation). The stores of ``create_context_aggregator`` then
            leave the oldest whole turns out of the requests, or summarise them, while the
            conversation keeps them; tokens are counted with the server's ``/tokenize``
            when it has one (see ``docs/long-conversations.md``).
        name: Actor name (also the prefix of its companions' names).
        **pipecat_options: Pipecat 1.x options with no trouper switch, accepted with the value
            that is trouper's behaviour: ``run_in_parallel=True``,
            ``group_parallel_tools=True``, ``enable_async_tool_cancellation=False``.

    Raises:
        ValueError: an invalid model, setting or timeout; an option given twice (its Pipecat
            and its trouper form); a Pipecat option asking for what trouper does not do.
        TypeError: an argument of the wrong type, or an unknown keyword argument.

    Attributes:
        executor: The :class:`~actors.ToolExecutor` (``<name>:tools``).
        metrics: The :class:`~actors.MetricsCollector` (``<name>:metrics``).
    """

    #: The generation parameters, validated against their documented ranges.
    InputParams = GenerationParams
    #: The service's settings, Pipecat 1.x style (model, system instruction, parameters).
    Settings = LLMSettings

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
        settings: LLMSettings | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        retry_timeout_secs: float | None = None,
        retry_on_timeout: bool | None = None,
        function_call_timeout_secs: float | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        http_client: httpx.AsyncClient | None = None,
        context_window: ContextWindow | None = None,
        name: str | None = None,
        **pipecat_options: object,
    ) -> None:
        _check_pipecat_options(pipecat_options)
        if context_window is not None and not isinstance(context_window, ContextWindow):
            raise TypeError(
                f"context_window must be a ContextWindow, got {type(context_window).__name__}"
            )
        check_model(model)
        params = check_params(params)
        system_instruction: str | None = None
        if settings is not None:
            if not isinstance(settings, LLMSettings):
                raise TypeError(
                    f"settings must be OpenAILLMService.Settings, got {type(settings).__name__}"
                )
            model = settings.model or model
            params = params.with_updates(settings.generation_updates())
            system_instruction = settings.system_instruction
        if service_tier is not None:
            params = params.with_updates({"service_tier": service_tier})
        timeouts, retry = _timeouts_and_retry(timeouts, retry, retry_timeout_secs, retry_on_timeout)
        client = ChatCompletionsClient(
            api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
            timeouts=timeouts,
            retry=retry,
            http_client=http_client,
            max_event_bytes=max_event_bytes,
        )
        super().__init__(
            client,
            model=model,
            params=params,
            system_instruction=system_instruction,
            max_image_bytes=max_image_bytes,
            name=name,
        )
        self.executor = ToolExecutor(
            self, default_timeout_secs=function_call_timeout_secs, name=f"{self.name}:tools"
        )
        self._calls_run_by = self.executor.name
        self.metrics = MetricsCollector(name=f"{self.name}:metrics")
        self._context_window = context_window
        #: Counts the tokens of the conversations' requests (shared by this service's stores).
        self._token_counter: TokenCounter | None = (
            None if context_window is None else TokenCounter(client.tokenize)
        )
        # Both run beside the service, started and stopped with it; the executor's frames
        # leave through the service's own links.
        self.add_companion(self.executor)
        self.add_companion(self.metrics)

    # ----------------------------------------------------------------- configuration

    @property
    def context_window(self) -> ContextWindow | None:
        """The context window of the requests of this service's conversations (``None``:
        off)."""
        return self._context_window

    def register_function(
        self,
        function_name: str | None,
        handler: FunctionHandler,
        *,
        cancel_on_interruption: bool = True,
        timeout_secs: float | None = None,
        trio_native: bool = False,
        cancellable_by_llm: bool = False,
    ) -> None:
        """Register ``handler`` for calls of ``function_name`` (``None``: every function
        without a handler of its own). Registering again replaces the handler. The registry
        is the tool executor's; a handler registered here wins over one that came with the
        tool's schema (``FunctionSchema(handler=...)``, a plain function).

        Args:
            function_name: The function's name, or ``None`` for the catch-all.
            handler: ``async def handler(params: FunctionCallParams) -> None`` that calls
                ``await params.result_callback(result)``.
            cancel_on_interruption: Cancel running calls when the user interrupts (default).
                ``False``: the call keeps running and its result lands in the context later.
            timeout_secs: Cancel the call after this long (its result then says it timed out
                and the LLM runs again).
            trio_native: Inside an asyncio application (``runtime.AsyncioBridge``), handlers
                run as asyncio tasks on its loop; ``True`` runs this one in trio instead (it
                awaits trio code). Without a bridge every handler runs in trio.
            cancellable_by_llm: Pipecat 1.x; only ``False`` (the model cannot cancel calls
                here).

        Raises:
            TypeError: ``handler`` is not an ``async def`` function (or an object whose
                ``__call__`` is one, or a ``functools.partial`` of one).
            ValueError: a bad name or timeout, or ``cancellable_by_llm=True``.
        """
        if cancellable_by_llm:
            raise ValueError(
                f"register_function({function_name!r}, cancellable_by_llm=True) is not "
                "supported: the model cannot cancel calls here; keep "
                "cancel_on_interruption=True (the user's interruption cancels the call) or "
                "give timeout_secs"
            )
        self.executor.register(
            FunctionRegistration(
                function_name, handler, cancel_on_interruption, timeout_secs, trio_native
            )
        )

    def unregister_function(self, function_name: str | None) -> None:
        """Remove a handler (no error if there is none)."""
        self.executor.unregister(function_name)

    def has_function(self, function_name: str) -> bool:
        """Whether calls of ``function_name`` have a handler (its own or the catch-all)."""
        return self.executor.has_function(function_name)

    def create_context_aggregator(
        self,
        context: OpenAILLMContext,
        *,
        user_params: LLMUserAggregatorParams | None = None,
        storage: ConversationStorage | None = None,
        conversation_id: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> OpenAIContextAggregatorPair:
        """The user/assistant aggregator pair for ``context``, sharing one context store.

        The store owns ``context`` while the session runs and sends follow-up inferences
        (after tool calls) to this service.

        With ``storage`` (an open :class:`~actors.storage.ConversationStorage`) and
        ``conversation_id`` the conversation is persisted: when the session starts, the
        store leases the conversation and, if it is stored, resumes it (its messages
        replace those of ``context``; the tools and tool choice of ``context`` are kept);
        else it stores ``context`` as its beginning. Every change is then written before
        the store answers for it. See ``docs/context.md``::

            async with conversation_storage("conversations.db") as storage:
                context = OpenAILLMContext(messages=[system], tools=tools)
                pair = llm.create_context_aggregator(
                    context, storage=storage, conversation_id="user-42"
                )

        Args:
            context: The conversation (for a new one: its beginning).
            user_params: The user aggregator's parameters.
            storage: Where to persist the conversation.
            conversation_id: Its id in ``storage``.
            lease_ttl: Seconds the session's lease on the conversation lives unless renewed
                (how long a crashed process keeps others from taking it over).

        Raises:
            TypeError: ``context`` is not an ``OpenAILLMContext``, or ``storage`` is not a
                ``ConversationStorage`` (the removed ``SQLiteContextStorage`` included).
            ValueError: ``storage`` without ``conversation_id``, or the reverse.
        """
        if not isinstance(context, OpenAILLMContext):
            raise TypeError(
                f"create_context_aggregator needs an OpenAILLMContext, got {type(context).__name__}"
            )
        store = ContextStore(
            context,
            self.name,
            tools=self.executor.name,
            name=f"{self.name}:context",
            storage=storage,
            conversation_id=conversation_id,
            lease_ttl=lease_ttl,
            window=self._context_window,
            counter=self._token_counter,
            summarizer=self._summarize,
            system_instruction=self.system_instruction,
        )
        suffix = self.name.rsplit("#", 1)[-1] if "#" in self.name else self.name
        return OpenAIContextAggregatorPair(
            LLMUserContextAggregator(store, user_params, name=f"UserAggregator#{suffix}"),
            LLMAssistantContextAggregator(store, name=f"AssistantAggregator#{suffix}"),
            store,
        )

    async def _summarize(
        self, messages: Sequence[Mapping[str, Any]], previous: str | None, max_tokens: int
    ) -> str:
        """The summary of ``messages`` (after the ``previous`` one), made by this service's
        model with one request."""
        window = self._context_window
        max_chars = 6000 if window is None else max(1000, window.budget * 2)
        request = ChatRequest(
            model=self.model,
            messages=(
                {"role": "system", "content": SUMMARY_INSTRUCTION},
                {"role": "user", "content": _transcript(messages, previous, max_chars)},
            ),
            params=self.params.with_updates(
                {
                    "max_tokens": max_tokens,
                    "max_completion_tokens": None
                    if self.params.max_completion_tokens is None
                    else max_tokens,
                }
            ),
        )
        result = await self._client.complete(request)
        return result.text or ""

    # ----------------------------------------------------------------- companions

    def _run_function_calls(
        self, calls: Sequence[FunctionCallFromLLM], context: ContextSnapshot, turn: int
    ) -> None:
        self.executor.ref.tell(RunFunctionCallsRequest(calls, context, batch_turn=turn))

    def _collect_metrics(self, data: Sequence[MetricsData]) -> None:
        self.metrics.offer(list(data))
