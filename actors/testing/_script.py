"""The script of a :class:`~actors.testing.ScriptedOpenAIServer`: what it answers, piece by piece.

A :class:`Reply` is one answer (status, headers, body pieces with delays, and how it ends:
properly, by stalling forever, or by closing the socket); its class methods build the usual ones
(an SSE stream, a verbatim body such as a fixture file, an OpenAI-style error, a stall, a dropped
connection). :func:`sse_event` and :func:`sse_body` encode server-sent events.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

__all__ = ["Ending", "Framing", "Piece", "Reply", "sse_body", "sse_event"]

Ending = Literal["complete", "stall", "disconnect"]
"""How a reply ends after its pieces: properly, by hanging forever, or by closing the socket."""

Framing = Literal["chunked", "length", "close"]
"""Body framing: ``Transfer-Encoding: chunked``, ``Content-Length``, or end-of-body by closing."""


def sse_event(payload: Mapping[str, Any] | str | bytes) -> bytes:
    """Encode one SSE event.

    Args:
        payload: A mapping (sent as ``data: <compact JSON>``), or a str/bytes sent verbatim (e.g.
            ``": keep-alive\\n\\n"`` or ``"data: [DONE]\\n\\n"``).

    Returns:
        The bytes of the event, blank line included for mappings.
    """
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def sse_body(events: Iterable[Mapping[str, Any] | str | bytes], *, done: bool = True) -> bytes:
    """Encode a whole SSE body.

    Args:
        events: Chunk dicts or raw event text, as for :func:`sse_event`.
        done: Append ``data: [DONE]``.

    Returns:
        The body bytes.
    """
    body = b"".join(sse_event(e) for e in events)
    return body + b"data: [DONE]\n\n" if done else body


@attrs.frozen
class Piece:
    """A part of a reply body, sent as one write (one chunk with chunked framing).

    Attributes:
        data: The bytes to send.
        delay: Seconds to ``trio.sleep`` before sending it.
    """

    data: bytes
    delay: float = 0.0


def _header_tuple(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> Any:
    if headers is None:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((str(k), str(v)) for k, v in items)


def _to_pieces(pieces: Iterable[Piece]) -> tuple[Piece, ...]:
    return tuple(pieces)


@attrs.frozen
class Reply:
    """What the server answers to one request. Build it with the class methods.

    Attributes:
        status: HTTP status.
        headers: Response headers (besides the framing headers the server adds).
        pieces: The body, piece by piece.
        ending: After the pieces: ``complete`` (end the body properly), ``stall`` (send nothing
            more, never end) or ``disconnect`` (close the socket without ending the body).
        framing: ``chunked``, ``length`` (Content-Length of all pieces) or ``close``
            (no length; the body ends when the server closes the connection).
        send_headers: ``False`` to send nothing at all (with ``ending`` ``stall``: hang before the
            status line; ``disconnect``: close without answering).
        headers_delay: Seconds to wait before the status line.
        head_byte_delay: Seconds to wait before *each byte* of the status line and headers (a
            server trickling its answer); ``0`` sends the head in one write.
    """

    status: int = 200
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_header_tuple)
    pieces: tuple[Piece, ...] = attrs.field(default=(), converter=_to_pieces)
    ending: Ending = "complete"
    framing: Framing = "chunked"
    send_headers: bool = True
    headers_delay: float = 0.0
    head_byte_delay: float = 0.0

    @classmethod
    def sse(
        cls,
        events: Iterable[Mapping[str, Any] | str | bytes],
        *,
        done: bool = True,
        delay: float = 0.0,
        first_delay: float | None = None,
        ending: Ending = "complete",
        framing: Framing = "chunked",
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """A ``200 text/event-stream`` reply, one piece per event.

        Args:
            events: Chunk dicts (``data: <json>``) or raw event text/bytes.
            done: Send ``data: [DONE]`` after the events.
            delay: Seconds before each event (virtual time under ``autojump_clock``).
            first_delay: Seconds before the first event, if different from ``delay``.
            ending: How the reply ends after the last piece.
            framing: Body framing.
            headers: Extra response headers.
            request_id: Sent as ``x-request-id``.

        Returns:
            The reply.
        """
        datas = [sse_event(e) for e in events]
        if done:
            datas.append(b"data: [DONE]\n\n")
        pieces = [
            Piece(d, first_delay if i == 0 and first_delay is not None else delay)
            for i, d in enumerate(datas)
        ]
        return cls(
            status=200,
            headers=_stream_headers(headers, request_id),
            pieces=tuple(pieces),
            ending=ending,
            framing=framing,
        )

    @classmethod
    def raw(
        cls,
        body: bytes,
        *,
        piece_size: int | None = None,
        delay: float = 0.0,
        ending: Ending = "complete",
        framing: Framing = "chunked",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> Reply:
        """A reply with a given body, e.g. a recorded SSE fixture, sent verbatim.

        Args:
            body: The body bytes.
            piece_size: Split the body into pieces of this many bytes (one piece if ``None``).
            delay: Seconds before each piece.
            ending: How the reply ends after the last piece.
            framing: Body framing.
            status: HTTP status.
            headers: Extra response headers (``content-type`` defaults to ``text/event-stream``).
            request_id: Sent as ``x-request-id``.

        Returns:
            The reply.
        """
        size = piece_size or max(len(body), 1)
        pieces = tuple(Piece(body[i : i + size], delay) for i in range(0, len(body), size))
        return cls(
            status=status,
            headers=_stream_headers(headers, request_id),
            pieces=pieces,
            ending=ending,
            framing=framing,
        )

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "scripted error",
        *,
        type: str | None = None,
        code: str | int | None = None,
        param: str | None = None,
        body: Mapping[str, Any] | str | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        request_id: str | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """An HTTP error reply with an OpenAI-style JSON body.

        Args:
            status: HTTP status.
            message: ``error.message``.
            type: ``error.type`` (default derived from the status, as OpenAI does).
            code: ``error.code``.
            param: ``error.param``.
            body: Replaces the whole body (a mapping is sent as JSON, str/bytes verbatim).
            headers: Extra response headers.
            retry_after: ``retry-after`` header (seconds or an HTTP date string).
            retry_after_ms: ``retry-after-ms`` header.
            should_retry: ``x-should-retry: true|false``.
            request_id: ``x-request-id`` header.
            delay: Seconds before the status line.

        Returns:
            The reply.
        """
        if body is None:
            payload: bytes = json.dumps(
                {
                    "error": {
                        "message": message,
                        "type": type or _default_error_type(status),
                        "param": param,
                        "code": code,
                    }
                }
            ).encode()
            content_type = "application/json"
        elif isinstance(body, Mapping):
            payload = json.dumps(body).encode()
            content_type = "application/json"
        else:
            payload = body.encode() if isinstance(body, str) else body
            content_type = "text/plain; charset=utf-8"
        all_headers: dict[str, str] = {"content-type": content_type}
        if retry_after is not None:
            all_headers["retry-after"] = (
                retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
            )
        if retry_after_ms is not None:
            all_headers["retry-after-ms"] = f"{retry_after_ms:g}"
        if should_retry is not None:
            all_headers["x-should-retry"] = "true" if should_retry else "false"
        if request_id is not None:
            all_headers["x-request-id"] = request_id
        all_headers.update(headers or {})
        return cls(
            status=status,
            headers=all_headers,
            pieces=(Piece(payload),),
            framing="length",
            headers_delay=delay,
        )

    @classmethod
    def stall(cls, *, before_headers: bool = True, delay: float = 0.0) -> Reply:
        """A reply that never finishes.

        Args:
            before_headers: Hang before the status line (``True``) or right after ``200`` headers.
            delay: Seconds before the status line (when ``before_headers`` is ``False``).

        Returns:
            The reply.
        """
        return cls(
            status=200,
            headers=_stream_headers(None, None),
            ending="stall",
            send_headers=not before_headers,
            headers_delay=delay,
        )

    @classmethod
    def drop(cls, *, delay: float = 0.0) -> Reply:
        """Close the connection without answering (the client sees a connection error).

        Args:
            delay: Seconds before closing.

        Returns:
            The reply.
        """
        return cls(ending="disconnect", send_headers=False, headers_delay=delay)


def _default_error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _stream_headers(
    headers: Mapping[str, str] | None, request_id: str | None
) -> tuple[tuple[str, str], ...]:
    merged = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
    if request_id is not None:
        merged["x-request-id"] = request_id
    merged.update(headers or {})
    return tuple(merged.items())
