"""The client against a real HTTP server on 127.0.0.1: retries, timeouts, cancellation, requests.

Everything involving time runs under ``autojump_clock`` (virtual time), with the scripted server in
the same trio run.
"""

from __future__ import annotations

import gc
import itertools
import weakref
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest
import trio
import trio.testing

from actors.client import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ChatCompletionChunk,
    ChatCompletionsClient,
    ChatStream,
    ConflictError,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    IncompleteStreamError,
    InternalServerError,
    RateLimitError,
    RetryPolicy,
    ServerDisconnectedError,
    StreamIdleTimeoutError,
    Timeouts,
    TotalTimeoutError,
)
from actors.testing import Piece, RecordedRequest, Reply, ScriptedOpenAIServer

from .client_helpers import API_KEY, HELLO, NO_RETRY, F, client_for, make_request

E = TypeVar("E", bound=Exception)


def gaps(server: ScriptedOpenAIServer) -> list[float]:
    times = [r.received_at for r in server.requests]
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


async def collect(stream: ChatStream, into: list[str]) -> None:
    async for chunk in stream:
        into.append(chunk.content)


async def failing_call(client: ChatCompletionsClient, error: type[E]) -> tuple[E, float]:
    """Run a completion that must fail with ``error``; return the error, and how long (trio
    seconds) the call took."""
    start = trio.current_time()
    with pytest.raises(error) as caught:
        await client.complete(make_request())
    return caught.value, trio.current_time() - start


def since_first_token(stream: ChatStream) -> float:
    """Trio seconds since the stream's first output arrived (it must have)."""
    assert stream.first_token_at is not None
    return trio.current_time() - stream.first_token_at


def cut_after(*events: dict[str, object]) -> Reply:
    """A stream of ``events`` whose connection is then closed (no ``[DONE]``, no end)."""
    return Reply.sse(events, done=False, ending="disconnect")


def one_chunk_then_keep_alives() -> Reply:
    """A content chunk, then a keep-alive comment every 2 s (ten of them), then nothing."""
    pieces = [Piece(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n')]
    pieces += [Piece(b": keep-alive\n\n", delay=2.0) for _ in range(10)]
    return Reply(headers={"content-type": "text/event-stream"}, pieces=pieces)


_STALL, _STALL_AFTER_HEADERS = Reply.stall(), Reply.stall(before_headers=False)
_ROLE_ONLY = Reply.sse([F.role()], done=False, ending="stall", delay=1)
_SLOW_TEXT = Reply.sse(F.text_stream(["a"] * 20), delay=1.0)
_IDLE_ONLY = Timeouts(first_token=None, idle=4.0)
_FIRST, _TOTAL, _IDLE = FirstTokenTimeoutError, TotalTimeoutError, StreamIdleTimeoutError

#: A reply, the client's timeouts (``None``: the tests' defaults, first token 10 s, idle 5 s),
#: the error, after how many seconds, and the text received by then.
DEADLINES: dict[str, tuple[Reply, Timeouts | None, type[APITimeoutError], float, str]] = {
    "stall": (_STALL, None, _FIRST, 10.0, ""),
    "stall_after_headers": (_STALL_AFTER_HEADERS, None, _FIRST, 10.0, ""),
    # A role-only chunk does not stop the first-token clock.
    "role_chunk_only": (_ROLE_ONLY, None, _FIRST, 10.0, ""),
    # A stream still running at the total deadline.
    "total": (_SLOW_TEXT, Timeouts(total=6.5), _TOTAL, 6.5, "aaaaa"),
    # With first_token <= idle (reads bounded by httpx's per-read timeout), a near total deadline
    # is still exact.
    "total_network_idle_path": (
        _SLOW_TEXT, Timeouts(first_token=5.0, idle=5.0, total=7.5), _TOTAL, 7.5, "aaaaaa"
    ),
    # With first_token disabled, a stall before any output is an idle timeout.
    "idle_from_the_start": (_STALL, _IDLE_ONLY, _IDLE, 4.0, ""),
    "idle_after_headers": (_STALL_AFTER_HEADERS, _IDLE_ONLY, _IDLE, 4.0, ""),
}  # fmt: skip


class TestRetries:
    """Transient failures before any output are retried per the policy; nothing else is."""

    async def test_retry_after_headers_are_honoured(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """429 retry-after-ms: 150, then 503 retry-after: 0.3, then success: waits exactly."""
        server.add(
            Reply.error(429, retry_after_ms=150),
            Reply.error(503, retry_after=0.3),
            Reply.sse(HELLO),
        )
        result = await client.complete(make_request())
        assert result.text == "Hello!"
        assert len(server.requests) == 3
        assert gaps(server) == [0.15, 0.3]

    async def test_429_then_success(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A rate limit followed by a stream succeeds, reporting two attempts."""
        server.add(Reply.error(429, "slow down", retry_after=2), Reply.sse(HELLO))
        async with client.stream(make_request()) as stream:
            texts = [chunk.content async for chunk in stream]
        assert "".join(texts) == "Hello!"
        assert stream.attempts == 2
        assert gaps(server) == [2.0]

    async def test_500_three_times_fails_after_three_requests(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Persistent 500s: 3 requests with exponential backoff, then InternalServerError."""
        server.add(*(Reply.error(500, "boom", request_id=f"req_{i}") for i in range(3)))
        error, _ = await failing_call(client, InternalServerError)
        assert len(server.requests) == 3
        assert error.attempts == 3
        assert (error.status, error.category, error.request_id) == (500, "server", "req_2")
        first, second = gaps(server)
        assert 0.375 <= first <= 0.5
        assert 0.75 <= second <= 1.0

    async def test_connection_refused(self, autojump_clock: trio.testing.MockClock) -> None:
        """Nothing listening: three connection attempts, then APIConnectionError."""
        sock = trio.socket.socket()
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async with ChatCompletionsClient(
            api_key=API_KEY, base_url=f"http://127.0.0.1:{port}/v1"
        ) as client:
            error, took = await failing_call(client, APIConnectionError)
        assert error.category == "connectivity"
        assert error.attempts == 3
        assert 1.125 <= took <= 1.5

    @pytest.mark.parametrize(("should_retry", "requests"), [(True, 2), (False, 1)])
    async def test_x_should_retry_overrides(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
        should_retry: bool,
        requests: int,
    ) -> None:
        """x-should-retry: true retries a 400; x-should-retry: false stops a 500."""
        status = 400 if should_retry else 500
        server.add(Reply.error(status, should_retry=should_retry), Reply.sse(HELLO))
        if should_retry:
            assert (await client.complete(make_request())).text == "Hello!"
        else:
            await failing_call(client, InternalServerError)
        assert len(server.requests) == requests

    async def test_400_is_not_retried(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """A bad request fails at once with the server's type, code and param."""
        server.add(
            Reply.error(
                400,
                "Unsupported parameter: 'max_tokens'",
                code="unsupported_parameter",
                param="max_tokens",
                request_id="req_abc",
            )
        )
        error, _ = await failing_call(client, BadRequestError)
        assert len(server.requests) == 1
        assert (error.error_type, error.code, error.param) == (
            "invalid_request_error",
            "unsupported_parameter",
            "max_tokens",
        )
        assert error.category == "invalid_request"
        assert "Unsupported parameter" in str(error)
        assert "req_abc" in str(error)

    async def test_retry_after_above_limit_is_not_retried(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """A 429 asking for 300 s is final, and carries the hint."""
        server.add(Reply.error(429, retry_after=300))
        error, _ = await failing_call(client, RateLimitError)
        assert len(server.requests) == 1
        assert error.retry_after == 300
        assert error.category == "rate_limit"

    async def test_409_is_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A conflict is transient."""
        server.add(Reply.error(409), Reply.sse(HELLO))
        assert (await client.complete(make_request())).text == "Hello!"
        assert len(server.requests) == 2

    async def test_409_exhausted_raises_conflict(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """Without retries left, the 409 surfaces as ConflictError."""
        server.add(Reply.error(409))
        async with client_for(server, retry=NO_RETRY) as client:
            await failing_call(client, ConflictError)

    async def test_dropped_connection_before_response_is_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A connection closed without an answer is a retried connection error."""
        server.add(Reply.drop(), Reply.sse(HELLO))
        assert (await client.complete(make_request())).text == "Hello!"
        assert len(server.requests) == 2

    async def test_disconnect_before_any_output_is_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Only the role chunk arrived before the cut: nothing was delivered, so retry."""
        server.add(cut_after(F.role()), Reply.sse(HELLO))
        result = await client.complete(make_request())
        assert result.text == "Hello!"
        assert result.chunk_count == len(HELLO)
        assert len(server.requests) == 2

    async def test_disconnect_after_content_is_not_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A cut after content: ServerDisconnectedError, one request, partial result kept."""
        server.add(cut_after(F.role(), F.text("Half "), F.text("an answer")))
        seen: list[str] = []
        async with client.stream(make_request()) as stream:
            with pytest.raises(ServerDisconnectedError) as caught:
                await collect(stream, seen)
        assert "".join(seen) == "Half an answer"
        assert stream.result().text == "Half an answer"
        assert caught.value.partial_result == stream.result()
        assert caught.value.category == "connectivity"
        assert len(server.requests) == 1

    async def test_empty_stream_is_incomplete(self, server: ScriptedOpenAIServer) -> None:
        """A 200 whose body ends with no event at all is an incomplete answer."""
        server.add(Reply.sse([], done=False, framing="close"))
        async with client_for(server, retry=NO_RETRY) as client:
            await failing_call(client, IncompleteStreamError)

    async def test_total_timeout_prevents_long_backoff(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """A retry whose wait would overrun the total deadline is not attempted."""
        server.add(Reply.error(503, retry_after=5))
        async with client_for(server, timeouts=Timeouts(total=3)) as client:
            await failing_call(client, InternalServerError)
        assert len(server.requests) == 1


class TestTimeouts:
    """Each deadline raises its own exception, measured in trio time."""

    @pytest.mark.parametrize(
        ("reply", "timeouts", "error", "seconds", "partial"), DEADLINES.values(), ids=DEADLINES
    )
    @pytest.mark.parametrize("as_text", [False, True], ids=["chunks", "text"])
    async def test_a_deadline_fails_the_call_on_time_and_closes_the_socket(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        reply: Reply,
        timeouts: Timeouts | None,
        error: type[APITimeoutError],
        seconds: float,
        partial: str,
        as_text: bool,
    ) -> None:
        """Each deadline raises its own error exactly when it passes, with what had arrived,
        and the socket is closed; the same when the stream is read with ``text_deltas()``
        (which reads past chunks without text, as the role chunk, before the first output)."""
        server.add(reply)
        texts: list[str] = []

        async def read_texts(client: ChatCompletionsClient) -> None:
            async with client.stream(make_request()) as stream:
                async for text in stream.text_deltas():
                    texts.append(text)

        async with client_for(server, retry=NO_RETRY, timeouts=timeouts) as client:
            if as_text:
                start = trio.current_time()
                with pytest.raises(error) as caught:
                    await read_texts(client)
                failure, took = caught.value, trio.current_time() - start
                assert "".join(texts) == partial
            else:
                failure, took = await failing_call(client, error)
        assert took == pytest.approx(seconds)
        assert failure.category == "timeout"
        assert failure.partial_result is not None
        assert failure.partial_result.text == partial
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)

    async def test_first_token_timeout_is_retried(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """With retries, a stalled attempt is abandoned and the next one succeeds."""
        server.add(Reply.stall(), Reply.sse(HELLO))
        result = await client.complete(make_request())
        assert result.text == "Hello!"
        assert len(server.requests) == 2
        assert server.exchanges[0].outcome == "client_disconnected"

    async def test_idle_timeout_mid_stream(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A stall after content: StreamIdleTimeoutError after idle seconds, not retried."""
        server.add(Reply.sse([F.role(), F.text("So far")], done=False, ending="stall"))
        async with client.stream(make_request()) as stream:
            with pytest.raises(StreamIdleTimeoutError) as caught:
                await collect(stream, [])
            assert since_first_token(stream) == pytest.approx(5.0)
        assert caught.value.partial_result is not None
        assert caught.value.partial_result.text == "So far"
        assert len(server.requests) == 1
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)

    async def test_keep_alives_do_not_reset_idle(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Comments every 2 s do not count as chunks: idle fires 5 s after the last chunk."""
        server.add(one_chunk_then_keep_alives())
        async with client.stream(make_request()) as stream:
            with pytest.raises(StreamIdleTimeoutError):
                await collect(stream, [])
            assert since_first_token(stream) == pytest.approx(5.0)

    async def test_network_idle_path_stall(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """With first_token <= idle, a mid-stream stall is caught by the per-read timeout."""
        server.add(Reply.sse([F.role(), F.text("So far")], done=False, ending="stall"))
        timeouts = Timeouts(first_token=5.0, idle=5.0)
        async with (
            client_for(server, timeouts=timeouts) as client,
            client.stream(make_request()) as stream,
        ):
            with pytest.raises(StreamIdleTimeoutError):
                await collect(stream, [])
            assert since_first_token(stream) == pytest.approx(5.0)
        assert len(server.requests) == 1

    async def test_network_idle_path_keep_alives(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """On that path keep-alives still cannot extend idle: the first one after it fails."""
        server.add(one_chunk_then_keep_alives())
        timeouts = Timeouts(first_token=5.0, idle=5.0)
        async with (
            client_for(server, timeouts=timeouts) as client,
            client.stream(make_request()) as stream,
        ):
            with pytest.raises(StreamIdleTimeoutError, match="keep-alives"):
                await collect(stream, [])
            assert since_first_token(stream) == pytest.approx(6.0)

    async def test_slow_steady_stream_is_fine(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Chunks 4 s apart never hit a 5 s idle timeout, however long the stream."""
        server.add(Reply.sse(F.text_stream(["a"] * 12), delay=4.0))
        result = await client.complete(make_request())
        assert result.text == "a" * 12

    async def test_connect_timeout(self, autojump_clock: trio.testing.MockClock) -> None:
        """A listener whose accept queue is full never completes the TCP handshake:
        ConnectTimeoutError after `connect` seconds, retried like a connection error."""
        listener = trio.socket.socket()
        filler = trio.socket.socket()
        try:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            await filler.connect(("127.0.0.1", port))  # fills the queue of length 1
            async with ChatCompletionsClient(
                api_key=API_KEY,
                base_url=f"http://127.0.0.1:{port}/v1",
                timeouts=Timeouts(connect=2.0),
                retry=RetryPolicy(max_retries=1),
            ) as client:
                error, took = await failing_call(client, ConnectTimeoutError)
            assert error.attempts == 2
            assert error.category == "timeout"
            assert 4.375 <= took <= 4.5
        finally:
            filler.close()
            listener.close()

    async def test_pool_wait_is_a_connect_timeout(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        """Waiting longer than connect for a pooled connection raises ConnectTimeoutError."""
        server.add(Reply.sse([F.role()], done=False, ending="stall"))
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1))
        timeouts = Timeouts(connect=2.0, first_token=None, idle=None)
        async with (
            http,
            client_for(server, retry=NO_RETRY, timeouts=timeouts, http_client=http) as client,
            client.stream(make_request()) as holding,
        ):
            assert holding.attempts == 1
            _, took = await failing_call(client, ConnectTimeoutError)
            assert took == pytest.approx(2.0)


class TestCancellation:
    """Cancelling the consumer closes the response at once; nothing outlives the call."""

    async def test_cancel_mid_stream_closes_the_socket(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A consumer cancelled while reading: the server sees the disconnect."""
        server.add(Reply.sse(F.text_stream([f"t{i}" for i in range(20)]), delay=1.0))
        received: list[ChatCompletionChunk] = []
        with trio.move_on_after(4.5) as scope:
            async with client.stream(make_request()) as stream:
                async for chunk in stream:
                    received.append(chunk)
        assert scope.cancelled_caught
        assert stream.result().text == "t0t1t2"
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)
            await server.wait_connections_closed()
        assert server.exchanges[0].outcome == "client_disconnected"

    async def test_abort_ends_the_connection_without_the_reader(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """``abort()`` from another task: the server sees the connection end while the reader
        is still parked; the reader then fails as disconnected (it was not cancelled), keeping
        what it had. Before entering and after leaving, ``abort()`` does nothing."""
        server.add(Reply.sse(F.text_stream([f"t{i}" for i in range(20)]), delay=1.0))
        stream = client.stream(make_request())
        stream.abort()
        received: list[str] = []
        failure: list[ServerDisconnectedError] = []

        async def read() -> None:
            try:
                async with stream:
                    async for text in stream.text_deltas():
                        received.append(text)
            except ServerDisconnectedError as exc:
                failure.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(3.5)  # role chunk at 1 s, then one text per second
            stream.abort()
            with trio.fail_after(0.001):
                await server.wait_client_disconnects(1)
        assert received == ["t0", "t1"]
        assert failure
        assert failure[0].partial_result is not None
        assert failure[0].partial_result.text == "t0t1"
        stream.abort()

    async def test_cancel_from_another_task(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Cancelling the task that awaits complete() closes the connection; no task is left."""
        server.add(Reply.stall())
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.complete, make_request())
            await server.wait_requests(1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)
            await server.wait_connections_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().tasks_living == tasks_before

    async def test_cancel_during_backoff(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Cancelled while waiting to retry: no further request, no open socket."""
        server.add(Reply.error(429, retry_after=60))
        with trio.move_on_after(30):
            await client.complete(make_request())
        assert len(server.requests) == 1
        await client.aclose()
        with trio.fail_after(1):
            await server.wait_connections_closed()

    async def test_leaving_early_closes_the_response(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Breaking out after the first content chunk closes the unfinished response."""
        server.add(Reply.sse(F.text_stream(["a", "b", "c", "d"]), delay=1.0))
        async with client.stream(make_request()) as stream:
            async for chunk in stream:
                if chunk.content:
                    break
        assert stream.result().text == "a"
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)

    async def test_an_unread_body_is_handed_to_the_spawner(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """With ``finish_unread_body_with``, leaving early closes the response at once and
        hands the rest of the body over, once, instead of reading it; running what was handed
        over finishes it. A body read to its end hands nothing over."""
        server.add(Reply.sse(F.text_stream(["a", "b", "c", "d"]), delay=1.0), Reply.sse(HELLO))
        handed: list[Callable[[], Awaitable[None]]] = []
        async with client.stream(make_request()) as stream:
            stream.finish_unread_body_with(handed.append)
            async for chunk in stream:
                if chunk.content:
                    break
        with trio.fail_after(1):
            await server.wait_client_disconnects(1)
        (finish,) = handed
        with trio.fail_after(1):
            await finish()  # the loop is idle at once here; then the generators are finished

        async with client.stream(make_request()) as stream:
            stream.finish_unread_body_with(handed.append)
            async for _ in stream:
                pass
        assert len(handed) == 1

    async def test_nothing_outlives_a_successful_call(self, server: ScriptedOpenAIServer) -> None:
        """After a call the connection is back in the pool; closing the client closes it."""
        server.add(Reply.sse(HELLO), Reply.sse(HELLO))
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = trio.lowlevel.current_statistics().tasks_living
        async with client_for(server) as client:
            await client.complete(make_request())
            await client.complete(make_request())
            await trio.testing.wait_all_tasks_blocked()
            assert server.connections_opened == 1
            assert [e.outcome for e in server.exchanges] == ["completed", "completed"]
        with trio.fail_after(5):
            await server.wait_connections_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().tasks_living == tasks_before


class TestRequests:
    """What the client sends: endpoint, headers, body."""

    async def test_endpoint_and_headers(self, server: ScriptedOpenAIServer) -> None:
        """POST /v1/chat/completions with bearer auth, organization, project, extra headers."""
        server.add(Reply.sse(HELLO))
        async with ChatCompletionsClient(
            api_key=API_KEY,
            base_url=server.base_url + "/",
            organization="org-1",
            project="proj-1",
            default_headers={"X-Custom": "yes"},
        ) as client:
            await client.complete(make_request())
        (request,) = server.requests
        assert (request.method, request.path) == ("POST", "/v1/chat/completions")
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.headers["openai-organization"] == "org-1"
        assert request.headers["openai-project"] == "proj-1"
        assert request.headers["x-custom"] == "yes"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept"] == "text/event-stream"

    async def test_its_own_pool_sends_what_the_client_says_and_no_more(
        self, server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A client that made its own pool sends its own headers (with ``Host`` and
        ``Content-Length``), none of ``httpx.AsyncClient``'s defaults, and keeps no cookie a
        server sets (an API call needs none)."""
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(name.lower(), raising=False)
        server.add(Reply.sse(HELLO, headers={"Set-Cookie": "__cf_bm=abc; Path=/"}))
        server.add(Reply.sse(HELLO))
        async with ChatCompletionsClient(api_key=API_KEY, base_url=server.base_url) as client:
            for _ in range(2):
                assert (await client.complete(make_request())).text == "Hello!"
        first, second = server.requests
        assert (
            sorted(second.headers)
            == sorted(first.headers)
            == [
                "accept",
                "accept-encoding",
                "authorization",
                "content-length",
                "content-type",
                "host",
                "user-agent",
            ]
        )
        assert first.headers["user-agent"].startswith("trouper")
        assert first.headers["accept-encoding"] == "identity"
        assert "cookie" not in second.headers

    async def test_a_given_client_is_used_as_it_is(self, server: ScriptedOpenAIServer) -> None:
        """An ``httpx.AsyncClient`` passed as ``http_client`` sends every request, with what
        its owner set up on it (its headers, its event hooks), and stays open after the
        chat client is closed."""
        server.add(Reply.sse(HELLO), Reply.sse(HELLO))
        sent: list[str] = []

        async def hook(request: httpx.Request) -> None:
            sent.append(request.url.path)

        async with httpx.AsyncClient(
            headers={"X-Team": "blue"}, event_hooks={"request": [hook]}
        ) as http:
            async with client_for(server, http_client=http) as client:
                await client.complete(make_request())
            assert not http.is_closed
            async with client_for(server, http_client=http) as client:
                await client.complete(make_request())
        assert sent == ["/v1/chat/completions"] * 2
        assert [r.headers["x-team"] for r in server.requests] == ["blue", "blue"]
        assert server.requests[0].headers["authorization"] == f"Bearer {API_KEY}"

    async def test_environment_defaults(
        self, server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OPENAI_API_KEY and OPENAI_BASE_URL are used when no arguments are given."""
        monkeypatch.setenv("OPENAI_API_KEY", "env-key-123456")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.add(Reply.sse(HELLO))
        async with ChatCompletionsClient() as client:
            assert client.url == f"{server.base_url}/chat/completions"
            await client.complete(make_request())
        assert server.requests[0].headers["authorization"] == "Bearer env-key-123456"

    async def test_no_key_sends_no_authorization(
        self, server: ScriptedOpenAIServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without any key (a local server) no Authorization header is sent."""
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        server.add(Reply.sse(HELLO))
        async with ChatCompletionsClient(base_url=server.base_url) as client:
            await client.complete(make_request())
        assert "authorization" not in server.requests[0].headers

    async def test_a_query_in_the_base_url_stays_after_the_path(
        self, server: ScriptedOpenAIServer
    ) -> None:
        """``base_url=".../v1?key=K"`` (a key in the query, an ``api-version``): the request
        goes to ``/v1/chat/completions?key=K``, not to ``/v1?key=K/chat/completions``."""
        server.add(Reply.sse(HELLO))
        async with ChatCompletionsClient(
            base_url=f"{server.base_url}?key=query-key-0123456789&api-version=2024-06-01"
        ) as client:
            await client.complete(make_request())
            assert client.url == (
                f"{server.base_url}/chat/completions?key=[REDACTED]&api-version=2024-06-01"
            )
        assert server.requests[0].path == (
            "/v1/chat/completions?key=query-key-0123456789&api-version=2024-06-01"
        )

    async def test_default_base_url(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without configuration the client targets api.openai.com (nothing is sent here)."""
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
        client = ChatCompletionsClient(api_key="x")
        assert client.url == "https://api.openai.com/v1/chat/completions"
        await client.aclose()

    async def test_body_is_the_request_body(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """The body is exactly ChatRequest.to_body(): unset params absent, extra merged last."""
        from actors.client import GenerationParams

        request = make_request(
            params=GenerationParams(temperature=0.3, extra={"min_p": 0.1}),
            extra={"temperature": 0.4},
            tools=[{"type": "function", "function": {"name": "f"}}],
            tool_choice="auto",
        )
        server.add(Reply.sse(HELLO))
        await client.complete(request)
        body = server.requests[0].json
        assert body == request.to_body()
        assert body["temperature"] == 0.4
        assert "top_p" not in body
        assert "max_tokens" not in body

    async def test_responder_answers_from_the_request(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """A responder sees each request (used when the queue is empty)."""

        def echo(request: RecordedRequest) -> Reply:
            last = request.json["messages"][-1]["content"]
            return Reply.sse(F.text_stream([f"you said: {last}"]))

        server.responder = echo
        result = await client.complete(make_request(messages=[{"role": "user", "content": "hi"}]))
        assert result.text == "you said: hi"

    async def test_timestamps(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """first_token_at - request_started_at is the time to the first content chunk."""
        server.add(
            Reply(
                headers={"content-type": "text/event-stream"},
                pieces=[
                    Piece(b'data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n', 0.5),
                    Piece(b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n', 2.0),
                    Piece(b"data: [DONE]\n\n"),
                ],
            )
        )
        async with client.stream(make_request()) as stream:
            await collect(stream, [])
        assert stream.request_started_at is not None
        assert stream.first_token_at is not None
        assert stream.first_token_at - stream.request_started_at == pytest.approx(2.5)

    async def test_usage_survives_an_interruption(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """With running usage, the last snapshot is available after a cut."""
        a = F.chunk({"content": "a"}, usage={"prompt_tokens": 9, "completion_tokens": 1})
        b = F.chunk({"content": "b"}, usage={"prompt_tokens": 9, "completion_tokens": 2})
        server.add(cut_after(a, b))
        async with client.stream(make_request()) as stream:
            with pytest.raises(ServerDisconnectedError):
                await collect(stream, [])
        assert stream.usage is not None
        assert stream.usage.completion_tokens == 2
        assert stream.result().usage == stream.usage

    async def test_stream_must_be_entered(self, client: ChatCompletionsClient) -> None:
        """Iterating a stream that was not entered is a programming error."""
        stream = client.stream(make_request())
        with pytest.raises(RuntimeError, match="async with"):
            await stream.__anext__()

    async def test_closed_client_refuses(self, server: ScriptedOpenAIServer) -> None:
        """A closed client cannot start streams; an injected pool is left open."""
        http = httpx.AsyncClient()
        async with http:
            client = client_for(server, http_client=http)
            await client.aclose()
            with pytest.raises(RuntimeError, match="closed"):
                client.stream(make_request())
            assert not http.is_closed

    async def test_a_finished_stream_leaves_no_cycle_behind(
        self, server: ScriptedOpenAIServer
    ) -> None:
        """Once a stream has ended, its HTTP response (and with it the request and its
        Authorization header) is freed at once, not left as a reference cycle for a later pass
        of the garbage collector: a busy process would otherwise carry every finished turn's
        request, key included, into the collector's oldest generation."""
        responses: list[weakref.ref[httpx.Response]] = []

        async def keep(response: httpx.Response) -> None:
            responses.append(weakref.ref(response))

        server.add(Reply.sse(HELLO), Reply.sse(HELLO))
        async with httpx.AsyncClient(event_hooks={"response": [keep]}) as http:
            client = client_for(server, http_client=http)
            gc.collect()
            gc.disable()
            try:
                result = await client.complete(make_request())
                async with client.stream(make_request()) as stream:
                    texts = [chunk.content async for chunk in stream]
                del stream
                alive = [ref() is not None for ref in responses]
            finally:
                gc.enable()
        assert result.text == "Hello!"
        assert "".join(texts) == "Hello!"
        assert alive == [False, False]
