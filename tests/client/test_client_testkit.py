"""The ScriptedOpenAIServer test kit is a real HTTP/1.1 server that follows its script."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
import trio.testing

from actors.client._accumulate import StreamAccumulator
from actors.client._chunks import parse_chunk
from actors.testing import (
    ChunkFactory,
    Piece,
    RecordedRequest,
    Reply,
    ScriptedOpenAIServer,
    sse_body,
    sse_event,
)

F = ChunkFactory()


class TestServing:
    """Replies are framed as scripted and requests are recorded."""

    async def test_records_requests(self, server: ScriptedOpenAIServer) -> None:
        """Method, path, lower-case headers, raw and parsed body are kept."""
        server.add(Reply.sse(F.text_stream(["x"])))
        async with httpx.AsyncClient() as http:
            response = await http.post(
                server.base_url + "/chat/completions",
                json={"model": "m"},
                headers={"X-Trace": "1"},
            )
        assert response.status_code == 200
        (request,) = server.requests
        assert (request.method, request.path, request.json) == (
            "POST",
            "/v1/chat/completions",
            {"model": "m"},
        )
        assert request.headers["x-trace"] == "1"
        assert json.loads(request.body) == {"model": "m"}

    @pytest.mark.parametrize("framing", ["chunked", "length", "close"])
    async def test_framings(self, server: ScriptedOpenAIServer, framing: str) -> None:
        """Chunked, Content-Length and close-delimited bodies all arrive whole."""
        body = sse_body(F.text_stream(["a", "b"]))
        server.add(Reply.raw(body, piece_size=10, framing=framing))  # type: ignore[arg-type]
        async with httpx.AsyncClient() as http:
            response = await http.post(server.base_url + "/chat/completions", content=b"{}")
        assert response.content == body
        expected = {"chunked": "chunked", "length": None, "close": None}[framing]
        assert response.headers.get("transfer-encoding") == expected

    async def test_keep_alive(self, server: ScriptedOpenAIServer) -> None:
        """Several requests reuse one connection."""
        server.add(Reply.sse([F.text("1")]), Reply.error(404), Reply.sse([F.text("2")]))
        async with httpx.AsyncClient() as http:
            statuses = [
                (await http.post(server.base_url + "/x", content=b"")).status_code for _ in range(3)
            ]
        assert statuses == [200, 404, 200]
        assert server.connections_opened == 1

    async def test_error_reply_headers(self, server: ScriptedOpenAIServer) -> None:
        """Retry and request-id headers and the JSON error body are sent."""
        server.add(
            Reply.error(
                429,
                "slow",
                code="rate_limit_exceeded",
                retry_after=1.5,
                retry_after_ms=1500,
                should_retry=True,
                request_id="req_1",
            )
        )
        async with httpx.AsyncClient() as http:
            response = await http.post(server.base_url + "/x", content=b"")
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1.5"
        assert response.headers["retry-after-ms"] == "1500"
        assert response.headers["x-should-retry"] == "true"
        assert response.headers["x-request-id"] == "req_1"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"

    async def test_disconnect_mid_body(self, server: ScriptedOpenAIServer) -> None:
        """ending='disconnect' closes without the terminating chunk."""
        server.add(Reply.sse([F.text("a")], done=False, ending="disconnect"))
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(server.base_url + "/x", content=b"")
        await trio.testing.wait_all_tasks_blocked()
        assert server.exchanges[0].outcome == "server_disconnected"

    async def test_client_disconnect_is_seen_during_a_stall(
        self, autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer
    ) -> None:
        """A client giving up on a stalled reply is counted, with the exchange's outcome."""
        server.add(Reply.stall(before_headers=False))
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(server.base_url + "/x", content=b"", timeout=3)
        with trio.fail_after(1):
            await server.wait_disconnected()
            await server.wait_connections_closed()
        assert server.client_disconnects == 1
        assert server.exchanges[0].outcome == "client_disconnected"

    async def test_piece_delays_are_virtual(
        self, autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer
    ) -> None:
        """Each piece waits its delay in trio time."""
        server.add(Reply(pieces=[Piece(b"a", 10.0), Piece(b"b", 20.0)]))
        start = trio.current_time()
        async with httpx.AsyncClient() as http:
            response = await http.post(server.base_url + "/x", content=b"", timeout=60)
        assert response.content == b"ab"
        assert trio.current_time() - start == pytest.approx(30.0)
        assert server.requests[0].received_at == pytest.approx(start)

    async def test_async_responder_and_unscripted_requests(self) -> None:
        """An async responder answers when the queue is empty; without one, 500 is counted."""

        async def responder(request: RecordedRequest) -> Reply:
            await trio.lowlevel.checkpoint()
            return Reply.error(418, request.path)

        async with ScriptedOpenAIServer(responder=responder) as with_responder:
            async with httpx.AsyncClient() as http:
                response = await http.get(with_responder.base_url + "/models")
            assert (response.status_code, response.json()["error"]["message"]) == (
                418,
                "/v1/models",
            )
        async with ScriptedOpenAIServer(replies=[Reply.error(400)]) as bare:
            async with httpx.AsyncClient() as http:
                first = await http.post(bare.base_url + "/x", content=b"")
                second = await http.post(bare.base_url + "/x", content=b"")
            assert (first.status_code, second.status_code) == (400, 500)
            assert bare.unexpected_requests == 1
            assert bare.pending_replies == 0

    async def test_started_in_a_nursery(self) -> None:
        """The server can run in the caller's nursery via nursery.start(server.run)."""
        server = ScriptedOpenAIServer(replies=[Reply.sse([F.text("hi")])])
        with pytest.raises(RuntimeError, match="not running"):
            _ = server.base_url
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            async with httpx.AsyncClient() as http:
                response = await http.post(server.base_url + "/x", content=b"")
            assert b"hi" in response.content
            nursery.cancel_scope.cancel()

    async def test_body_exceptions_propagate_unwrapped(self) -> None:
        """An exception raised inside the server's block comes out as itself, not in a group."""

        async def fail_inside() -> None:
            async with ScriptedOpenAIServer():
                raise KeyError("boom")

        with pytest.raises(KeyError):
            await fail_inside()


class TestChunkFactory:
    """The chunk helpers produce realistic, parseable streams."""

    def test_text_stream_roundtrip(self) -> None:
        """A text stream folds back into its text, finish reason and usage."""
        accumulator = StreamAccumulator()
        for chunk in F.text_stream(["Hel", "lo"], usage=(7, 2)):
            accumulator.add(parse_chunk(chunk))
        result = accumulator.result()
        assert (result.text, result.finish_reason) == ("Hello", "stop")
        assert result.usage is not None
        assert result.usage.total_tokens == 9

    def test_tool_call_stream_roundtrip(self) -> None:
        """Tool calls split into fragments reassemble exactly."""
        accumulator = StreamAccumulator()
        calls: list[tuple[str, str] | tuple[str, str, str]] = [
            ("get_weather", '{"city": "Paris"}', "call_1"),
            ("get_time", "{}"),
        ]
        for chunk in F.tool_call_stream(calls, fragment_size=3, text=["Sure."]):
            accumulator.add(parse_chunk(chunk))
        result = accumulator.result()
        assert result.text == "Sure."
        assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
            ("call_1", "get_weather", {"city": "Paris"}),
            ("call_scripted0001", "get_time", {}),
        ]
        assert result.finish_reason == "tool_calls"

    def test_sse_encoding(self) -> None:
        """Mappings become compact data events; strings and bytes are sent verbatim."""
        assert sse_event({"a": 1}) == b'data: {"a":1}\n\n'
        assert sse_event(": ping\n\n") == b": ping\n\n"
        assert sse_body([b"data: x\n\n"]) == b"data: x\n\ndata: [DONE]\n\n"
