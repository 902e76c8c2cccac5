"""Sans-I/O stream parser: response body bytes in, typed chunks out, accumulated as they pass.

This is everything the client does with a 200 response body, without the network: SSE decoding,
the ``[DONE]`` sentinel, in-stream errors (``data: {"error": ...}``, ``event: error``, the legacy
llama.cpp ``error:`` field), malformed lines, and the end-of-body rule (no ``[DONE]`` and no
``finish_reason`` means the answer is incomplete). The client feeds it the pieces it reads; tests
feed it fixture bytes split anywhere.

It has two typed outputs, :attr:`ChunkStreamParser.chunks` (each chunk, as built by
:func:`~actors.client._chunks.parse_chunk`) and :attr:`ChunkStreamParser.texts` (only the content
text, with ``text_only``: chunks of the commonest shape are then folded into the accumulator
without building chunk objects); whatever the output, every chunk is accumulated.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

import attrs
import orjson

from ._accumulate import StreamAccumulator, StreamResult
from ._chunks import ChatCompletionChunk, parse_chunk
from ._errors import (
    ChatClientError,
    EventTooLargeError,
    IncompleteStreamError,
    MalformedChunkError,
    stream_error,
)
from ._sse import DEFAULT_MAX_EVENT_BYTES, SSEDecoder, SSEEvent
from .redaction import Redactor

__all__ = ["ChunkStreamParser"]

_SHOWN = 200


def _truncate(text: str, limit: int = _SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@attrs.define
class ChunkStreamParser:
    """Turns the bytes of a chat-completions SSE body into chunks and a result.

    After each :meth:`feed`, take what it completed from :attr:`chunks` (or :attr:`texts`), then
    check :attr:`failure` (an error the stream reported or caused; reading must stop) and
    :attr:`finished` (``[DONE]`` was received). Call :meth:`end_of_body` when the body ends.

    Args:
        redactor: Hides secrets in error messages built from the stream.
        request_id: Put on the errors (the response's ``x-request-id``).
        text_only: Append the non-empty content deltas of choice 0 to :attr:`texts` instead of
            the chunks to :attr:`chunks` (everything is still accumulated). Chunks of the
            commonest shape are then folded in without building chunk objects.
        max_event_bytes: The cap on one server-sent event (see
            :class:`~actors.client._sse.SSEDecoder`); passing it fails the stream with
            :class:`~actors.client.EventTooLargeError`. ``None``: no cap.
        chunks: Where completed chunks are appended (a new deque by default; the client passes
            the queue its iterator takes from).
        texts: Where content texts are appended with ``text_only`` (likewise).

    Attributes:
        failure: The error that ended the stream, if any.
        finished: Whether the stream ended (``[DONE]``, end of body, or a failure).
    """

    redactor: Redactor = attrs.field(factory=Redactor)
    request_id: str | None = None
    text_only: bool = False
    max_event_bytes: int | None = DEFAULT_MAX_EVENT_BYTES
    chunks: deque[ChatCompletionChunk] = attrs.field(factory=deque, repr=False)
    texts: deque[str] = attrs.field(factory=deque, repr=False)
    failure: ChatClientError | None = attrs.field(default=None, init=False)
    finished: bool = attrs.field(default=False, init=False)
    _decoder: SSEDecoder = attrs.field(
        default=attrs.Factory(
            lambda self: SSEDecoder(max_event_bytes=self.max_event_bytes), takes_self=True
        ),
        init=False,
        repr=False,
    )
    #: The accumulator the chunks were folded into (an attribute: read for every piece).
    accumulator: StreamAccumulator = attrs.field(factory=StreamAccumulator, init=False, repr=False)

    def result(self) -> StreamResult:
        """The result accumulated so far."""
        return self.accumulator.result()

    def feed(self, piece: bytes) -> None:
        """Decode one piece of the body; append the chunks it completes to :attr:`chunks` (their
        non-empty content texts to :attr:`texts` with ``text_only``), in order.

        Nothing is appended after the stream finished or failed.

        Args:
            piece: The next bytes of the body, split anywhere.
        """
        if self.finished:
            return
        data = self._decoder.single_data(piece)
        if data is not None:
            self._data(data)
            return
        events: list[SSEEvent] = []
        too_large: EventTooLargeError | None = None
        try:
            self._decoder.feed(piece, events)
        except EventTooLargeError as exc:  # after the events completed before it
            exc.request_id = self.request_id
            too_large = exc
        for event in events:
            if event.event:
                if event.event == "error":
                    self._error_event(event.data)
                    return
                if event.event == "ping":
                    continue
            self._data(event.data)
            if self.finished:
                return
        if too_large is not None:
            self._fail(too_large)

    def _data(self, data: str) -> None:
        """Handle the data of one message event."""
        if data[:1] != "{":
            stripped = data.strip()
            if stripped.startswith("[DONE]"):
                self.accumulator.mark_done()
                self.finished = True
                return
            if not stripped:
                return  # an empty data line: a keep-alive
        try:
            payload = orjson.loads(data)
        except ValueError:
            # orjson is strict where the standard library is lenient (NaN, integers beyond 64
            # bits, lone surrogates): only what neither accepts is malformed.
            try:
                payload = json.loads(data)
            except ValueError:
                self._malformed(data, "is not valid JSON")
                return
        if type(payload) is not dict:
            self._malformed(data, "is not a JSON object")
            return
        error = payload.get("error")
        if error:
            self._fail(stream_error(error, redactor=self.redactor, request_id=self.request_id))
            return
        if self.text_only:
            text = self.accumulator.add_content_payload(payload)
            if text is None:
                chunk = parse_chunk(payload)
                self.accumulator.add(chunk)
                text = chunk.content
            if text:
                self.texts.append(text)
            return
        chunk = parse_chunk(payload)
        self.accumulator.add(chunk)
        self.chunks.append(chunk)

    def end_of_body(self) -> None:
        """The body ended (cleanly). Sets :attr:`failure` to an
        :class:`~actors.client.IncompleteStreamError` unless ``[DONE]`` or a ``finish_reason``
        was received."""
        if self.finished:
            return
        truncated = self._decoder.close()
        self.finished = True
        if self.accumulator.finish_reason is not None:
            return  # the answer is complete; only [DONE] (and maybe usage) is missing
        detail = " (the last event was cut off)" if truncated else ""
        self.failure = IncompleteStreamError(
            "the stream ended without [DONE] and without a finish_reason: the answer is "
            f"incomplete{detail}",
            request_id=self.request_id,
        )

    def _fail(self, failure: ChatClientError) -> None:
        self.failure = failure
        self.finished = True

    def _error_event(self, data: str) -> None:
        """``event: error`` or the legacy llama.cpp ``error:`` field."""
        try:
            payload: Any = json.loads(data)
        except ValueError:
            payload = data
        if isinstance(payload, dict) and "error" in payload:
            payload = payload["error"]
        self._fail(stream_error(payload, redactor=self.redactor, request_id=self.request_id))

    def _malformed(self, data: str, problem: str) -> None:
        shown = _truncate(self.redactor.text(data))
        self._fail(
            MalformedChunkError(
                f"malformed data line in the stream: {shown!r} {problem}",
                request_id=self.request_id,
            )
        )
