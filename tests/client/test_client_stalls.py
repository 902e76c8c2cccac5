"""Nothing stalls: no server behaviour holds a stream open forever, grows its memory without
bound, is retried into a misleading error, or leaves a generator to the garbage collector.

Against a real HTTP server on 127.0.0.1 (``ScriptedOpenAIServer``), in virtual time where time
is involved. See docs/trust.md, "Nothing stalls".
"""

from __future__ import annotations

import gc
import json
import tracemalloc
import warnings

import httpx
import pytest
import trio
import trio.testing

from actors.client import (
    DEFAULT_MAX_EVENT_BYTES,
    ChatCompletionsClient,
    ChatStream,
    EventTooLargeError,
    InvalidParameterError,
    NotEventStreamError,
    StreamIdleTimeoutError,
    Timeouts,
)
from actors.client._sse import SSEDecoder, SSEEvent
from actors.testing import Piece, Reply, ScriptedOpenAIServer, sse_event

from .client_helpers import API_KEY, HELLO, NO_RETRY, F, client_for, make_request

#: Idle applies from the start of every attempt: no first-token deadline.
IDLE_ONLY = Timeouts(first_token=None, idle=4.0)
TEXT_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'
MiB = 1024 * 1024


async def collect_text(stream: ChatStream, into: list[str]) -> None:
    async for text in stream.text_deltas():
        into.append(text)


class TestIdleFromTheStart:
    """With ``first_token=None`` the idle timeout bounds every wait from the start of the
    attempt: bytes that complete no chunk (keep-alive comments, a trickled event or a trickled
    response head) cannot extend it."""

    @pytest.mark.parametrize(
        "reply",
        [
            pytest.param(
                Reply(
                    headers={"content-type": "text/event-stream"},
                    pieces=[Piece(b": keep-alive\n\n", delay=1.0) for _ in range(300)],
                    ending="stall",
                ),
                id="keep-alive-comments",
            ),
            pytest.param(
                Reply.raw(TEXT_EVENT * 2, piece_size=1, delay=1.0, ending="stall"),
                id="trickled-event",
            ),
            pytest.param(
                Reply(
                    headers={"content-type": "text/event-stream"},
                    pieces=[Piece(TEXT_EVENT)],
                    head_byte_delay=1.0,
                    ending="stall",
                ),
                id="trickled-head",
            ),
        ],
    )
    async def test_bytes_without_a_chunk_do_not_extend_idle(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        reply: Reply,
    ) -> None:
        """A byte every second, never a chunk within idle: StreamIdleTimeoutError exactly idle
        seconds after the request, and the connection is closed."""
        server.add(reply)
        async with client_for(server, timeouts=IDLE_ONLY, retry=NO_RETRY) as client:
            start = trio.current_time()
            with trio.fail_after(120), pytest.raises(StreamIdleTimeoutError) as caught:
                await client.complete(make_request())
            assert trio.current_time() - start == pytest.approx(4.0)
        assert caught.value.category == "timeout"
        assert "4 s" in str(caught.value)
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)

    async def test_idle_before_output_is_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """Nothing was delivered, so the idle timeout before any output is retried like a
        first-token timeout; the next attempt succeeds."""
        server.add(
            Reply(
                headers={"content-type": "text/event-stream"},
                pieces=[Piece(b": keep-alive\n\n", delay=1.0) for _ in range(300)],
            ),
            Reply.sse(HELLO),
        )
        async with client_for(server, timeouts=IDLE_ONLY) as client:
            with trio.fail_after(120):
                result = await client.complete(make_request())
        assert result.text == "Hello!"
        assert len(server.requests) == 2
        assert server.exchanges[0].outcome == "client_disconnected"

    async def test_chunks_within_idle_keep_the_stream_alive(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """A slow head and a role chunk are fine when each wait stays under idle: the idle
        rule counts chunks, from the start, not a deadline for the whole answer."""
        server.add(
            Reply(
                headers={"content-type": "text/event-stream"},
                headers_delay=3.0,
                pieces=[Piece(b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n')]
                + [Piece(TEXT_EVENT, delay=3.5) for _ in range(10)]
                + [Piece(b"data: [DONE]\n\n", delay=3.5)],
            )
        )
        async with client_for(server, timeouts=IDLE_ONLY, retry=NO_RETRY) as client:
            start = trio.current_time()
            result = await client.complete(make_request())
        assert result.text == "x" * 10
        assert trio.current_time() - start == pytest.approx(3.0 + 11 * 3.5)


def huge_line(total: int, piece: int = 64 * 1024) -> Reply:
    """A 200 event stream whose body is one ``data:`` line of ``total`` bytes that never ends,
    sent in pieces of ``piece`` bytes (one shared bytes object: the server holds little)."""
    block = b"x" * piece
    pieces = [Piece(b"data: " + block)] + [Piece(block) for _ in range(total // piece - 1)]
    return Reply(headers={"content-type": "text/event-stream"}, pieces=pieces)


class TestEventSizeCap:
    """One server-sent event may not grow past ``max_event_bytes`` (default 8 MiB): the stream
    fails with :class:`EventTooLargeError` naming the cap, the memory held stays about the cap,
    and the rest of the body is not read."""

    async def test_a_64_mib_line_is_refused_with_bounded_memory(
        self, server: ScriptedOpenAIServer
    ) -> None:
        """A 64 MiB line without a newline: refused at the default cap, memory stays under
        1.5x the cap, not retried, and the connection is closed without reading the rest."""
        server.add(huge_line(64 * MiB))
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            async with ChatCompletionsClient(api_key=API_KEY, base_url=server.base_url) as client:
                with pytest.raises(EventTooLargeError) as caught:
                    await client.complete(make_request())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            if not tracing:
                tracemalloc.stop()
        error = caught.value
        assert 8 * MiB == DEFAULT_MAX_EVENT_BYTES
        assert error.max_event_bytes == DEFAULT_MAX_EVENT_BYTES
        assert "8 MiB" in str(error)
        assert "max_event_bytes" in str(error)
        assert error.category == "server"
        assert error.partial_result is not None
        assert peak < 1.5 * DEFAULT_MAX_EVENT_BYTES, f"peak {peak / MiB:.1f} MiB"
        assert len(server.requests) == 1
        with trio.fail_after(5):
            await server.wait_client_disconnects(1)

    async def test_the_cap_is_configurable(self, server: ScriptedOpenAIServer) -> None:
        """``max_event_bytes`` on the client: an event at the cap passes, one byte more fails,
        after the chunks before it were delivered."""
        cap = 64 * 1024
        len_y = cap - len(b"data: " + json.dumps(F.text(""), separators=(",", ":")).encode())
        at_cap = F.text("y" * len_y)
        assert len(sse_event(at_cap)) == cap + 2  # the data line, then the blank line
        over = F.text("z" * cap)
        server.add(Reply.sse([F.role(), at_cap, F.finish()]), Reply.sse([F.text("a"), over]))
        async with client_for(server, max_event_bytes=cap) as client:
            assert (await client.complete(make_request())).text == "y" * len_y
            seen: list[str] = []
            async with client.stream(make_request()) as stream:
                with pytest.raises(EventTooLargeError, match="64 KiB") as caught:
                    await collect_text(stream, seen)
        assert seen == ["a"]
        assert caught.value.partial_result is not None
        assert caught.value.partial_result.text == "a"
        assert "ChatCompletionsClient(max_event_bytes=" in str(caught.value)

    async def test_many_data_lines_without_a_blank_line(self, server: ScriptedOpenAIServer) -> None:
        """An event made of many short ``data:`` lines that never ends counts as one event."""
        server.add(Reply.raw(b"data: 0123456789\n" * 20_000))
        async with client_for(server, max_event_bytes=100_000, retry=NO_RETRY) as client:
            with pytest.raises(EventTooLargeError, match="100000 bytes"):
                await client.complete(make_request())

    @pytest.mark.parametrize("value", [0, -1, 1.5, True, "8MiB"])
    def test_an_invalid_cap_is_refused(self, value: object) -> None:
        """The cap is a positive number of bytes; anything else fails at construction."""
        with pytest.raises(InvalidParameterError, match="max_event_bytes"):
            ChatCompletionsClient(api_key="k", max_event_bytes=value)  # type: ignore[arg-type]

    @pytest.mark.parametrize("split", [None, 1, 7])
    def test_decoder_cap(self, split: int | None) -> None:
        """The decoder itself enforces the cap, whole or split anywhere: an event's field lines
        (``data:``, the legacy ``error:``...) and the line not yet ended count; ended comments
        and dispatched events do not add up."""
        decoder = SSEDecoder(max_event_bytes=10)

        def feed(data: bytes) -> list[SSEEvent]:
            if split is None:
                return decoder.feed(data)
            events: list[SSEEvent] = []
            for start in range(0, len(data), split):
                events += decoder.feed(data[start : start + split])
            return events

        ok = b": ping\n" * 5 + b"data: 0123\n\n"  # ended comments are not kept: no count
        assert [e.data for e in feed(ok * 3)] == ["0123"] * 3
        with pytest.raises(EventTooLargeError, match="10 bytes"):
            feed(b"data: 01\ndata: 23\n\n")  # 8 + 8 bytes of lines
        decoder = SSEDecoder(max_event_bytes=10)
        with pytest.raises(EventTooLargeError):
            feed(b"error: 0123\n\n")
        decoder = SSEDecoder(max_event_bytes=10)
        with pytest.raises(EventTooLargeError):
            feed(b"data: 01234")  # no line end yet
        assert SSEDecoder(max_event_bytes=None).feed(b"data: " + b"x" * MiB + b"\n\n")


class TestNotAnEventStream:
    """A 2xx answer that is not ``text/event-stream`` fails at once, naming the content type,
    and is not retried (it would be the same again)."""

    @pytest.mark.parametrize(
        ("content_type", "body", "detail"),
        [
            (
                "text/html; charset=utf-8",
                b"<!doctype html><html><head><title>Welcome</title></head><body>Sign in "
                + API_KEY.encode()
                + b"</body></html>",
                "<!doctype html>",
            ),
            (
                "application/json",
                json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": "Hi"}}
                        ],
                    }
                ).encode(),
                "but a whole 'chat.completion' object: does the server ignore stream=true?",
            ),
            (
                "application/json",
                json.dumps({"error": {"message": f"bad key {API_KEY}", "type": "auth"}}).encode(),
                "bad key",
            ),
        ],
        ids=["html", "json-completion", "json-error"],
    )
    async def test_not_retried_and_named(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
        content_type: str,
        body: bytes,
        detail: str,
    ) -> None:
        """HTML, a whole JSON completion or a JSON error with status 200: one request,
        NotEventStreamError naming the content type, the body redacted."""
        server.add(
            Reply.raw(body, headers={"content-type": content_type}, request_id="req_html"),
            Reply.sse(HELLO),
        )
        with pytest.raises(NotEventStreamError) as caught:
            await client.complete(make_request())
        error = caught.value
        media_type = content_type.split(";")[0]
        assert str(error).startswith(
            f"the server did not return an event stream (content-type {media_type})"
        )
        assert detail in str(error)
        assert "base_url" in str(error)
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error.body)
        assert (error.status, error.request_id, error.attempts) == (200, "req_html", 1)
        assert error.category == "server"
        assert len(server.requests) == 1

    async def test_no_content_type_is_read_as_a_stream(self, server: ScriptedOpenAIServer) -> None:
        """A server that sends no Content-Type at all is given the benefit of the doubt."""
        server.add(
            Reply(
                pieces=[
                    Piece(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'),
                    Piece(b"data: [DONE]\n\n"),
                ]
            )
        )
        async with client_for(server) as client:
            assert (await client.complete(make_request())).text == "x"


class TestCancelledWhileSendingTheBody:
    """A request cancelled in the middle of sending its body leaves nothing for the garbage
    collector: no async generator, so no ResourceWarning."""

    async def test_no_generator_is_left_behind(self) -> None:
        """16 MiB of body to a server that stopped reading: the send blocks; cancelling it
        leaves no unfinished async generator (trio warns about each one it finds)."""
        request = make_request(messages=[{"role": "user", "content": "x" * (16 * MiB)}])
        async with (
            ScriptedOpenAIServer(stall_request_bodies=True) as server,
            client_for(server, retry=NO_RETRY) as client,
        ):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.complete, request)
                    await server.wait_request_heads(1)
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.cancel_scope.cancel()
                gc.collect()
                await trio.testing.wait_all_tasks_blocked()
            assert server.requests == []  # the body never arrived whole
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


class TestScriptedServerStalls:
    """The test kit's two ways of stalling a client, used above."""

    async def test_head_byte_delay_trickles_the_head(
        self, autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer
    ) -> None:
        """Each byte of the status line and headers waits its delay; the body follows."""
        reply = Reply(
            headers={"content-type": "text/plain"},
            pieces=[Piece(b"ok")],
            framing="length",
            head_byte_delay=0.5,
        )
        server.add(reply)
        start = trio.current_time()
        async with httpx.AsyncClient() as http:
            response = await http.post(server.base_url + "/x", content=b"", timeout=1)
        assert response.content == b"ok"
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
        head += b"server: ScriptedOpenAIServer\r\n\r\n"
        assert trio.current_time() - start == pytest.approx(0.5 * len(head))

    async def test_stall_request_bodies(self) -> None:
        """Heads are counted, bodies are never read, so no request is recorded; a request
        without a body is served as usual."""
        async with (
            ScriptedOpenAIServer(stall_request_bodies=True, replies=[Reply.error(404)]) as server,
            httpx.AsyncClient() as http,
        ):
            assert (await http.get(server.base_url + "/models")).status_code == 404
            with trio.move_on_after(0.2):
                await http.post(server.base_url + "/x", content=b"body")
            assert server.request_heads == 2
            assert [r.path for r in server.requests] == ["/v1/models"]
