"""Failures through the public pipeline: HTTP and stream errors become one categorised
``ErrorFrame`` and one ended inference, the session goes on and the next request is valid;
frames of the wrong type are refused at the send."""

from __future__ import annotations

import io
import itertools
import sys

import pytest
import structlog
import trio
import trio.testing

from actors import ErrorCategory, LLMTextFrame, OpenAILLMContextFrame, TextFrame
from actors.client import RetryPolicy, Timeouts
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import FrameTypeError

from ..conversation_kit import API_KEY, SYSTEM, assert_valid, open_conversation

NO_RETRY = RetryPolicy(max_retries=0)


class TestHTTPErrors:
    """An HTTP error ends the inference once with ``error=True``, sends one ``ErrorFrame``
    upstream with the error's category, and the next turn works."""

    @pytest.mark.parametrize(
        ("status", "category"),
        [
            (401, ErrorCategory.AUTHENTICATION),
            (400, ErrorCategory.INVALID_REQUEST),
            (429, ErrorCategory.RATE_LIMIT),
            (500, ErrorCategory.SERVER),
        ],
    )
    async def test_error_then_the_next_turn_works(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        status: int,
        category: ErrorCategory,
    ) -> None:
        server.add(
            Reply.error(status, f"scripted {status}", request_id="req_1"),
            Reply.sse(chunks.text_stream(["Back again."])),
        )
        async with open_conversation(server, retry=NO_RETRY) as conv:
            await conv.say("First try")
            await conv.wait_ends(1)

            (error,) = conv.errors
            assert error.category == category
            assert f"scripted {status}" in error.error
            assert API_KEY not in error.error
            assert not error.fatal
            assert error.source == conv.llm.name
            assert len(conv.starts()) == 1
            (end,) = conv.ends()
            assert end.error
            assert not end.interrupted
            assert conv.texts() == []
            assert [m["role"] for m in conv.messages()] == ["system", "user"]

            await conv.say("Second try")
            await conv.wait_ends(2)
            assert len(conv.errors) == 1
            second = conv.request_messages(1)
            assert second == [
                SYSTEM,
                {"role": "user", "content": "First try"},
                {"role": "user", "content": "Second try"},
            ]
            assert_valid(second)
            assert conv.messages()[-1] == {"role": "assistant", "content": "Back again."}
            assert not conv.ends()[1].error

    async def test_rate_limit_is_retried_in_virtual_time_before_the_error(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(*(Reply.error(429, "slow down", retry_after=2) for _ in range(3)))
        async with open_conversation(server) as conv:  # default policy: 2 retries
            await conv.say("Hello")
            await conv.wait_ends(1)
            assert len(server.requests) == 3
            times = [r.received_at for r in server.requests]
            assert [b - a for a, b in itertools.pairwise(times)] == [
                pytest.approx(2),
                pytest.approx(2),
            ]
            (error,) = conv.errors
            assert error.category == ErrorCategory.RATE_LIMIT
            (end,) = conv.ends()
            assert end.error

    async def test_server_error_then_success_on_retry_is_invisible(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.error(503, "overloaded"), Reply.sse(chunks.text_stream(["Fine."])))
        async with open_conversation(server) as conv:
            await conv.say("Hello")
            await conv.wait_ends(1)
            assert conv.errors == []
            assert len(conv.starts()) == 1
            assert len(conv.ends()) == 1
            assert conv.texts() == ["Fine."]
            assert server.requests[0].json == server.requests[1].json

    async def test_stream_cut_after_content_is_an_error_not_a_retry(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        events = [chunks.role(), chunks.text("Half an ")]
        server.add(
            Reply.sse(events, done=False, ending="disconnect"),
            Reply.sse(chunks.text_stream(["Recovered."])),
        )
        async with open_conversation(server) as conv:
            await conv.say("Hello")
            await conv.wait_ends(1)
            assert len(server.requests) == 1
            (error,) = conv.errors
            assert error.category == ErrorCategory.CONNECTIVITY
            (end,) = conv.ends()
            assert end.error
            assert_valid(conv.messages())

            await conv.say("Again")
            await conv.wait_ends(2)
            assert_valid(conv.request_messages(1))
            assert conv.texts()[-1] == "Recovered."

    async def test_first_token_timeout(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.stall(before_headers=False), Reply.sse(chunks.text_stream(["Late."])))
        timeouts = Timeouts(first_token=4)
        async with open_conversation(server, retry=NO_RETRY, timeouts=timeouts) as conv:
            await conv.say("Hello")
            await conv.wait_ends(1)
            (error,) = conv.errors
            assert error.category == ErrorCategory.TIMEOUT
            assert trio.current_time() == pytest.approx(4, abs=0.1)
            with trio.fail_after(1):
                await server.wait_disconnected()
            await conv.say("Again")
            await conv.wait_ends(2)
            assert conv.texts() == ["Late."]


class TestWrongFrameType:
    """A frame sent straight to an actor that does not take its type is refused at the send
    with a ``TypeError`` naming the actor and the type."""

    async def test_llm_refuses_a_text_frame(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        async with open_conversation(server) as conv:
            with pytest.raises(TypeError) as caught:
                await conv.llm.ref.send(TextFrame("hello"))
            assert isinstance(caught.value, FrameTypeError)
            message = str(caught.value)
            assert conv.llm.name in message
            assert "TextFrame" in message
            assert "OpenAILLMContextFrame" in message  # what it does take
            with pytest.raises(FrameTypeError, match="LLMTextFrame"):
                conv.llm.ref.send_nowait(LLMTextFrame("hello"))
            with pytest.raises(FrameTypeError, match=conv.pair.store.name):
                await conv.pair.store.ref.send(OpenAILLMContextFrame(conv.context))  # type: ignore[arg-type]
            assert server.requests == []
            assert conv.errors == []


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


class TestLoggingStream:
    """A session keeps working when the stream its logging was first set up with has been
    closed since (pytest closes a ``capsys`` stream after its test): logging a warning never
    crashes an actor."""

    async def test_warning_after_the_first_stream_was_closed(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        was_configured, saved = structlog.is_configured(), structlog.get_config()
        structlog.reset_defaults()
        try:
            stream = io.StringIO()
            with monkeypatch.context() as patch:
                patch.setattr(sys, "stderr", stream)
                server.add(Reply.sse(chunks.text_stream(["one"])))
                async with open_conversation(server) as conv:
                    await conv.say("first session")
                    await conv.wait_ends(1)
            stream.close()

            server.add(Reply.error(500, "boom"))
            try:
                async with open_conversation(server, retry=NO_RETRY) as conv:
                    await conv.say("second session")
                    await conv.wait_ends(1)  # the LLM logs a warning with its ErrorFrame
                    assert len(conv.errors) == 1
            except BaseException as exc:
                if any("closed file" in str(leaf) for leaf in _leaves(exc)):
                    pytest.fail("a warning written to the closed stream crashed the session")
                raise
        finally:
            if was_configured:
                structlog.configure(**saved)
            else:
                structlog.reset_defaults()


async def test_an_oversized_event_fails_the_turn_with_the_services_cap(
    autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """``OpenAILLMService(max_event_bytes=...)`` reaches its client: an event past the cap ends
    the turn with an ErrorFrame naming the cap, after the text before it."""
    server.add(
        Reply.sse([*chunks.text_stream(["Hi"])[:-1], chunks.text("z" * 20_000)]),
        Reply.sse(chunks.text_stream(["Fine."])),
    )
    async with open_conversation(server, max_event_bytes=10_000) as conv:
        await conv.say("First")
        await conv.wait_ends(1)
        (error,) = conv.errors
        assert "10000 bytes" in error.error
        assert "max_event_bytes" in error.error
        await conv.say("Second")
        await conv.wait_ends(2)
