"""The streaming chat-completions client and the stream it returns.

Structure: :meth:`ChatCompletionsClient.stream` returns a :class:`ChatStream`, an async context
manager that owns the HTTP response. Everything runs in the caller's task: no task is spawned, so
when the caller is cancelled (or leaves the ``async with`` early) the response is closed in
``__aexit__`` and the socket is closed or returned to the pool before the ``async with`` statement
finishes.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import httpx
import orjson
import structlog
import trio

from ._errors import (
    APIConnectionError,
    APITimeoutError,
    ChatClientError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    InvalidParameterError,
    ServerDisconnectedError,
    StreamIdleTimeoutError,
    TotalTimeoutError,
    not_event_stream_error,
    status_error,
)
from ._parser import ChunkStreamParser
from ._pool import Sender
from ._retry import RetryDecision, RetryPolicy, parse_retry_after
from ._sse import DEFAULT_MAX_EVENT_BYTES
from ._timeouts import Timeouts
from .redaction import (
    RedactingFilter,
    Redactor,
    header_secrets,
    safe_url,
    url_secrets,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ._accumulate import StreamResult
    from ._chunks import ChatCompletionChunk, Usage
    from ._params import ChatRequest


__all__ = ["DEFAULT_BASE_URL", "ChatCompletionsClient", "ChatStream"]

_Item = TypeVar("_Item")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""Used when neither ``base_url`` nor ``OPENAI_BASE_URL`` is given."""

_LOGGER_NAME = "trouper.actors.client"  # see docs/architecture.md, "Logging"

_USER_AGENT = "trouper-chat-client/0.1"
_MAX_ERROR_BODY = 64 * 1024
_MAX_DRAIN = 64 * 1024
_DRAIN_GRACE = 0.1
_CLOSE_GRACE = 2.0
#: What a closed response keeps as its stream (see ChatStream._close_response).
_SPENT_BODY = httpx.ByteStream(b"")
_MAX_FINISH_PULLS = 1024
#: The longest a closed response's unread body waits for an idle loop before it is discarded.
_FINISH_IDLE_WAIT = 0.05
_ERROR_BODY_TIMEOUT = 10.0
_TOKENIZE_SECS = 10.0
_NO_SCOPE = contextlib.nullcontext()

# httpx logs every request's URL (``HTTP Request: POST <url> ...``, level INFO), credentials and
# all: its lines go through the redaction too, for applications that show INFO logs.
_httpx_logger = logging.getLogger("httpx")
if not any(isinstance(f, RedactingFilter) for f in _httpx_logger.filters):
    _httpx_logger.addFilter(RedactingFilter())


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    FINISHED = "finished"
    CLOSED = "closed"


def _json_default(value: object) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, frozenset, set)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_body(payload: Mapping[str, Any]) -> bytes:
    """The request body as compact UTF-8 JSON: orjson, or the standard library for what orjson
    refuses (integers beyond 64 bits...).

    Raises:
        InvalidParameterError: Neither can serialise it.
    """
    try:
        return orjson.dumps(payload, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        pass
    try:
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default)
        return text.encode()
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"the request body is not JSON-serialisable: {exc}") from exc


def _network_idle(timeouts: Timeouts) -> float | None:
    """The per-read timeout handed to httpx: the idle timeout, when it cannot cut a first-token
    wait short (``first_token`` disabled or not longer than ``idle``); else ``None`` and idle
    waits get a cancel scope of their own."""
    idle, first = timeouts.idle, timeouts.first_token
    if idle is not None and (first is None or first <= idle):
        return idle
    return None


def _checked_max_event_bytes(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidParameterError(
            f"max_event_bytes={value!r}: expected a positive number of bytes, "
            f"e.g. {DEFAULT_MAX_EVENT_BYTES} (the default, 8 MiB)"
        )
    return value


def check_api_key(key: str, source: str) -> None:
    """Refuse a key that cannot be sent as it is, before anything is sent (the key itself is
    never shown). The usual case: a key read from a file with its trailing newline, which
    httpx would refuse on every request, as if the connection had failed."""
    problem = None
    if any(ch in key for ch in "\r\n"):
        problem = "contains a line break (often the newline at the end of a file it was read from)"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        problem = "contains a control character"
    elif key != key.strip():
        problem = "starts or ends with whitespace"
    elif not key.isascii():
        problem = "contains a non-ASCII character (was it copied whole?)"
    if problem is not None:
        raise InvalidParameterError(
            f"{source} {problem}: API keys are a single line of printable ASCII. Strip it "
            "(e.g. key.strip()) and try again."
        )


def _is_event_stream(content_type: str | None) -> bool:
    """Whether a response may be read as an event stream: declared ``text/event-stream``
    (parameters and case ignored), or not declared at all (the benefit of the doubt)."""
    if content_type is None:
        return True
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


class _RequestBody(httpx.AsyncByteStream):
    """The request body, handed to httpx as a stream whose iterator is a plain object.

    httpx's own stream for a ``bytes`` body iterates through an async generator. When the send
    is cancelled in the middle of the body, httpcore abandons that generator suspended, and
    trio warns (``ResourceWarning``) when the garbage collector finds it. A plain iterator has
    nothing left to finalize.
    """

    __slots__ = ("_body",)

    def __init__(self, body: bytes) -> None:
        self._body = body

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OnePiece(self._body)


class _OnePiece:
    """An async iterator of exactly one piece of bytes."""

    __slots__ = ("_piece",)

    def __init__(self, piece: bytes) -> None:
        self._piece: bytes | None = piece

    def __aiter__(self) -> _OnePiece:
        return self

    async def __anext__(self) -> bytes:
        piece, self._piece = self._piece, None
        if piece is None:
            raise StopAsyncIteration
        return piece


def endpoint_url(base_url: str, path: str) -> str:
    """``path`` under the API root ``base_url``, keeping the root's query (``?key=...``,
    ``?api-version=...``) where it belongs: after the path."""
    cut = min((i for i in (base_url.find("?"), base_url.find("#")) if i >= 0), default=None)
    root, tail = (base_url, "") if cut is None else (base_url[:cut], base_url[cut:])
    return f"{root.rstrip('/')}/{path}{tail}"


def _server_root(base_url: str) -> str:
    """The server root of an API root: ``base_url`` without a trailing ``/v1`` (its query
    kept), where llama-server serves ``/tokenize``, ``/props`` and ``/health``."""
    cut = min((i for i in (base_url.find("?"), base_url.find("#")) if i >= 0), default=None)
    root, tail = (base_url, "") if cut is None else (base_url[:cut], base_url[cut:])
    return root.rstrip("/").removesuffix("/v1") + tail


def _detached(error: httpx.HTTPError, redactor: Redactor) -> BaseException:
    """A copy of a transport error to chain as ``__cause__``: same type, redacted message, no
    request (its URL and headers hold the credentials), no traceback (its frames' locals do)."""
    message = redactor.text(str(error))
    try:
        return type(error)(message)
    except Exception:  # a subclass with another signature
        return RuntimeError(f"{type(error).__name__}: {message}")


def _body_iterator(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body pieces. Without a content encoding (we ask for ``identity``) the transport's
    stream is read directly, skipping two generator layers of httpx per piece."""
    stream = response.stream
    if not response.headers.get("content-encoding") and isinstance(stream, httpx.AsyncByteStream):
        return stream.__aiter__()
    return response.aiter_bytes()


#: The defaults of a client given none (frozen, so shared: not two objects more per client
#: for the garbage collector to scan).
_DEFAULT_TIMEOUTS = Timeouts()
_DEFAULT_RETRY = RetryPolicy()


@attrs.define(init=False)
class ChatCompletionsClient:
    """A streaming client for ``POST {base_url}/chat/completions`` (OpenAI and compatible servers).

    One instance holds one connection pool, created on first use (or an injected
    ``httpx.AsyncClient``), shared by all its requests. Close it with :meth:`aclose` or use it
    as an async context manager.

    Args:
        api_key: Bearer token; defaults to ``OPENAI_API_KEY``. Without any key no
            ``Authorization`` header is sent (local servers need none). Never shown in reprs,
            messages or logs.
        base_url: API root; defaults to ``OPENAI_BASE_URL``, then ``https://api.openai.com/v1``.
            It may carry credentials (``https://user:pass@host/v1``, ``...?key=K``): they are
            used, and never shown (the :attr:`base_url` attribute masks them).
        organization: ``OpenAI-Organization`` header; defaults to ``OPENAI_ORG_ID``.
        project: ``OpenAI-Project`` header; defaults to ``OPENAI_PROJECT_ID``.
        default_headers: Extra headers sent with every request (they win over the defaults).
            The values of headers named like a secret (``api-key``, ``Authorization``...) are
            never shown.
        timeouts: The call's deadlines.
        retry: The retry policy.
        http_client: An ``httpx.AsyncClient`` to send every request through, with what it
            adds (its headers, auth, event hooks, cookies, proxies); it is not closed by
            :meth:`aclose` (its owner closes it). Without one, the client makes a pool of its
            own at its first request: httpx's transport, which sends the client's own headers
            and nothing else (no cookies are kept), or an ``httpx.AsyncClient`` when the
            environment names a proxy or the base URL carries credentials.
        max_event_bytes: The most bytes one server-sent event may hold (default 8 MiB); a
            larger one fails the stream with :class:`~actors.client.EventTooLargeError`, so a
            broken or hostile server cannot make the client hold an endless line.

    Raises:
        InvalidParameterError: ``max_event_bytes`` is not a positive int.

    Examples:
        >>> async with ChatCompletionsClient(base_url="http://127.0.0.1:8080/v1") as client:
        ...     request = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}])
        ...     async with client.stream(request) as stream:
        ...         async for chunk in stream:
        ...             print(chunk.content, end="")
        ...     print(stream.result().usage)

    Attributes:
        base_url: The API root, fit to show: credentials in it are masked
            (``http://[REDACTED]@host/v1``).
    """

    base_url: str
    organization: str | None
    project: str | None
    timeouts: Timeouts
    retry: RetryPolicy
    max_event_bytes: int
    _api_key: str | None = attrs.field(repr=False)
    _endpoint: str = attrs.field(repr=False)
    _tokenize_endpoint: str = attrs.field(repr=False)
    _default_headers: Mapping[str, str] = attrs.field(repr=False)
    _given_http: httpx.AsyncClient | None = attrs.field(repr=False)
    _sender: Sender | None = attrs.field(repr=False)
    _redactor: Redactor = attrs.field(repr=False)
    _closed: bool = attrs.field(repr=False)

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        default_headers: Mapping[str, str] | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if key:
            check_api_key(key, "api_key" if api_key is not None else "$OPENAI_API_KEY")
        headers = dict(default_headers or {})
        root = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        secrets = (key or "", *header_secrets(headers), *url_secrets(root))
        self.__attrs_init__(
            base_url=safe_url(root),
            organization=organization
            if organization is not None
            else os.environ.get("OPENAI_ORG_ID"),
            project=project if project is not None else os.environ.get("OPENAI_PROJECT_ID"),
            timeouts=timeouts or _DEFAULT_TIMEOUTS,
            retry=retry or _DEFAULT_RETRY,
            max_event_bytes=_checked_max_event_bytes(max_event_bytes),
            api_key=key or None,
            endpoint=endpoint_url(root, "chat/completions"),
            tokenize_endpoint=endpoint_url(_server_root(root), "tokenize"),
            default_headers=headers,
            given_http=http_client,
            sender=None,
            # Registered: the logs and ErrorFrames of the process hide them too.
            redactor=Redactor(secrets).register(),
            closed=False,
        )

    @property
    def url(self) -> str:
        """The endpoint requests are sent to, fit to show (credentials masked)."""
        return endpoint_url(self.base_url, "chat/completions")

    @property
    def redactor(self) -> Redactor:
        """The redactor that hides this client's credentials (use it for your own texts; the
        logs configured by ``runtime.logging.configure`` already use it)."""
        return self._redactor

    def _http(self) -> Sender:
        if self._closed:
            raise RuntimeError("ChatCompletionsClient is closed")
        sender = self._sender
        if sender is None:
            sender = self._sender = Sender(self._given_http, self._endpoint)
        return sender

    def _headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "User-Agent": _USER_AGENT,
        }
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        headers.update(self._default_headers)
        return headers

    def stream(self, request: ChatRequest) -> ChatStream:
        """Prepare a streaming call; the request is sent when the stream is entered.

        Args:
            request: What to ask.

        Returns:
            A :class:`ChatStream`, to be used as ``async with client.stream(request) as stream``.
            Entering it sends the request (retrying as the policy allows) and raises a
            :class:`ChatClientError` if no stream could be started; iterating it yields the chunks.

        Raises:
            InvalidParameterError: The request cannot be serialised to JSON.
            RuntimeError: The client is closed.
        """
        return ChatStream(
            http=self._http(),
            url=self._endpoint,
            shown_url=self.url,
            headers=self._headers(),
            body=_encode_body(request.to_body()),
            timeouts=self.timeouts,
            policy=self.retry,
            redactor=self._redactor,
            max_event_bytes=self.max_event_bytes,
        )

    async def complete(self, request: ChatRequest) -> StreamResult:
        """Stream a request to its end and return the accumulated result.

        Args:
            request: What to ask.

        Returns:
            The complete result.

        Raises:
            ChatClientError: Any failure; errors raised while reading carry ``partial_result``.

        Cancellation: cancelling the caller closes the response at once; nothing outlives the call.
        """
        async with self.stream(request) as stream:
            async for _ in stream:
                pass
        return stream.result()

    @property
    def tokenize_url(self) -> str:
        """The server's tokenizer endpoint, fit to show: llama.cpp's ``/tokenize`` at the
        server root (the API root without its ``/v1``)."""
        return endpoint_url(_server_root(self.base_url), "tokenize")

    async def tokenize(self, text: str) -> list[int]:
        """The server's tokens for ``text``: ``POST /tokenize {"content": text}`` at the server
        root, as llama.cpp's ``llama-server`` answers it (``{"tokens": [...]}``). OpenAI has
        no such endpoint (404). :class:`~actors.TokenCounter` counts with it.

        Args:
            text: What to tokenize.

        Returns:
            The token ids.

        Raises:
            APIStatusError: The server answered with an error status (``NotFoundError``: it
                has no tokenizer endpoint).
            APIConnectionError: The connection failed.
            ConnectTimeoutError: No answer within 10 s.
            ChatClientError: The answer is not ``{"tokens": [...]}``.
            RuntimeError: The client is closed.
        """
        http = self._http()
        headers = self._headers()
        headers["Accept"] = "application/json"
        request = http.request(
            self._tokenize_endpoint,
            headers,
            _encode_body({"content": text}),
            dict.fromkeys(("connect", "read", "write", "pool"), _TOKENIZE_SECS),
        )
        failure: ChatClientError | None = None
        response: httpx.Response | None = None
        with trio.move_on_after(_TOKENIZE_SECS) as scope:
            try:
                response = await http.send(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            except httpx.TransportError as exc:
                failure = APIConnectionError(
                    f"connection to {self.tokenize_url} failed: {type(exc).__name__}: {exc}"
                )
                failure.__cause__ = _detached(exc, self._redactor)
        if scope.cancelled_caught:
            failure = ConnectTimeoutError(
                f"{self.tokenize_url} gave no answer in {_TOKENIZE_SECS:g} s"
            )
        if failure is None:
            assert response is not None
            if not 200 <= response.status_code < 300:
                failure = status_error(
                    response.status_code,
                    response.content[:_MAX_ERROR_BODY],
                    redactor=self._redactor,
                    request_id=response.headers.get("x-request-id"),
                    retry_after=None,
                )
            else:
                try:
                    tokens = response.json()["tokens"]
                    if isinstance(tokens, list):
                        return tokens
                except (ValueError, KeyError, TypeError):
                    pass
                failure = ChatClientError(
                    f"{self.tokenize_url} did not answer {{'tokens': [...]}}",
                    status=response.status_code,
                )
        self._redactor.exception(failure)
        raise failure

    async def aclose(self) -> None:
        """Close the connection pool (only if this client created it). Idempotent.

        Cancellation: the pool is closed even if the caller is cancelled meanwhile.
        """
        self._closed = True
        sender, self._sender = self._sender, None
        if sender is not None:
            with trio.CancelScope(shield=True):
                await sender.aclose()

    async def __aenter__(self) -> ChatCompletionsClient:
        """Return the client itself; the pool is created on first use."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the pool (see :meth:`aclose`).

        Cancellation: the pool is closed even if the caller is cancelled meanwhile.
        """
        await self.aclose()


@attrs.define(kw_only=True, eq=False)
class ChatStream:
    """One streaming call: an async context manager owning the response, and an async iterator
    of :class:`~actors.client.ChatCompletionChunk`.

    Use it as::

        async with client.stream(request) as stream:
            async for chunk in stream:
                ...                      # every chunk, as it arrives
        result = stream.result()         # accumulated text, tool calls, usage...

    Entering sends the request, retrying per the policy, and returns once a 2xx response started;
    iterating yields every chunk. Errors found while reading (in-stream error, malformed line,
    disconnect, timeout) are raised after the chunks received before them were yielded, with
    ``partial_result`` attached; :meth:`result` also keeps working after an error, a cancellation
    or an early exit. Leaving the block (normally, by exception or by cancellation) closes the
    response at once; a response whose body was fully read (``[DONE]`` then end of body) goes back
    to the pool.

    Attributes:
        request_started_at: Trio time when the call started (first attempt).
        attempt_started_at: Trio time when the current attempt started.
        first_token_at: Trio time when the first chunk with output arrived, or ``None``.
        attempts: Requests sent so far.
        request_id: ``x-request-id`` of the current response.
        response_headers: Headers of the current response.
    """

    _http: Sender = attrs.field(repr=False)
    _url: str = attrs.field(repr=False)
    _shown_url: str
    _headers: Mapping[str, str] = attrs.field(repr=False)
    _body: bytes = attrs.field(repr=False)
    _timeouts: Timeouts
    _policy: RetryPolicy
    _redactor: Redactor = attrs.field(repr=False)
    _max_event_bytes: int = attrs.field(default=DEFAULT_MAX_EVENT_BYTES, repr=False)
    request_started_at: float | None = attrs.field(default=None, init=False)
    attempt_started_at: float | None = attrs.field(default=None, init=False)
    first_token_at: float | None = attrs.field(default=None, init=False)
    attempts: int = attrs.field(default=0, init=False)
    request_id: str | None = attrs.field(default=None, init=False)
    response_headers: httpx.Headers | None = attrs.field(default=None, init=False, repr=False)
    _state: _State = attrs.field(default=_State.NEW, init=False)
    _response: httpx.Response | None = attrs.field(default=None, init=False, repr=False)
    _bytes: AsyncIterator[bytes] | None = attrs.field(default=None, init=False, repr=False)
    #: Whether :attr:`_bytes` has ended (nothing is left to finish when the response closes).
    _body_done: bool = attrs.field(default=False, init=False, repr=False)
    _body_finisher: Callable[[Callable[[], Awaitable[None]]], object] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _parser: ChunkStreamParser = attrs.field(factory=ChunkStreamParser, init=False, repr=False)
    #: What the parser completed and the iterator has not handed out yet: chunks, or the
    #: content texts when the stream is read with `text_deltas` (the other queue stays empty).
    _chunks: deque[ChatCompletionChunk] = attrs.field(factory=deque, init=False, repr=False)
    _texts: deque[str] = attrs.field(factory=deque, init=False, repr=False)
    _failure: ChatClientError | None = attrs.field(default=None, init=False, repr=False)
    _retries: int = attrs.field(default=0, init=False, repr=False)
    _deadline: float = attrs.field(default=math.inf, init=False, repr=False)
    _random: Callable[[], float] = attrs.field(default=random.random, init=False, repr=False)
    _wait_started_at: float = attrs.field(default=0.0, init=False, repr=False)
    #: The running clock's ``current_time`` (taken when the stream is entered): read before
    #: every wait for a chunk, one call where ``trio.current_time()`` makes three.
    _now: Callable[[], float] = attrs.field(default=trio.current_time, init=False, repr=False)
    _network_idle: float | None = attrs.field(default=None, init=False, repr=False)

    _fast_reads: bool = attrs.field(default=False, init=False, repr=False)
    #: ``None`` until iteration starts; then whether it yields text (``text_deltas``).
    _text_only: bool | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._network_idle = _network_idle(self._timeouts)
        # Once output flows, reads need no cancel scope when httpx's per-read timeout is the
        # whole idle rule and there is no total deadline (see `_read_plan`).
        self._fast_reads = self._timeouts.total is None and (
            self._timeouts.idle is None or self._network_idle is not None
        )

    # ----------------------------------------------------------------------------------------
    # public surface

    def result(self) -> StreamResult:
        """The result accumulated so far (complete after a normal end, partial otherwise).

        Returns:
            A snapshot of the current attempt's chunks.
        """
        return self._parser.result()

    @property
    def usage(self) -> Usage | None:
        """The last usage snapshot received, or ``None``."""
        return self._parser.accumulator.usage

    async def __aenter__(self) -> ChatStream:
        """Send the request, retrying as the policy allows, until a 2xx response starts.

        Returns:
            The stream, ready to be iterated.

        Raises:
            ChatClientError: No stream could be started (status error, connection failure,
                timeout), after the allowed retries; ``attempts`` says how many requests were made.
            RuntimeError: The stream was already entered once.

        Cancellation: cancelling while connecting or during a backoff sleep closes any open
        response at once; nothing is left behind.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("a ChatStream can be entered only once")
        self._state = _State.OPEN
        self._now = trio.lowlevel.current_clock().current_time
        now = self._now()
        self.request_started_at = now
        total = self._timeouts.total
        self._deadline = now + total if total is not None else math.inf
        try:
            await self._connect()
        except BaseException:
            await self._close_response()
            self._state = _State.CLOSED
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the response at once (a completely read one goes back to the pool).

        Cancellation: the closing step is shielded and bounded, so it also runs, and finishes
        quickly, when the block is left because of a cancellation.
        """
        self._state = _State.CLOSED
        self._chunks.clear()
        self._texts.clear()
        await self._close_response()

    def __aiter__(self) -> ChatStream:
        """The stream is its own iterator (of chunks).

        Raises:
            RuntimeError: :meth:`text_deltas` is already being used on this stream.
        """
        if self._text_only:
            raise RuntimeError(
                "this stream is read with text_deltas(); it cannot also yield chunks"
            )
        self._text_only = False
        return self

    def abort(self) -> None:
        """Shut the current response's connection down at once, synchronously.

        For code that cancels the task reading this stream and wants the server to see the
        connection end without waiting for that task to unwind (``OpenAILLMService`` calls it
        from an interruption): the socket is shut down in both directions here; the reader's
        own cleanup then closes it as usual. If the reader is *not* being cancelled, its next
        read fails with :class:`~actors.client.ServerDisconnectedError`.

        A no-op without an open response, or when the transport does not expose its socket
        (HTTP/2, mock transports).
        """
        response = self._response
        if response is None:
            return
        network = response.extensions.get("network_stream")
        get_extra_info = getattr(network, "get_extra_info", None)
        sock = get_extra_info("socket") if get_extra_info is not None else None
        shutdown = getattr(sock, "shutdown", None)
        if shutdown is None:
            return
        try:
            shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected: nothing left to end

    def finish_unread_body_with(
        self, spawn: Callable[[Callable[[], Awaitable[None]]], object]
    ) -> None:
        """Have a body left unread (the stream closed early: interrupted, abandoned) finished
        by ``spawn`` instead of by the closing itself.

        httpx reads a body through nested async generators, which end only by being run to
        their end (trio warns when it collects one that has not). Run to the end after the
        response is closed, they first hand out what the transport had already received: one
        event per streamed chunk, about 9 µs each; 1.2 ms for 135 chunks buffered behind a
        full output stage. By default leaving the ``async with`` block does that, so nothing
        outlives the block. With a spawner, leaving the block only closes the response (the
        socket closes at once, as before), and ``spawn(finish)`` is called with an async
        function that waits until the event loop is idle (at most 50 ms) and then finishes the
        body; the caller runs it in a task of its own (``OpenAILLMService`` uses a task of
        its actor, so an interrupted answer's closing frames and the next turn come first).

        Args:
            spawn: Called once per response closed with its body unread (a retried call can
                close several), with a function taking no argument, to be awaited in a task
                that the caller owns.
        """
        self._body_finisher = spawn

    def text_deltas(self) -> AsyncIterator[str]:
        """Iterate the content text instead of the chunks: each non-empty content delta of
        choice 0, as it arrives.

        Everything else is accumulated as usual (:meth:`result`, :attr:`usage`, tool calls,
        :attr:`first_token_at`), and errors are raised as when iterating chunks. It is the
        cheaper way to read a stream when only the text matters as it streams: chunks of the
        commonest shape (a single content delta) are folded in without building chunk objects.

        Returns:
            An async iterator of ``str``.

        Raises:
            RuntimeError: The stream is already iterated as chunks.
        """
        if self._text_only is False:
            raise RuntimeError("this stream is already iterated as chunks; use one or the other")
        self._text_only = True
        self._parser.text_only = True
        return _TextDeltas(self)

    def __anext__(self) -> Awaitable[ChatCompletionChunk]:
        """The next chunk.

        Raises:
            ChatClientError: A failure while reading (after the chunks received before it).
            StopAsyncIteration: The stream ended.

        Cancellation: safe at any point; the enclosing ``async with`` then closes the response.
        """
        return self._next(self._chunks)

    async def _next(self, pending: deque[_Item]) -> _Item:
        """The next item of ``pending`` (:attr:`_chunks` or :attr:`_texts`), reading as needed.

        ``__anext__`` returns this coroutine itself (rather than awaiting it in a coroutine of its
        own), so an item costs one coroutine, chunks and texts alike. Once output flows and the
        wait needs no deadline of its own (see :meth:`_read_plan`), the pieces are read here,
        one at a time: no more coroutine and no cancel scope per item on the path of nearly
        every token; other waits go through :meth:`_fill`.
        """
        fresh = True  # a new wait for a chunk: its idle time starts now
        while True:
            if pending:
                return pending.popleft()
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self._state = _State.FINISHED
                raise failure
            if self._state is not _State.OPEN:
                if self._state is _State.NEW:
                    raise RuntimeError("use `async with client.stream(request) as stream:` first")
                raise StopAsyncIteration
            if fresh:
                self._wait_started_at = self._now()
            parser = self._parser
            accumulator = parser.accumulator
            stream = self._bytes
            if stream is None or not (self._fast_reads and accumulator.has_output):
                await self._fill()
                fresh = True
                continue
            chunks_before = accumulator.chunk_count
            try:
                piece = await stream.__anext__()
            except (StopAsyncIteration, httpx.TransportError) as exc:
                self._read_failed(exc)
            else:
                parser.feed(piece)
                # A piece that completed a chunk ends the wait (even with nothing pending: in
                # text mode a tool-call fragment yields no text); one that did not (keep-alive
                # comments, part of a chunk) must not extend it.
                fresh = accumulator.chunk_count != chunks_before
                if not fresh:
                    self._check_keepalives()
            if self._failure is not None or parser.failure is not None or parser.finished:
                await self._settle()
                fresh = True

    # ----------------------------------------------------------------------------------------
    # connecting, with retries

    async def _connect(self) -> None:
        while True:
            failure, decision = await self._attempt()
            if failure is None:
                return
            await self._backoff_or_raise(failure, decision)

    async def _attempt(self) -> tuple[ChatClientError | None, RetryDecision]:
        self.attempts += 1
        now = trio.current_time()
        self.attempt_started_at = now
        self._parser = ChunkStreamParser(
            redactor=self._redactor,
            text_only=bool(self._text_only),
            max_event_bytes=self._max_event_bytes,
            chunks=self._chunks,
            texts=self._texts,
        )
        self.first_token_at = None
        timeouts = self._timeouts
        request = self._http.request(
            self._url,
            self._headers,
            self._body,
            {
                "connect": timeouts.connect,
                "read": self._network_idle,
                "write": timeouts.connect,
                "pool": timeouts.connect,
            },
        )
        request.stream = _RequestBody(self._body)  # same bytes and Content-Length; no generator
        deadline = self._deadline
        kind = "first_token"
        if timeouts.first_token is not None:
            deadline = min(deadline, now + timeouts.first_token)
        elif timeouts.idle is not None:  # idle applies from the start: a trickled head too
            deadline = min(deadline, now + timeouts.idle)
            kind = "response"
        response: httpx.Response | None = None
        failure: ChatClientError | None = None
        with trio.CancelScope(deadline=deadline) as scope:
            try:
                response = await self._http.send(request)
            except (httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteTimeout) as exc:
                failure = ConnectTimeoutError(
                    f"connecting to {self._shown_url} timed out after {timeouts.connect:g} s"
                )
                failure.__cause__ = _detached(exc, self._redactor)
            except httpx.ReadTimeout as exc:  # only with first_token disabled: idle applies
                failure = StreamIdleTimeoutError(
                    f"no response for {timeouts.idle:g} s"
                    if timeouts.idle is not None
                    else "the read timed out"
                )
                failure.__cause__ = _detached(exc, self._redactor)
            except httpx.TransportError as exc:
                failure = APIConnectionError(
                    f"connection to {self._shown_url} failed: {type(exc).__name__}: {exc}"
                )
                failure.__cause__ = _detached(exc, self._redactor)
        if scope.cancelled_caught:
            failure = self._deadline_failure(scope_deadline=deadline, kind=kind)
        if failure is not None:
            return failure, self._failure_decision(failure)
        assert response is not None
        self._response = response
        self.response_headers = response.headers
        self.request_id = response.headers.get("x-request-id")
        self._parser.request_id = self.request_id
        self._bytes = _body_iterator(response)
        self._body_done = False
        content_type = response.headers.get("content-type")
        if 200 <= response.status_code < 300 and not _is_event_stream(content_type):
            assert content_type is not None
            raw = await self._read_error_body()
            await self._close_response()
            not_stream = not_event_stream_error(
                content_type,
                raw,
                status=response.status_code,
                url=self._url,
                redactor=self._redactor,
                request_id=self.request_id,
            )
            return not_stream, RetryDecision(False, reason="not an event stream")
        if not 200 <= response.status_code < 300:
            raw = await self._read_error_body()
            await self._close_response()
            error = status_error(
                response.status_code,
                raw,
                redactor=self._redactor,
                request_id=self.request_id,
                retry_after=parse_retry_after(response.headers, now=time.time()),
            )
            decision = self._policy.for_status(
                response.status_code,
                response.headers,
                retries_taken=self._retries,
                random_value=self._random(),
                now=time.time(),
            )
            return error, decision
        return None, RetryDecision(False)

    def _failure_decision(self, failure: ChatClientError) -> RetryDecision:
        if isinstance(failure, TotalTimeoutError):
            return RetryDecision(False, reason="total timeout")
        if self._parser.accumulator.has_output:
            return RetryDecision(False, reason="output was already delivered")
        if not isinstance(failure, (APIConnectionError, APITimeoutError)):
            return RetryDecision(False, reason="not retryable")
        return self._policy.for_failure(
            retries_taken=self._retries,
            random_value=self._random(),
            timeout=isinstance(failure, APITimeoutError),
        )

    async def _backoff_or_raise(self, failure: ChatClientError, decision: RetryDecision) -> None:
        self._redactor.exception(failure)  # before it is logged or raised: nothing leaves unseen
        failure.attempts = self.attempts
        remaining = self._deadline - trio.current_time()
        if not decision.retry or decision.delay >= remaining:
            failure.partial_result = self._parser.result()
            raise failure
        self._retries += 1
        structlog.get_logger(_LOGGER_NAME).warning(
            "chat completion attempt failed; retrying",
            attempt=self.attempts,
            retry_in_s=round(decision.delay, 3),
            reason=decision.reason,
            error=str(failure),
            error_class=type(failure).__name__,
            status=failure.status,
            request_id=failure.request_id,
        )
        await trio.sleep(decision.delay)

    async def _read_error_body(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        stream = self._bytes
        if stream is None:
            return b""
        deadline = min(self._deadline, trio.current_time() + _ERROR_BODY_TIMEOUT)
        with trio.CancelScope(deadline=deadline):
            try:
                async for part in stream:
                    parts.append(part)
                    size += len(part)
                    if size >= _MAX_ERROR_BODY:
                        break
                else:
                    self._body_done = True
            except httpx.TransportError:
                pass
        return b"".join(parts)[:_MAX_ERROR_BODY]

    # ----------------------------------------------------------------------------------------
    # reading

    def _read_plan(self) -> tuple[float | None, str]:
        """The deadline of the next wait for a chunk and which timeout it is; ``None`` when the
        wait needs no cancel scope of its own.

        Before the first output only ``first_token`` applies (a long prefill is not idleness);
        from then on, ``idle`` bounds each wait for the next chunk; ``total`` always applies. With
        ``first_token`` disabled, ``idle`` applies from the start, in a cancel scope until output
        flows: httpx's per-read timeout alone would let keep-alives or trickled bytes extend it.

        A trio cancel scope costs about as much as decoding a chunk, and h11 hands over one HTTP
        chunk (one token) per read, so once output flows the idle deadline is left to httpx's
        per-read timeout (see :func:`_network_idle`) whenever that is exact, and the scope is only
        used when a tighter deadline (total) is near.
        """
        timeouts = self._timeouts
        first = timeouts.first_token
        if first is not None and not self._parser.accumulator.has_output:
            started = self.attempt_started_at
            first_deadline = (started if started is not None else trio.current_time()) + first
            if first_deadline <= self._deadline:
                return first_deadline, "first_token"
            return self._deadline, "total"
        idle = timeouts.idle
        network_idle = self._network_idle
        if idle is not None and (network_idle is None or not self._parser.accumulator.has_output):
            idle_deadline = trio.current_time() + idle
            if idle_deadline < self._deadline:
                return idle_deadline, "idle"
            return self._deadline, "total"
        if self._deadline != math.inf and (
            network_idle is None or self._deadline <= trio.current_time() + network_idle
        ):
            return self._deadline, "total"
        return None, "idle"

    def _deadline_failure(self, *, scope_deadline: float, kind: str) -> ChatClientError:
        timeouts = self._timeouts
        if scope_deadline >= self._deadline:
            return TotalTimeoutError(
                f"the call took longer than {timeouts.total:g} s (total timeout)"
            )
        if kind == "first_token":
            return FirstTokenTimeoutError(
                f"no output within {timeouts.first_token:g} s of sending the request"
            )
        if kind == "response":
            return StreamIdleTimeoutError(
                f"the response did not start within {timeouts.idle:g} s of sending the request "
                "(idle timeout; first_token is disabled)"
            )
        return StreamIdleTimeoutError(f"no chunk for {timeouts.idle:g} s while streaming")

    async def _fill(self) -> None:
        """Read until at least one chunk is pending, the stream ends, or something fails, under
        the wait's deadline (:meth:`_read_plan`); then :meth:`_settle`."""
        stream = self._bytes
        if stream is None:  # a failed retry left no response; nothing more to read
            self._state = _State.FINISHED
            return
        parser = self._parser
        chunks, texts = self._chunks, self._texts
        accumulator = parser.accumulator
        deadline, kind = self._read_plan()
        scope = None if deadline is None else trio.CancelScope(deadline=deadline)
        # Return after every piece that completed a chunk, even when nothing is pending (in
        # text mode a tool-call fragment yields no text): the caller's next wait then gets a
        # fresh idle deadline. Before the first output, under a fixed deadline (first_token
        # or total), there is nothing to refresh: in text mode, chunks without text (the
        # role chunk) are read past in the same scope.
        read_past = self._text_only is True and kind != "idle" and not accumulator.has_output
        chunks_before = accumulator.chunk_count
        with scope if scope is not None else _NO_SCOPE:
            while (
                not chunks
                and not texts
                and not parser.finished
                and self._failure is None
                and accumulator.chunk_count == chunks_before
            ):
                try:
                    piece = await stream.__anext__()
                except (StopAsyncIteration, httpx.TransportError) as exc:
                    self._read_failed(exc)
                    break
                had_output = accumulator.has_output
                parser.feed(piece)
                if accumulator.chunk_count != chunks_before:
                    if not had_output and accumulator.has_output:
                        self.first_token_at = trio.current_time()
                    elif read_past and not texts and not accumulator.has_output:
                        chunks_before = accumulator.chunk_count  # no text yet: read on
                elif had_output:
                    self._check_keepalives()
        if scope is not None and scope.cancelled_caught and self._failure is None:
            assert deadline is not None
            self._failure = self._deadline_failure(scope_deadline=deadline, kind=kind)
        await self._settle()

    def _read_failed(self, exc: StopAsyncIteration | httpx.TransportError) -> None:
        """A read of the body raised: its end, httpx's per-read timeout (the idle guard) or a
        transport error. Either way the body's iterators have ended."""
        self._body_done = True
        if isinstance(exc, StopAsyncIteration):
            self._parser.end_of_body()
        elif isinstance(exc, httpx.ReadTimeout):
            idle = self._timeouts.idle
            self._failure = StreamIdleTimeoutError(
                f"no data for {idle:g} s while streaming"
                if idle is not None
                else "the read timed out while streaming"
            )
            self._failure.__cause__ = _detached(exc, self._redactor)
        else:
            self._on_transport_error(exc)

    def _check_keepalives(self) -> None:
        """After a piece that completed no chunk, once output flows: bytes without a chunk
        (keep-alive comments) must not extend the idle time of the wait."""
        idle = self._timeouts.idle
        if idle is not None and self._now() - self._wait_started_at > idle:
            self._failure = StreamIdleTimeoutError(
                f"no chunk for {idle:g} s while streaming (only keep-alives)"
            )

    async def _settle(self) -> None:
        """After a read: a failure is retried (as the policy allows) or kept for the iterator
        to raise, with the partial result; a finished stream is drained and closed."""
        parser = self._parser
        if self._failure is None and parser.failure is not None:
            self._failure, parser.failure = parser.failure, None
        if self._failure is not None:
            await self._close_response()
            failure = self._failure
            decision = self._failure_decision(failure)
            if decision.retry:
                self._failure = None
                self._chunks.clear()
                self._texts.clear()
                await self._backoff_or_raise(failure, decision)
                await self._connect()
            else:
                self._redactor.exception(failure)  # it is raised by __anext__
                failure.attempts = self.attempts
                failure.partial_result = parser.result()
        elif parser.finished:
            self._state = _State.FINISHED
            await self._drain_and_close()

    def _on_transport_error(self, exc: httpx.TransportError) -> None:
        if self._parser.accumulator.finish_reason is not None:
            self._parser.finished = True  # the answer was complete; only the tail was lost
            structlog.get_logger(_LOGGER_NAME).warning(
                "chat completion stream cut after its finish_reason",
                error=self._redactor.text(str(exc)),
                request_id=self.request_id,
            )
            return
        failure = ServerDisconnectedError(
            f"the connection was lost mid-stream: {type(exc).__name__}: {exc}",
            request_id=self.request_id,
        )
        failure.__cause__ = _detached(exc, self._redactor)
        self._failure = failure

    async def _drain_and_close(self) -> None:
        """After ``[DONE]``: read the (normally already received) end of the body so that the
        connection can go back to the pool, then close the response."""
        stream = self._bytes
        if stream is not None:
            drained = 0
            with trio.CancelScope(deadline=min(self._deadline, trio.current_time() + _DRAIN_GRACE)):
                try:
                    async for part in stream:
                        drained += len(part)
                        if drained > _MAX_DRAIN:
                            break
                    else:
                        self._body_done = True
                except httpx.TransportError:
                    pass
        await self._close_response()

    async def _close_response(self) -> None:
        """Close the response at once (socket closed, or returned to the pool when the body was
        complete). Shielded: it runs even in a cancelled caller, bounded by a short grace.

        A body left unread (an interrupted or abandoned stream) is then finished here, or, if
        the owner asked for it (:meth:`finish_unread_body_with`), handed over to be finished
        later, when the event loop is idle (:func:`_finish_when_idle`).
        """
        response, self._response = self._response, None
        stream, self._bytes = self._bytes, None
        if response is None:
            return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE):
            await response.aclose()
        if stream is not None and not self._body_done:
            if self._body_finisher is not None:
                self._body_finisher(functools.partial(_finish_when_idle, stream))
                return  # (the stream is still needed)
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_GRACE):
                await _finish_iterator(stream)
        # httpx's response and its stream refer to each other: a cycle that only the
        # collector's full passes would free, with the request and its headers (the key among
        # them). Closed, the response needs its stream no more: drop it, and all is freed now.
        response.stream = _SPENT_BODY


class _TextDeltas:
    """:meth:`ChatStream.text_deltas`: the stream's own reading loop over its text queue (no
    extra coroutine per delta)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _TextDeltas:
        return self

    def __anext__(self) -> Awaitable[str]:
        return self._stream._next(self._stream._texts)


async def _finish_when_idle(stream: AsyncIterator[bytes]) -> None:
    """Finish the byte iterator of a closed response once the event loop is idle (at most
    :data:`_FINISH_IDLE_WAIT` later), off the path of whoever closed it.

    httpx reads a body through five nested async generators (httpx's and httpcore's), which
    only finish by being run to their end (trio warns when it collects one that has not); run
    to the end, they first hand out every event that h11 had already buffered (one per HTTP
    chunk, ~9 µs each: 135 of them, 1.2 ms, for a stream interrupted behind a full output
    stage). Doing that in the interrupted reader delays its closing frames and the next turn
    (see :meth:`ChatStream.finish_unread_body_with`).
    """
    # Imported here, not with the module: trio.testing imports pytest when it is installed,
    # a large import (and heap) that a process which never interrupts a stream does without.
    import trio.testing

    try:
        with trio.move_on_after(_FINISH_IDLE_WAIT):
            await trio.testing.wait_all_tasks_blocked()
    finally:  # also when the task running it is cancelled meanwhile (its owner stops)
        with trio.CancelScope(shield=True):
            await _finish_iterator(stream)


async def _finish_iterator(stream: AsyncIterator[bytes]) -> None:
    """Run a byte iterator of a *closed* response to its end.

    httpx and httpcore produce the body through nested async generators; stopping to pull from
    the outer one leaves all of them suspended, and trio warns when they are garbage collected.
    Once the response is closed, pulling again makes them finish at once: buffered bytes come out,
    then the closed connection raises, and that error unwinds (and ends) every layer.
    """
    for _ in range(_MAX_FINISH_PULLS):
        try:
            await stream.__anext__()
        except StopAsyncIteration:
            return
        except Exception:  # the closed connection's error: every generator has now finished
            return
