"""The client's exceptions.

Every exception raised by the client derives from :class:`ChatClientError` and has a
:attr:`~ChatClientError.category` (an :class:`ErrorCategory`, shown below by its value) that a
service can act on without knowing the class tree::

    ChatClientError                   (base; never raised itself)
    ├── InvalidParameterError         invalid_request  also a ValueError; raised before sending
    ├── APIConnectionError            connectivity     connect failed, connection lost
    │   ├── ServerDisconnectedError   connectivity     body cut off mid-stream
    │   └── IncompleteStreamError     connectivity     clean end without [DONE]/finish_reason
    ├── APITimeoutError               timeout
    │   ├── ConnectTimeoutError       timeout          TCP/TLS connect or pool wait
    │   ├── FirstTokenTimeoutError    timeout          attempt start -> first output chunk
    │   ├── StreamIdleTimeoutError    timeout          gap between two chunks
    │   └── TotalTimeoutError         timeout          whole call, retries included
    ├── APIStatusError                by status        HTTP error status instead of a stream
    │   ├── BadRequestError           invalid_request  400
    │   │   └── ContextLengthExceededError  invalid_request  400: prompt too long
    │   ├── AuthenticationError       auth             401
    │   ├── PermissionDeniedError     auth             403
    │   ├── NotFoundError             invalid_request  404
    │   ├── ConflictError             invalid_request  409
    │   ├── UnprocessableEntityError  invalid_request  422
    │   ├── RateLimitError            rate_limit       429
    │   └── InternalServerError       server           5xx
    ├── StreamError                   server*          data: {"error": ...} inside a 200 stream
    ├── MalformedChunkError           server           a data line that is not a JSON object
    ├── EventTooLargeError            server           one SSE event beyond max_event_bytes
    └── NotEventStreamError           server           a 2xx answer that is not text/event-stream

    * a StreamError whose code is an HTTP status or whose type names a known class takes that
      category (e.g. vLLM's in-stream ``"code": 400`` is ``invalid_request``).

Other statuses raise a plain :class:`APIStatusError`: 408 is ``timeout``, other 4xx
``invalid_request``, anything else ``server``.

Every instance carries ``status``, ``error_type``, ``code`` (int or str, as the server sent it),
``param``, ``request_id`` (``x-request-id``), ``retry_after`` (seconds, from the response headers),
``body`` (the decoded error object), ``attempts`` (requests made) and, for errors raised while a
stream was being read, ``partial_result`` (what had been received).

No secret is ever in an exception the client raises: every text taken from a response is
redacted (:class:`~actors.client.Redactor`) before it is cut to length, and before raising,
the client redacts the exception whole -- ``args``, every attribute, the chain. A transport error
is chained as a copy of itself (same type, redacted message) without the request, whose URL
and headers hold the credentials, and without its traceback.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._accumulate import StreamResult
    from .redaction import Redactor

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ChatClientError",
    "ConflictError",
    "ConnectTimeoutError",
    "ContextLengthExceededError",
    "ErrorCategory",
    "EventTooLargeError",
    "FirstTokenTimeoutError",
    "IncompleteStreamError",
    "InternalServerError",
    "InvalidParameterError",
    "MalformedChunkError",
    "NotEventStreamError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerDisconnectedError",
    "StreamError",
    "StreamIdleTimeoutError",
    "TotalTimeoutError",
    "UnprocessableEntityError",
    "category_for_status",
    "not_event_stream_error",
    "status_error",
    "stream_error",
]


class ErrorCategory(enum.StrEnum):
    """What kind of failure an error is, for services that decide what to tell the user.

    The client's exceptions carry one (:attr:`ChatClientError.category`); the stages report
    the same value in their ``ErrorFrame``s (``actors.ErrorCategory`` is this class). Each
    member is its string value (``ErrorCategory.RATE_LIMIT == "rate_limit"``).
    """

    AUTHENTICATION = "auth"
    """The credentials are missing, wrong, or not allowed (HTTP 401, 403)."""
    RATE_LIMIT = "rate_limit"
    """Rate limit or quota exceeded (HTTP 429)."""
    SERVER = "server"
    """The server failed or answered something unusable (5xx, malformed stream)."""
    INVALID_REQUEST = "invalid_request"
    """The request was rejected as invalid (other 4xx, invalid parameters or messages)."""
    CONNECTIVITY = "connectivity"
    """The connection could not be made or was lost."""
    TIMEOUT = "timeout"
    """A deadline passed."""
    APPLICATION = "application"
    """The application's own code failed (a tool handler, a stage); never a client error."""
    UNKNOWN = "unknown"
    """Anything else."""


_MAX_TEXT = 300


class ChatClientError(Exception):
    """Base class of every exception raised by the chat-completions client.

    Args:
        message: What happened (already redacted).
        status: The HTTP status, when a response was received.
        error_type: The error ``type`` from the server's error object.
        code: The error ``code`` (int or str, as sent).
        param: The error ``param``.
        request_id: The response's ``x-request-id``.
        retry_after: The server's retry hint in seconds (``retry-after-ms``/``retry-after``).
        body: The decoded (redacted) error object or text.
        category: Overrides the class's default :attr:`category`.
    """

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        category: ErrorCategory | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body
        self._category: ErrorCategory = category or self.default_category
        self.attempts = 1
        self.partial_result: StreamResult | None = None

    @property
    def category(self) -> ErrorCategory:
        """``auth``, ``rate_limit``, ``server``, ``invalid_request``, ``connectivity`` or
        ``timeout``."""
        return self._category

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"status {self.status}")
        if self.error_type:
            details.append(f"type {self.error_type}")
        if self.code is not None:
            details.append(f"code {self.code}")
        if self.param:
            details.append(f"param {self.param}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.retry_after is not None:
            details.append(f"retry after {self.retry_after:g} s")
        return f"{self.message} ({', '.join(details)})" if details else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidParameterError(ChatClientError, ValueError):
    """A request or generation parameter is invalid; raised before anything is sent."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class APIConnectionError(ChatClientError):
    """The connection could not be made or was lost."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.CONNECTIVITY


class ServerDisconnectedError(APIConnectionError):
    """The server closed the connection in the middle of the response body."""


class IncompleteStreamError(APIConnectionError):
    """The body ended cleanly but without ``[DONE]`` and without a ``finish_reason``: the answer is
    truncated."""


class APITimeoutError(ChatClientError):
    """A deadline of :class:`~actors.client.Timeouts` passed."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.TIMEOUT


class ConnectTimeoutError(APITimeoutError):
    """Connecting (TCP, TLS) or waiting for a pooled connection took longer than
    ``Timeouts.connect``."""


class FirstTokenTimeoutError(APITimeoutError):
    """No output chunk arrived within ``Timeouts.first_token`` of sending the request."""


class StreamIdleTimeoutError(APITimeoutError):
    """No chunk arrived for ``Timeouts.idle`` while the stream was being read."""


class TotalTimeoutError(APITimeoutError):
    """The whole call, retries and backoff included, took longer than ``Timeouts.total``."""


class APIStatusError(ChatClientError):
    """The server answered with an HTTP error status instead of a stream."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER


class BadRequestError(APIStatusError):
    """HTTP 400: the request was malformed or used an unsupported parameter."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class ContextLengthExceededError(BadRequestError):
    """HTTP 400 because the prompt does not fit the model's context window.

    Recognised from OpenAI's error code ``context_length_exceeded``, llama-server's error type
    ``exceed_context_size_error`` (or its message "...exceeds the available context size...")
    and vLLM's "maximum context length" message. The context window of the conversation
    stages (:class:`~actors.ContextWindow`) trims the request harder and retries it once on
    this error.
    """

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key is missing, wrong or revoked."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.AUTHENTICATION


class PermissionDeniedError(APIStatusError):
    """HTTP 403: the key may not use this resource (or region)."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.AUTHENTICATION


class NotFoundError(APIStatusError):
    """HTTP 404: unknown model or endpoint."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class ConflictError(APIStatusError):
    """HTTP 409: conflict (retried by default)."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class UnprocessableEntityError(APIStatusError):
    """HTTP 422: the request was understood but cannot be processed."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.INVALID_REQUEST


class RateLimitError(APIStatusError):
    """HTTP 429: rate limit or quota exceeded (retried by default)."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.RATE_LIMIT


class InternalServerError(APIStatusError):
    """HTTP 5xx: the server failed (retried by default)."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER


class StreamError(ChatClientError):
    """The server reported an error inside a stream that had started with HTTP 200."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER


class MalformedChunkError(ChatClientError):
    """A ``data:`` line of the stream is not a JSON object."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER


def _size(count: int) -> str:
    """``8 MiB``, ``64 KiB`` or ``100000 bytes``."""
    for unit, name in ((1024 * 1024, "MiB"), (1024, "KiB")):
        if count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count} bytes"


class EventTooLargeError(ChatClientError):
    """One server-sent event grew beyond the cap (``max_event_bytes``) before it ended.

    The decoder stops holding it at once, so a hostile or broken server cannot make the client
    hold an unbounded line; the rest of the body is not read.

    Args:
        max_event_bytes: The cap that was exceeded.
        request_id: The response's ``x-request-id``.

    Attributes:
        max_event_bytes: The cap that was exceeded.
    """

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER

    def __init__(self, max_event_bytes: int, *, request_id: str | None = None) -> None:
        super().__init__(
            f"a server-sent event grew beyond {_size(max_event_bytes)} "
            f"(max_event_bytes={max_event_bytes}) before it ended; the stream was stopped. "
            "If the server really sends events this large, raise the cap: "
            "ChatCompletionsClient(max_event_bytes=...)",
            request_id=request_id,
        )
        self.max_event_bytes = max_event_bytes


class NotEventStreamError(ChatClientError):
    """The server answered a streaming request with a 2xx response that is not an event
    stream (an HTML page, a whole JSON document...): usually a ``base_url`` that does not point
    to an OpenAI-compatible API, a proxy's page, or a server ignoring ``stream: true``. Never
    retried: the same request would get the same answer."""

    default_category: ClassVar[ErrorCategory] = ErrorCategory.SERVER


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}

_TYPE_CATEGORIES: dict[str, ErrorCategory] = {
    "invalid_request_error": ErrorCategory.INVALID_REQUEST,
    "badrequesterror": ErrorCategory.INVALID_REQUEST,
    "not_found_error": ErrorCategory.INVALID_REQUEST,
    "notfounderror": ErrorCategory.INVALID_REQUEST,
    "authentication_error": ErrorCategory.AUTHENTICATION,
    "permission_error": ErrorCategory.AUTHENTICATION,
    "permission_denied_error": ErrorCategory.AUTHENTICATION,
    "rate_limit_error": ErrorCategory.RATE_LIMIT,
    "rate_limit_exceeded": ErrorCategory.RATE_LIMIT,
    "insufficient_quota": ErrorCategory.RATE_LIMIT,
    "timeout": ErrorCategory.TIMEOUT,
}


_CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error"})
_CONTEXT_PHRASES = (
    "exceeds the available context size",  # llama-server
    "maximum context length",  # OpenAI, vLLM
    "context_length_exceeded",
)


def is_context_length_error(
    message: str | None, error_type: str | None, code: str | int | None
) -> bool:
    """Whether an HTTP 400's error says the prompt is longer than the model's context.

    Args:
        message: The error message.
        error_type: The error ``type``.
        code: The error ``code``.
    """
    if code in _CONTEXT_CODES or error_type in _CONTEXT_CODES:
        return True
    lowered = (message or "").lower()
    return any(phrase in lowered for phrase in _CONTEXT_PHRASES)


def category_for_status(status: int) -> ErrorCategory:
    """The category of an HTTP error status.

    Args:
        status: An HTTP status code (normally >= 400).

    Returns:
        ``auth`` for 401/403, ``rate_limit`` for 429, ``timeout`` for 408, ``server`` for 5xx and
        anything unexpected, ``invalid_request`` for other 4xx.
    """
    if status in (401, 403):
        return ErrorCategory.AUTHENTICATION
    if status == 429:
        return ErrorCategory.RATE_LIMIT
    if status == 408:
        return ErrorCategory.TIMEOUT
    if 400 <= status < 500:
        return ErrorCategory.INVALID_REQUEST
    return ErrorCategory.SERVER


def _truncate(text: str, limit: int = _MAX_TEXT) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _code(value: object) -> str | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return value
    return None


def _fields(error: object) -> tuple[str | None, str | None, str | int | None, str | None]:
    """(message, type, code, param) of an error object, string or flat error body."""
    if isinstance(error, str):
        return (error or None), None, None, None
    if not isinstance(error, Mapping):
        return None, None, None, None
    message = error.get("message")
    if not isinstance(message, str):
        message = error.get("detail") if isinstance(error.get("detail"), str) else None
    return (
        message or None,
        _str_or_none(error.get("type")),
        _code(error.get("code")),
        _str_or_none(error.get("param")),
    )


def _decode_body(raw_body: bytes) -> Any:
    """The body as JSON when it is JSON, else as text (``None`` when blank)."""
    text = raw_body.decode("utf-8", "replace")
    body: Any
    try:
        body = json.loads(text) if text.strip() else None
    except ValueError:
        body = text
    return body


def status_error(
    status: int,
    raw_body: bytes,
    *,
    redactor: Redactor,
    request_id: str | None,
    retry_after: float | None,
) -> APIStatusError:
    """Build the exception for an HTTP error response.

    Args:
        status: The response status.
        raw_body: The (possibly truncated) response body.
        redactor: Hides secrets in everything taken from the body.
        request_id: The ``x-request-id`` header.
        retry_after: The parsed retry hint, if any.

    Returns:
        The exception of the status's class, with the server's message, type, code and param.
    """
    body = _decode_body(raw_body)
    error = body.get("error", body) if isinstance(body, Mapping) else body
    message, error_type, code, param = _fields(error)
    if message is not None:
        message = _truncate(redactor.text(message))  # redacted first: a cut secret is unknown
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "HTTP error"
    summary = f"HTTP {status} {reason}" + (f": {message}" if message else "")
    cls: type[APIStatusError]
    if status == 400 and is_context_length_error(message, error_type, code):
        cls = ContextLengthExceededError
    elif status in _STATUS_CLASSES:
        cls = _STATUS_CLASSES[status]
    elif status >= 500:
        cls = InternalServerError
    else:
        cls = APIStatusError
    return cls(
        redactor.text(summary),
        status=status,
        error_type=redactor.text(error_type) if error_type else None,
        code=redactor.text(code) if isinstance(code, str) else code,
        param=redactor.text(param) if param else None,
        request_id=redactor.text(request_id) if request_id else None,
        retry_after=retry_after,
        body=redactor.value(error),
        category=category_for_status(status),
    )


def stream_error(error: object, *, redactor: Redactor, request_id: str | None) -> StreamError:
    """Build the exception for an error reported inside a stream.

    Args:
        error: The ``error`` member of the event (object or string), or the payload of an
            ``event: error`` / legacy ``error:`` line.
        redactor: Hides secrets in everything taken from the payload.
        request_id: The response's ``x-request-id``.

    Returns:
        A :class:`StreamError` whose category follows the error's code or type.
    """
    message, error_type, code, param = _fields(error)
    if error is not None and not isinstance(error, (str, Mapping)):
        message = json.dumps(error)
    if message is not None:
        message = _truncate(redactor.text(message))  # redacted first: a cut secret is unknown
    category = ErrorCategory.SERVER
    if isinstance(code, int) and 400 <= code < 600:
        category = category_for_status(code)
    else:
        for key in (error_type, code):
            if isinstance(key, str) and key.lower() in _TYPE_CATEGORIES:
                category = _TYPE_CATEGORIES[key.lower()]
                break
    return StreamError(
        redactor.text(f"error in stream: {message or 'the server reported an error'}"),
        error_type=redactor.text(error_type) if error_type else None,
        code=redactor.text(code) if isinstance(code, str) else code,
        param=redactor.text(param) if param else None,
        request_id=redactor.text(request_id) if request_id else None,
        body=redactor.value(error),
        category=category,
    )


def _one_line(text: str) -> str:
    return _truncate(" ".join(text.split()), 200)


def not_event_stream_error(
    content_type: str,
    raw_body: bytes,
    *,
    status: int,
    url: str,
    redactor: Redactor,
    request_id: str | None,
) -> NotEventStreamError:
    """Build the exception for a 2xx response that is not ``text/event-stream``.

    Args:
        content_type: The response's ``Content-Type``.
        raw_body: The start of the body.
        status: The response status.
        url: The URL the request went to.
        redactor: Hides secrets in everything taken from the body.
        request_id: The ``x-request-id`` header.

    Returns:
        The exception, naming the content type and showing what the body says (a JSON error's
        message, a JSON document's ``object``, or the start of the text), redacted.
    """
    media_type = _truncate(
        redactor.text(content_type.split(";", 1)[0].strip() or content_type), 100
    )
    body = _decode_body(raw_body)
    quoted: str | None = None  # what the server said, shown as a quoted excerpt
    message = f"the server did not return an event stream (content-type {media_type})"
    if isinstance(body, Mapping):
        error = body.get("error")
        kind = body.get("object")
        if error:
            quoted = _fields(error)[0] or json.dumps(error)
        elif isinstance(kind, str) and kind:
            shown = _truncate(redactor.text(kind), 60)
            message += f" but a whole {shown!r} object: does the server ignore stream=true?"
        else:
            quoted = json.dumps(body)
    elif isinstance(body, str):
        quoted = body
    elif body is not None:
        quoted = json.dumps(body)
    if quoted:  # redacted before it is cut, so that no part of a secret survives the cut
        message += f": {_one_line(redactor.text(quoted))!r}"
    message += (
        (" " if message.endswith("?") else ". ")
        + f"Check that base_url ({url.rsplit('/chat/completions', 1)[0]}) is an "
        "OpenAI-compatible API root (often ending in /v1) that supports streaming"
    )
    return NotEventStreamError(
        redactor.text(message),
        status=status,
        request_id=request_id,
        body=redactor.value(body),
    )
