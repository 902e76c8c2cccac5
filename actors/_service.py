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

import ssl
from collections.abc import Mapping, Sequence

import httpx
import trio

from runtime import MetricsData

from ._aggregators import (
    LLMAssistantContextAggregator,
    LLMUserAggregatorParams,
    LLMUserContextAggregator,
    OpenAIContextAggregatorPair,
)
from ._context import DEFAULT_MAX_IMAGE_BYTES, ContextSnapshot, OpenAILLMContext
from ._frames import FunctionCallFromLLM
from ._llm import OpenAILLMStreamer, check_model, check_params
from ._metrics import MetricsCollector
from ._storage import DEFAULT_LEASE_TTL
from ._store import ContextStore
from ._tools import FunctionHandler, FunctionRegistration, RunFunctionCallsRequest, ToolExecutor
from .client import (
    DEFAULT_MAX_EVENT_BYTES,
    ChatCompletionsClient,
    GenerationParams,
    RetryPolicy,
    Timeouts,
)
from .storage import ConversationStorage

__all__ = ["OpenAILLMService"]

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


class OpenAILLMService(OpenAILLMStreamer):
    """Streams chat completions from OpenAI or any OpenAI-compatible server, runs the tool
    calls the model asks for and collects the metrics of every inference.

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
        name: Actor name (also the prefix of its companions' names).

    Attributes:
        executor: The :class:`~actors.ToolExecutor` (``<name>:tools``).
        metrics: The :class:`~actors.MetricsCollector` (``<name>:metrics``).
    """

    #: The generation parameters, validated against their documented ranges.
    InputParams = GenerationParams

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
        check_model(model)
        params = check_params(params)
        if service_tier is not None:
            params = params.with_updates({"service_tier": service_tier})
        #: The pool this service made for itself (closed in ``on_stop``), if none was given.
        self._own_http = _default_http_client() if http_client is None else None
        client = ChatCompletionsClient(
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
        super().__init__(
            client, model=model, params=params, max_image_bytes=max_image_bytes, name=name
        )
        self.executor = ToolExecutor(
            self, default_timeout_secs=function_call_timeout_secs, name=f"{self.name}:tools"
        )
        self.metrics = MetricsCollector(name=f"{self.name}:metrics")
        # Both run beside the service, started and stopped with it; the executor's frames
        # leave through the service's own links.
        self.add_companion(self.executor)
        self.add_companion(self.metrics)

    # ----------------------------------------------------------------- configuration

    def register_function(
        self,
        function_name: str | None,
        handler: FunctionHandler,
        *,
        cancel_on_interruption: bool = True,
        timeout_secs: float | None = None,
        trio_native: bool = False,
    ) -> None:
        """Register ``handler`` for calls of ``function_name`` (``None``: every function
        without a handler of its own). Registering again replaces the handler. The registry
        is the tool executor's.

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

        Raises:
            TypeError: ``handler`` is not an ``async def`` function (or an object whose
                ``__call__`` is one, or a ``functools.partial`` of one).
            ValueError: a bad name or timeout.
        """
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
        )
        suffix = self.name.rsplit("#", 1)[-1] if "#" in self.name else self.name
        return OpenAIContextAggregatorPair(
            LLMUserContextAggregator(store, user_params, name=f"UserAggregator#{suffix}"),
            LLMAssistantContextAggregator(store, name=f"AssistantAggregator#{suffix}"),
            store,
        )

    # ----------------------------------------------------------------- companions

    def _run_function_calls(
        self, calls: Sequence[FunctionCallFromLLM], context: ContextSnapshot, turn: int
    ) -> None:
        self.executor.ref.tell(RunFunctionCallsRequest(calls, context, batch_turn=turn))

    def _collect_metrics(self, data: Sequence[MetricsData]) -> None:
        self.metrics.offer(list(data))

    # ----------------------------------------------------------------- lifecycle

    async def on_stop(self) -> None:
        """Close the client, then the HTTP connection pool (unless it was given)."""
        await super().on_stop()
        own, self._own_http = self._own_http, None
        if own is not None:
            with trio.CancelScope(shield=True):
                await own.aclose()
