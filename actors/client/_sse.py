"""Incremental, bytes-level decoder for ``text/event-stream`` bodies (WHATWG "Server-sent events").

The decoder is fed the raw byte pieces exactly as they come off the socket and returns the events
that became complete. It is written for the hot path of a token stream:

* line terminators are found with C-level ``bytes`` searches (``split``/``re.split``), never
  character by character in Python;
* a piece without any line terminator is only remembered (no re-scan of a growing buffer), so a very
  long line arriving in tiny reads stays linear;
* a CR at the very end of a read terminates its line at once; an LF at the start of the next read is
  then swallowed, so a CRLF split across two reads is one terminator, not two;
* UTF-8 is decoded once per complete line, so a multi-byte character split across reads is safe;
* a ``data:`` line, the common case, is recognised with one ``startswith``.

Interpretation follows the WHATWG event-stream rules: an empty line dispatches the pending event
(if it has any ``data``); lines starting with ``:`` are comments (keep-alives); ``field: value``
strips one space after the colon; several ``data`` lines are joined with ``\\n``; ``event``,
``id`` (ignored when it contains NUL) and ``retry`` (ASCII digits only) are kept; any other field
is ignored, with one deliberate exception: the legacy llama.cpp ``error:`` field, which is
surfaced as an event named ``error`` so that the client reports it instead of seeing an empty
success. At end of body, an event without its terminating blank line is discarded (call
:meth:`SSEDecoder.close` to learn whether that happened).

What the decoder holds for one event is capped (``max_event_bytes``, 8 MiB by default): a line
that never ends, or an event whose lines never end with a blank line, raises
:class:`~actors.client.EventTooLargeError` as soon as it passes the cap, so memory stays about
the cap whatever the server sends.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

import attrs

from ._errors import EventTooLargeError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SSEDecoder", "SSEEvent"]

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"

DEFAULT_MAX_EVENT_BYTES = 8 * 1024 * 1024
"""The default cap on one server-sent event: 8 MiB (a base64 image in a delta fits)."""


@attrs.frozen
class SSEEvent:
    """One dispatched server-sent event.

    Attributes:
        data: The ``data`` lines joined with ``"\\n"`` (UTF-8 decoded, invalid bytes replaced).
        event: The ``event`` field, ``""`` when the server sent none (the "message" default).
        id: The last event id seen so far in the stream (it persists across events), or ``""``.
        retry: The ``retry`` field of this event in milliseconds, or ``None``.
    """

    data: str
    event: str = ""
    id: str = ""
    retry: int | None = None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@attrs.define
class SSEDecoder:
    """Incremental event-stream decoder fed with raw bytes.

    Example:
        >>> decoder = SSEDecoder()
        >>> decoder.feed(b'data: {"a"')
        []
        >>> decoder.feed(b": 1}\\r")
        []
        >>> decoder.feed(b"\\n\\r\\n")
        [SSEEvent(data='{"a": 1}', event='', id='', retry=None)]

    The decoder holds no I/O resources; it is cheap to create one per response.

    Args:
        max_event_bytes: The most bytes held for one event: its field lines (``data:``,
            ``event:``, ``id:``, ``retry:``, the legacy ``error:``; names included, line ends
            not) plus the line still being received. Comments and ignored fields are not held
            and do not count. ``None``: no cap (not for untrusted servers).
    """

    max_event_bytes: int | None = attrs.field(default=DEFAULT_MAX_EVENT_BYTES, kw_only=True)
    _pending: list[bytes] = attrs.field(factory=list, init=False)
    _skip_lf: bool = attrs.field(default=False, init=False)
    _data: list[str] = attrs.field(factory=list, init=False)
    _event: str = attrs.field(default="", init=False)
    _last_id: str = attrs.field(default="", init=False)
    _retry: int | None = attrs.field(default=None, init=False)
    _error: list[str] = attrs.field(factory=list, init=False)
    _dirty: bool = attrs.field(default=False, init=False)
    _at_start: bool = attrs.field(default=True, init=False)
    #: Bytes of the current event's complete field lines, and of the unterminated line.
    _event_size: int = attrs.field(default=0, init=False)
    _pending_size: int = attrs.field(default=0, init=False)
    #: ``max_event_bytes``, or a bound nothing reaches (one comparison on the hot path).
    _limit: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        limit = self.max_event_bytes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError(f"max_event_bytes must be an int or None, not {limit!r}")
        if limit is not None and limit <= 0:
            raise ValueError(f"max_event_bytes={limit}: expected a positive number of bytes")
        self._limit = sys.maxsize if limit is None else limit

    def feed(self, piece: bytes, out: list[SSEEvent] | None = None) -> list[SSEEvent]:
        """Consume one piece of the body and return the events it completed, in order.

        Args:
            piece: The next bytes of the body, split anywhere (even inside a CRLF or a UTF-8
                sequence).
            out: A list to append the events to (and return), so that the events completed
                before an error are not lost with it.

        Returns:
            The events whose terminating blank line is in this piece (possibly none).

        Raises:
            EventTooLargeError: The current event passed ``max_event_bytes``. The events before
                it are in ``out``; the decoder drops what it held; the rest of the stream
                cannot be decoded reliably: stop feeding it.
        """
        if self._skip_lf:
            self._skip_lf = False
            if piece[:1] == b"\n":
                piece = piece[1:]
        if self._at_start and piece:
            # A UTF-8 byte order mark may open the stream; it can itself be split across reads.
            head = b"".join(self._pending) + piece
            if len(head) < 3 and _BOM.startswith(head):
                self._pending = [head]
                return [] if out is None else out
            self._at_start = False
            self._pending.clear()
            piece = head[3:] if head.startswith(_BOM) else head
        events: list[SSEEvent] = [] if out is None else out
        if not piece:
            return events
        has_cr = b"\r" in piece
        if not has_cr and b"\n" not in piece:
            self._pending.append(piece)
            self._pending_size += len(piece)
            if self._event_size + self._pending_size > self._limit:
                self._too_large()
            return events
        if self._pending:
            self._pending.append(piece)
            buffer = b"".join(self._pending)
            self._pending.clear()
        else:
            buffer = piece
        if has_cr:
            lines = _LINE_BREAK.split(buffer)
            if buffer[-1:] == b"\r":
                self._skip_lf = True
        else:
            lines = buffer.split(b"\n")
        rest = lines.pop()
        self._pending_size = len(rest)
        if rest:
            self._pending.append(rest)
        data = self._data
        limit = self._limit
        for line in lines:
            if line.startswith(b"data:"):
                self._event_size += len(line)
                if self._event_size > limit:
                    self._too_large()
                value = line[6:] if line[5:6] == b" " else line[5:]
                data.append(_decode(value))
                self._dirty = True
            elif not line:
                if self._dirty:
                    event = self._dispatch()
                    if event is not None:
                        events.append(event)
                    data = self._data
            elif line[0] != 0x3A:  # b":" starts a comment
                self._field(line)
        if self._event_size + self._pending_size > limit:
            self._too_large()
        return events

    def _too_large(self) -> NoReturn:
        limit = self._limit
        self._pending.clear()
        self._pending_size = 0
        self._skip_lf = False
        self._reset()
        raise EventTooLargeError(limit)

    def single_data(self, piece: bytes) -> str | None:
        """Fast path for the most common read: exactly one complete ``data: ...`` event.

        Args:
            piece: The next bytes of the body.

        Returns:
            The event's data if ``piece`` is exactly ``data: <value>\\n\\n`` and the decoder holds
            no partial state (the piece is then consumed, as :meth:`feed` would); otherwise
            ``None`` and nothing is consumed (call :meth:`feed`).
        """
        if (
            piece[-2:] == b"\n\n"
            and piece[:6] == b"data: "
            and not self._at_start
            and not self._skip_lf
            and not self._pending
            and not self._dirty
            and piece.count(b"\n") == 2
            and b"\r" not in piece
            and len(piece) - 2 <= self._limit
        ):
            return piece[6:-2].decode("utf-8", "replace")
        return None

    def close(self) -> bool:
        """Signal the end of the body.

        Any partly received line or event is discarded, as the specification requires, and the
        decoder is reset (the last event id excepted).

        Returns:
            ``True`` if something was discarded: bytes of an unterminated line or the fields of an
            event that never got its blank line. The caller may treat that as a truncated stream.
        """
        discarded = bool(self._pending) or self._dirty
        self._pending.clear()
        self._pending_size = 0
        self._skip_lf = False
        self._reset()
        return discarded

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"event":
            self._event = _decode(value)
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = _decode(value)
        elif name == b"retry":
            if value.isdigit():
                self._retry = int(value)
        elif name == b"error":
            # Legacy llama.cpp `server_sent_event(sink, "error", ...)`: not a standard field, but
            # ignoring it would turn a failed generation into an empty success.
            self._error.append(_decode(value))
        elif name == b"data":  # `data` without a colon: an empty data line
            self._data.append("")
        else:
            return
        self._dirty = True
        self._event_size += len(line)
        if self._event_size > self._limit:
            self._too_large()

    def _dispatch(self) -> SSEEvent | None:
        event: SSEEvent | None
        if self._error:
            event = SSEEvent(
                data="\n".join(self._error), event="error", id=self._last_id, retry=self._retry
            )
        elif self._data:
            event = SSEEvent(
                data="\n".join(self._data) if len(self._data) > 1 else self._data[0],
                event=self._event,
                id=self._last_id,
                retry=self._retry,
            )
        else:
            event = None
        self._reset()
        return event

    def _reset(self) -> None:
        self._event_size = 0
        self._data = []
        self._event = ""
        self._retry = None
        self._error = []
        self._dirty = False
