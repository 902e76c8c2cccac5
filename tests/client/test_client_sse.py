"""The incremental SSE decoder follows the WHATWG event-stream rules on raw bytes."""

from __future__ import annotations

import pytest

from actors.client._sse import SSEDecoder, SSEEvent


def decode(*pieces: bytes) -> tuple[list[SSEEvent], bool]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events.extend(decoder.feed(piece))
    return events, decoder.close()


def datas(*pieces: bytes) -> list[str]:
    return [e.data for e in decode(*pieces)[0]]


class TestLineEndings:
    """LF, CR and CRLF all end a line, wherever the reads are split."""

    @pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"])
    def test_each_line_ending(self, eol: bytes) -> None:
        """Every terminator style dispatches events the same way."""
        body = b"data: a" + eol + eol + b"data: b" + eol + eol
        assert datas(body) == ["a", "b"]

    def test_crlf_split_across_reads(self) -> None:
        """A CR at the end of one read and its LF at the start of the next are one terminator."""
        assert datas(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == ["a", "b"]

    def test_lone_cr_then_data_in_next_read(self) -> None:
        """A CR ending a read is a terminator even when the next read does not start with LF."""
        assert datas(b"data: a\r", b"\rdata: b\r", b"\r") == ["a", "b"]

    def test_mixed_endings(self) -> None:
        """Terminators may change from line to line."""
        assert datas(b"data: a\r\ndata: b\rdata: c\n\r\n") == ["a\nb\nc"]


class TestFields:
    """Fields, comments and values are interpreted as the specification says."""

    def test_comments_are_ignored(self) -> None:
        """Lines starting with a colon (keep-alives) never produce events."""
        assert datas(b": keep-alive\n\n:\n\ndata: x\n: inside\n\n") == ["x"]

    def test_multi_line_data_joined_with_newline(self) -> None:
        """Several data lines of one event are joined with a newline."""
        assert datas(b'data: {"a":\ndata: 1}\n\n') == ['{"a":\n1}']

    def test_data_without_space_and_with_two_spaces(self) -> None:
        """Exactly one space after the colon is removed."""
        assert datas(b"data:[DONE]\n\ndata:  x\n\n") == ["[DONE]", " x"]

    def test_field_without_colon_is_empty_data(self) -> None:
        """A bare 'data' line appends an empty line to the data."""
        assert datas(b"data\ndata: x\n\n") == ["\nx"]

    def test_event_id_retry(self) -> None:
        """event, id and retry are kept; id persists; retry needs digits only."""
        events, _ = decode(b"event: ping\nid: 7\nretry: 1500\ndata: a\n\ndata: b\nretry: x1\n\n")
        assert events == [
            SSEEvent(data="a", event="ping", id="7", retry=1500),
            SSEEvent(data="b", event="", id="7", retry=None),
        ]

    def test_id_with_nul_is_ignored(self) -> None:
        """An id containing NUL does not change the last event id."""
        events, _ = decode(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n")
        assert [e.id for e in events] == ["1", "1"]

    def test_unknown_fields_are_ignored(self) -> None:
        """Fields other than data/event/id/retry (and error) change nothing."""
        assert datas(b"foo: bar\ndata: a\nbaz\n\n") == ["a"]

    def test_event_without_data_is_not_dispatched(self) -> None:
        """A block with only event/id fields dispatches nothing."""
        assert datas(b"event: x\nid: 3\n\ndata: a\n\n") == ["a"]

    def test_legacy_error_field_becomes_error_event(self) -> None:
        """llama.cpp's old 'error:' line is surfaced as an event named 'error'."""
        events, _ = decode(b'error: {"code":500,"message":"boom"}\n\ndata: [DONE]\n\n')
        assert events[0] == SSEEvent(data='{"code":500,"message":"boom"}', event="error")
        assert events[1].data == "[DONE]"

    def test_byte_order_mark_is_skipped(self) -> None:
        """A UTF-8 BOM at the start of the stream, even split, is not part of the first line."""
        assert datas(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == ["a"]


class TestIncremental:
    """Events and characters split across reads are reassembled; incomplete ones are dropped."""

    def test_utf8_decoded_after_full_line(self) -> None:
        """A multi-byte character split between reads is decoded correctly."""
        raw = "data: héllo 🚀\n\n".encode()
        cut = raw.index("🚀".encode()) + 2
        assert datas(raw[:cut], raw[cut:]) == ["héllo 🚀"]

    def test_invalid_utf8_is_replaced(self) -> None:
        """Invalid bytes become U+FFFD instead of failing the stream."""
        assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]

    def test_long_line_in_tiny_reads(self) -> None:
        """A long line delivered byte by byte is assembled once."""
        payload = b"x" * 5000
        raw = b"data: " + payload + b"\n\n"
        assert datas(*(raw[i : i + 1] for i in range(len(raw)))) == [payload.decode()]

    def test_incomplete_last_event_is_discarded(self) -> None:
        """An event without its blank line is not dispatched, and close() reports it."""
        events, truncated = decode(b"data: a\n\ndata: b\n")
        assert [e.data for e in events] == ["a"]
        assert truncated

    def test_partial_line_is_reported_at_close(self) -> None:
        """Bytes of an unterminated line are discarded and reported."""
        assert decode(b"data: a\n\ndata: {")[1]

    def test_clean_end_reports_nothing(self) -> None:
        """A body ending on a blank line discards nothing."""
        assert decode(b"data: a\n\n")[1] is False

    def test_empty_pieces_are_harmless(self) -> None:
        """Empty reads neither produce nor break events."""
        assert datas(b"", b"data: a", b"", b"\n", b"", b"\n") == ["a"]
