"""Interruption through the public pipeline: the stream is cancelled and its socket closed, the
interrupted turn's queued output never reaches later stages, the partial answer is committed
as interrupted, tool calls are cancelled or kept per their registration, and the next turn's
request is valid."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence

import httpx
import pytest
import trio
import trio.testing

from actors import (
    FunctionCallCancelFrame,
    FunctionCallParams,
    FunctionCallResultFrame,
    FunctionCallResultProperties,
    FunctionCallsStartedFrame,
    FunctionSchema,
    LLMTextFrame,
    ToolsSchema,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from actors.client import ChatStream
from actors.testing import (
    ChunkFactory,
    Piece,
    RecordedRequest,
    Reply,
    ScriptedOpenAIServer,
    sse_event,
)
from runtime import (
    Frame,
    FrameDirection,
    InterruptionFrame,
    PipelineParams,
)

from ..conversation_kit import (
    SYSTEM,
    WAIT_SECS,
    Conversation,
    assert_valid,
    of_type,
    open_conversation,
    tool_answer,
)
from .actors_kit import BlockingTool

WORDS = [f"w{i} " for i in range(40)]
LOOKUP = ToolsSchema(
    standard_tools=[FunctionSchema(name="lookup", properties={"q": {"type": "string"}})]
)


def _stale_text(frames: Sequence[object], turn: int) -> list[LLMTextFrame]:
    return [f for f in frames if isinstance(f, LLMTextFrame) and f.turn == turn]


def _assistant_index(conv: Conversation) -> int:
    messages = conv.messages()
    (index,) = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return index


class _CountingTransport(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the body pieces read from its responses (a user's own
    ``httpx`` client, passed as ``http_client``)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.pieces = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountingStream(response.stream, self),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, owner: _CountingTransport) -> None:
        self._inner = inner
        self._owner = owner
        self._pieces: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._pieces = self._inner.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        assert self._pieces is not None
        piece = await self._pieces.__anext__()
        self._owner.pieces += 1
        return piece

    async def aclose(self) -> None:
        await self._inner.aclose()


class TestInterruptMidText:
    """Interrupting a streaming answer closes the request's socket, stops its text at once,
    ends the inference exactly once and commits the partial answer marked as interrupted."""

    async def test_interrupt_while_the_stream_is_slow(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(WORDS, usage=(5, 40)), delay=0.5),
            Reply.sse(chunks.text_stream(["Sure, ", "short then."])),
        )
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 3)
            at_probe, at_sink = len(conv.output), len(conv.sink)
            interrupted_at = trio.current_time()
            conv.task.interrupt()

            with trio.fail_after(1):
                await server.wait_disconnected()
            assert server.exchanges[0].outcome == "client_disconnected"
            assert trio.current_time() == interrupted_at  # at once, not at the next chunk
            await conv.wait_ends(1)

            # Nothing of the interrupted turn reaches the stages after the LLM any more.
            assert _stale_text(conv.output[at_probe:], 0) == []
            assert _stale_text(conv.sink[at_sink:], 0) == []
            (end,) = conv.ends()
            assert end.interrupted
            assert not end.error
            assert len(conv.starts()) == 1
            assert len(of_type(conv.output, InterruptionFrame)) == 1

            delivered = "".join(conv.texts(conv.sink)).strip()
            whole = "".join(WORDS).strip()
            assert delivered.startswith("w0 w1 w2")
            assert whole.startswith(delivered)
            assert len(delivered) < len(whole) // 2  # cut short, not the whole answer
            index = _assistant_index(conv)
            assert conv.messages()[index] == {"role": "assistant", "content": delivered}
            assert conv.context.is_interrupted(index)

            await conv.say("Make it short")
            await conv.wait_ends(2)
            second = conv.request_messages(1)
            assert second == [
                SYSTEM,
                {"role": "user", "content": "Tell me a long story"},
                {"role": "assistant", "content": delivered},
                {"role": "user", "content": "Make it short"},
            ]
            assert_valid(second)
            assert conv.messages()[-1] == {"role": "assistant", "content": "Sure, short then."}
            assert not conv.context.is_interrupted(len(conv.messages()) - 1)

    async def test_the_socket_is_shut_down_inside_interrupt(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """``interrupt()`` shuts the stream's socket down itself, before the LLM's task runs
        again (the server can stop generating at once), and the turn then ends as usual."""
        aborted: list[int] = []
        abort = ChatStream.abort

        def spy(stream: ChatStream) -> None:
            aborted.append(len(conv.ends()))
            abort(stream)

        monkeypatch.setattr(ChatStream, "abort", spy)
        server.add(Reply.sse(chunks.text_stream(WORDS), delay=0.5))
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 2)
            conv.task.interrupt()
            assert aborted == [0]  # already done when interrupt() returns, before the end frame
            with trio.fail_after(1):
                await server.wait_disconnected()
            await conv.wait_ends(1)
            (end,) = conv.ends()
            assert end.interrupted
            assert not end.error
            assert conv.errors == []  # a shut-down socket is not reported as an error
        assert aborted == [0]

    async def test_next_turn_right_after_the_interruption(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(WORDS), delay=0.5),
            Reply.sse(chunks.text_stream(["OK."])),
        )
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 3)
            conv.task.interrupt()
            await conv.say("Stop, something else")  # no waiting in between
            await conv.wait_ends(2)

            delivered = "".join(conv.texts(conv.sink)[:-1]).strip()
            second = conv.request_messages(1)
            assert second == [
                SYSTEM,
                {"role": "user", "content": "Tell me a long story"},
                {"role": "assistant", "content": delivered},
                {"role": "user", "content": "Stop, something else"},
            ]
            assert conv.context.is_interrupted(2)
            assert_valid(second)

    async def test_user_speech_interrupts_and_starts_the_next_turn(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(WORDS), delay=0.5),
            Reply.sse(chunks.text_stream(["Yes?"])),
        )
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 3)
            await conv.queue(UserStartedSpeakingFrame())
            # Speech starts before its transcription exists (see the xfail test below for
            # both frames sent back to back).
            await trio.testing.wait_all_tasks_blocked()
            await conv.say("wait")
            await conv.queue(UserStoppedSpeakingFrame())
            await conv.wait_ends(2)
            with trio.fail_after(1):
                await server.wait_disconnected()
            first_end, second_end = conv.ends()
            assert first_end.interrupted
            assert not second_end.interrupted
            delivered = "".join(conv.texts(conv.sink)[:-1]).strip()
            assert delivered.startswith("w0 w1 w2")
            second = conv.request_messages(1)
            assert second == [
                SYSTEM,
                {"role": "user", "content": "Tell me a long story"},
                {"role": "assistant", "content": delivered},
                {"role": "user", "content": "wait"},
            ]
            assert_valid(second)

    async def test_interrupt_before_the_first_byte(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.stall(), Reply.sse(chunks.text_stream(["Here."])))
        async with open_conversation(server) as conv:
            await conv.say("Hello?")
            with trio.fail_after(5):
                await server.wait_requests(1)
            await trio.testing.wait_all_tasks_blocked()
            conv.task.interrupt()
            with trio.fail_after(1):
                await server.wait_disconnected()
            await conv.wait_ends(1)
            (end,) = conv.ends()
            assert end.interrupted
            assert [m["role"] for m in conv.messages()] == ["system", "user"]

            await conv.say("Hello again")
            await conv.wait_ends(2)
            second = conv.request_messages(1)
            assert [m["role"] for m in second] == ["system", "user", "user"]
            assert_valid(second)


class TestSlowOutputStage:
    """Frames of the interrupted turn queued in a slow stage after the LLM are dropped there:
    none reaches the assistant aggregator, which commits only what really went through."""

    async def test_a_full_output_stage_does_not_hold_the_close_back(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """Default mailboxes, a slow output whose queue is full, the LLM blocked pushing into
        it, and the rest of a 200-delta burst already received by the transport: the
        interruption closes the socket, and the interrupted answer's end frame reaches the end
        of the pipeline before anything more is read of the body (the buffered rest is thrown
        away afterwards, once the loop is idle)."""
        pieces = [f"t{i} " for i in range(200)]
        events = [sse_event(e) for e in (chunks.role(), *(chunks.text(p) for p in pieces))]
        # One HTTP chunk per event, as a server streams them, but all in a single write: the
        # client's first read of the body takes in the whole burst (about 30 KB).
        burst = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)
        server.add(
            Reply(
                headers={"content-type": "text/event-stream", "transfer-encoding": "chunked"},
                pieces=[Piece(burst)],
                framing="close",  # the chunked framing is written by hand above
                ending="stall",
            ),
            Reply.sse(chunks.text_stream(["Fine."])),
        )
        transport = _CountingTransport()
        async with (
            httpx.AsyncClient(transport=transport) as http,
            open_conversation(server, probe_delay=1.0, http_client=http) as conv,
        ):
            await conv.say("Read me everything")
            await conv.wait_for(lambda: len(conv.texts(conv.output)) >= 1)
            await trio.testing.wait_all_tasks_blocked()
            stats = conv.probe.ref.statistics()
            assert stats.data_depth == stats.data_capacity == 64  # the default
            assert stats.waiting_senders == 1  # the LLM, blocked pushing its next text
            read = transport.pieces
            assert read < 100  # most of the burst is still in the transport's buffer

            conv.task.interrupt()
            with trio.fail_after(1):
                await server.wait_disconnected()
            await conv.wait_for(lambda: len(conv.ends(conv.sink)) == 1)
            assert transport.pieces == read  # nothing more read before the answer ended
            (end,) = conv.ends(conv.sink)
            assert end.interrupted

            await trio.sleep(0.1)  # the loop was idle meanwhile
            assert transport.pieces == len(events)  # then the buffered rest was thrown away
            assert _stale_text(conv.sink, 0) == _stale_text(conv.sink, 0)[: read - 1]

            await conv.say("Just the end")
            await conv.wait_ends(2)
            await http.aclose()  # its pool's connection, before the server's check on the way out

    async def test_200_queued_frames_are_dropped(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        pieces = [f"t{i} " for i in range(200)]
        # 200 deltas at once, then the stream stays open: they pile up in the slow stage.
        events = [chunks.role(), *(chunks.text(p) for p in pieces)]
        server.add(
            Reply.sse(events, done=False, ending="stall"),
            Reply.sse(chunks.text_stream(["Fine."])),
        )
        params = PipelineParams(mailbox_size=256)
        async with open_conversation(server, params=params, probe_delay=0.05) as conv:
            await conv.say("Read me everything")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 5)
            queued = conv.probe.ref.statistics().data_depth
            assert queued >= 150
            at_sink = len(conv.sink)
            conv.task.interrupt()
            with trio.fail_after(1):
                await server.wait_disconnected()
            await conv.wait_ends(1)
            await trio.sleep(20)  # time enough for the slow stage to work through any leftovers
            await trio.testing.wait_all_tasks_blocked()

            assert _stale_text(conv.sink[at_sink:], 0) == []
            assert conv.probe.ref.statistics().dropped_stale >= queued - 1
            (end,) = conv.ends(conv.sink)
            assert end.interrupted
            delivered = "".join(conv.texts(conv.sink)).strip()
            assert delivered == "".join(pieces[: len(conv.texts(conv.sink))]).strip()
            index = _assistant_index(conv)
            assert conv.messages()[index]["content"] == delivered
            assert conv.context.is_interrupted(index)

            await conv.say("Just the end")
            await conv.wait_ends(2)
            second = conv.request_messages(1)
            assert second[-2:] == [
                {"role": "assistant", "content": delivered},
                {"role": "user", "content": "Just the end"},
            ]
            assert_valid(second)


class TestInterruptMidTool:
    """Interrupting while a tool runs cancels it when it was registered with
    ``cancel_on_interruption=True`` (the default), and lets it finish otherwise."""

    async def test_cancellable_call_is_cancelled(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])),
            Reply.sse(chunks.text_stream(["New topic."])),
        )
        lookup = BlockingTool()
        async with open_conversation(server, tools=LOOKUP) as conv:
            conv.llm.register_function("lookup", lookup)
            await conv.say("Look it up")
            await lookup.wait_running()
            conv.task.interrupt()
            await conv.wait_for(lambda: bool(of_type(conv.sink, FunctionCallCancelFrame)))
            await trio.sleep(10)
            await trio.testing.wait_all_tasks_blocked()

            assert lookup.cancelled == ["call_1"]
            (cancel,) = of_type(conv.sink, FunctionCallCancelFrame)
            assert (cancel.tool_call_id, cancel.reason, cancel.run_llm) == (
                "call_1",
                "interruption",
                False,
            )
            assert of_type(conv.sink, FunctionCallResultFrame) == []
            assert len(server.requests) == 1  # no follow-up inference
            assert tool_answer(conv.messages(), "call_1") == "CANCELLED"
            assert_valid(conv.messages())

            await conv.say("Never mind")
            await conv.wait_ends(2)
            second = conv.request_messages(1)
            assert_valid(second)
            assert tool_answer(second, "call_1") == "CANCELLED"
            assert second[-1] == {"role": "user", "content": "Never mind"}

    async def test_uncancellable_call_finishes_and_lands_later(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])),
            Reply.sse(chunks.text_stream(["Meanwhile, hello."])),
            Reply.sse(chunks.text_stream(["The lookup finished."])),
        )
        running = trio.Event()
        async with open_conversation(server, tools=LOOKUP) as conv:

            async def lookup(params: FunctionCallParams) -> None:
                running.set()
                await trio.sleep(5)
                await params.result_callback({"found": params.arguments["q"]})

            conv.llm.register_function("lookup", lookup, cancel_on_interruption=False)
            await conv.say("Look it up")
            with trio.fail_after(5):
                await running.wait()
            conv.task.interrupt()
            await conv.say("Hi in the meantime")
            await conv.wait_ends(2)

            # The call still runs: its placeholder answers it in the meantime.
            meanwhile = conv.request_messages(1)
            assert_valid(meanwhile, allow_in_progress=True)
            assert meanwhile[-1] == {"role": "user", "content": "Hi in the meantime"}
            assert of_type(conv.sink, FunctionCallCancelFrame) == []

            await conv.wait_ends(3)
            assert json.loads(tool_answer(conv.messages(), "call_1")) == {"found": "x"}
            later = conv.request_messages(2)
            assert_valid(later)
            assert json.loads(tool_answer(later, "call_1")) == {"found": "x"}
            assert len(server.requests) == 3

    async def test_answer_started_after_the_interruption_is_not_cut(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        follow_up = [f"p{i} " for i in range(10)]
        server.add(
            Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])),
            Reply.sse(chunks.text_stream(follow_up), delay=0.5),
            Reply.sse(chunks.text_stream(["ok"])),
        )
        running = trio.Event()
        async with open_conversation(server, tools=LOOKUP) as conv:

            async def lookup(params: FunctionCallParams) -> None:
                running.set()
                await trio.sleep(5)
                await params.result_callback("found")

            conv.llm.register_function("lookup", lookup, cancel_on_interruption=False)
            await conv.say("Look it up")
            with trio.fail_after(5):
                await running.wait()
            conv.task.interrupt()  # nothing is said after it: the call's answer follows
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 3)
            await conv.say("by the way")  # typed while that answer streams, no interruption
            await conv.wait_ends(3)

            answers = [
                (i, m["content"])
                for i, m in enumerate(conv.messages())
                if m["role"] == "assistant" and m.get("content")
            ]
            assert [text for _, text in answers] == ["".join(follow_up).strip(), "ok"]
            assert not any(conv.context.is_interrupted(i) for i, _ in answers)
            assert_valid(conv.request_messages(2))


class TestFollowUpBelongsToItsTurn:
    """A follow-up inference answers the tool calls of one turn: once that turn is
    interrupted, none of it starts, however close to the interruption the last result
    settled. The result is still recorded, and the user's next line is answered with it."""

    @pytest.mark.parametrize("order", ["result-then-interruption", "interruption-then-result"])
    async def test_no_follow_up_after_the_interruption(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
        order: str,
    ) -> None:
        server.add(
            Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])),
            Reply.sse(chunks.text_stream(["New topic."])),
        )
        async with open_conversation(server, tools=LOOKUP) as conv:

            async def lookup(params: FunctionCallParams) -> None:
                await params.result_callback({"found": params.arguments["q"]})

            conv.llm.register_function("lookup", lookup)
            executor = conv.llm.executor
            push = executor.push_frame

            async def push_then_interrupt(
                frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
            ) -> None:
                # The interruption lands with no checkpoint between it and the result's push.
                is_result = isinstance(frame, FunctionCallResultFrame)
                if is_result and order == "interruption-then-result":
                    conv.task.interrupt()
                await push(frame, direction)
                if is_result and order == "result-then-interruption":
                    conv.task.interrupt()

            executor.push_frame = push_then_interrupt  # type: ignore[method-assign]
            await conv.say("Look it up")
            await conv.wait_for(lambda: bool(of_type(conv.sink, FunctionCallResultFrame)))
            await trio.sleep(10)
            await trio.testing.wait_all_tasks_blocked()

            assert len(server.requests) == 1  # no follow-up inference
            assert len(conv.starts()) == 1
            assert json.loads(tool_answer(conv.messages(), "call_1")) == {"found": "x"}
            assert_valid(conv.messages())

            await conv.say("Never mind")
            await conv.wait_ends(2)
            await trio.sleep(10)
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.requests) == 2
            second = conv.request_messages(1)
            assert_valid(second)
            assert json.loads(tool_answer(second, "call_1")) == {"found": "x"}
            assert second[-1] == {"role": "user", "content": "Never mind"}
            assert conv.texts()[-1] == "New topic."

    async def test_no_follow_up_when_the_interruption_lands_in_on_context_updated(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])),
            Reply.sse(chunks.text_stream(["New topic."])),
        )
        async with open_conversation(server, tools=LOOKUP) as conv:

            async def interrupt() -> None:  # the result is in; the follow-up is not sent yet
                conv.task.interrupt()

            async def lookup(params: FunctionCallParams) -> None:
                await params.result_callback(
                    "found", properties=FunctionCallResultProperties(on_context_updated=interrupt)
                )

            conv.llm.register_function("lookup", lookup)
            await conv.say("Look it up")
            await conv.wait_for(lambda: bool(of_type(conv.sink, FunctionCallResultFrame)))
            await trio.sleep(10)
            await trio.testing.wait_all_tasks_blocked()

            assert len(server.requests) == 1
            assert tool_answer(conv.messages(), "call_1") == '"found"'
            await conv.say("Never mind")
            await conv.wait_ends(2)
            assert conv.request_messages(1)[-1] == {"role": "user", "content": "Never mind"}


class TestSessionEnd:
    """A call still running when the session ends is settled in the conversation, so the
    context the application keeps is valid for a later session."""

    async def test_running_call_is_settled_at_the_end(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])))
        lookup = BlockingTool()
        async with open_conversation(server, tools=LOOKUP) as conv:
            conv.llm.register_function("lookup", lookup, cancel_on_interruption=False)
            await conv.say("Look it up")
            await lookup.wait_running()
        assert_valid(conv.messages())
        assert tool_answer(conv.messages(), "call_1") == "CANCELLED"


class TestTextTransportAfterInterruption:
    """``TextTransport.wait_answer`` after an interruption waits for the answer to the new
    line, not for the end of the answer that was cut short."""

    async def test_wait_answer_returns_the_new_answer(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(WORDS), delay=0.5),
            Reply.sse(chunks.text_stream(["The ", "new answer."]), first_delay=1),
        )
        async with open_conversation(server, quick_start=True) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts()) >= 2)
            conv.task.interrupt()
            conv.transport.interrupted()
            await conv.say("Something else")
            with trio.fail_after(WAIT_SECS):
                answer = await conv.transport.wait_answer()
            assert answer == "The new answer."
            assert len(server.requests) == 2


def _story_or_ok(chunks: ChunkFactory) -> Callable[[RecordedRequest], Reply]:
    def respond(request: RecordedRequest) -> Reply:
        last = request.json["messages"][-1]["content"]
        if "story" in last:
            return Reply.sse(chunks.text_stream(WORDS), delay=0.5)
        return Reply.sse(chunks.text_stream(["ok"]))

    return respond


class TestSpeechFramesBackToBack:
    """A user turn sent as ``UserStartedSpeakingFrame``, transcription,
    ``UserStoppedSpeakingFrame`` back to back while an answer streams interrupts that answer
    and is answered itself."""

    async def test_every_line_is_answered(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.responder = _story_or_ok(chunks)
        answered = []
        for _ in range(16):  # random order, about half fail: 16 tries never all pass by luck
            async with open_conversation(server) as conv:
                await conv.say("Tell me a long story")
                await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 2)
                await conv.queue(UserStartedSpeakingFrame())
                await conv.say("wait")
                await conv.queue(UserStoppedSpeakingFrame())
                with trio.move_on_after(30):
                    await conv.wait_ends(2)
                answered.append(conv.texts(conv.sink)[-1:] == ["ok"])
        assert all(answered), f"lines answered: {answered}"


class TestInterruptMidToolDeltas:
    """Interrupting while the LLM streams a tool call's arguments records no call at all, and
    the text said before it is committed as interrupted."""

    async def test_no_half_call_in_the_context(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        events = chunks.tool_call_stream(
            [("lookup", '{"q": "a rather long query text"}', "call_1")],
            text=["Let me ", "look."],
            fragment_size=3,
        )
        server.add(Reply.sse(events, delay=0.5), Reply.sse(chunks.text_stream(["OK."])))
        called: list[str] = []
        async with open_conversation(server, tools=LOOKUP) as conv:

            async def lookup(params: FunctionCallParams) -> None:
                called.append(params.tool_call_id)
                await params.result_callback("x")

            conv.llm.register_function("lookup", lookup)
            await conv.say("Look")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 2)
            await trio.sleep(1.6)  # into the argument fragments
            conv.task.interrupt()
            await conv.wait_ends(1)
            await trio.sleep(5)
            await trio.testing.wait_all_tasks_blocked()
            assert called == []
            assert of_type(conv.sink, FunctionCallsStartedFrame) == []
            index = _assistant_index(conv)
            assert conv.messages()[index] == {"role": "assistant", "content": "Let me look."}
            assert conv.context.is_interrupted(index)
            await conv.say("Again")
            await conv.wait_ends(2)
            assert_valid(conv.request_messages(1))


class TestCancel:
    """``task.cancel()`` mid-stream or mid-tool stops everything at once: the socket is closed,
    the running call is settled in the conversation, which stays valid."""

    async def test_cancel_mid_stream(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(WORDS), delay=0.5))
        async with open_conversation(server) as conv:
            await conv.say("Tell me a long story")
            await conv.wait_for(lambda: len(conv.texts(conv.sink)) >= 3)
            conv.task.cancel("test")
            with trio.fail_after(1):
                await server.wait_disconnected()
        assert conv.task.has_finished()
        assert_valid(conv.messages())
        assert conv.messages()[-1]["role"] == "assistant"
        assert conv.context.is_interrupted(len(conv.messages()) - 1)

    async def test_cancel_mid_tool(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.tool_call_stream([("lookup", '{"q": "x"}', "call_1")])))
        lookup = BlockingTool()
        async with open_conversation(server, tools=LOOKUP) as conv:
            conv.llm.register_function("lookup", lookup)
            await conv.say("Look it up")
            await lookup.wait_running()
            conv.task.cancel("test")
        assert lookup.cancelled == ["call_1"]
        assert_valid(conv.messages())
        assert tool_answer(conv.messages(), "call_1") == "CANCELLED"


class TestInterruptWhileTheEndWaits:
    """An interruption that lands after the stream finished, while the end frame still waits
    for room downstream, still closes the response once and settles every announced call."""

    async def test_announced_calls_settle_and_one_end_goes_out(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(
                chunks.tool_call_stream(
                    [("lookup", '{"q": "x"}', "call_1")], text=["a ", "b ", "c "]
                )
            ),
            Reply.sse(chunks.text_stream(["Next."])),
        )
        ran: list[str] = []
        async with open_conversation(
            server, tools=LOOKUP, params=PipelineParams(mailbox_size=1), probe_delay=1.0
        ) as conv:

            async def lookup(params: FunctionCallParams) -> None:
                ran.append(params.tool_call_id)
                await params.result_callback({"found": True})

            conv.llm.register_function("lookup", lookup)
            await conv.say("Look it up")
            # The probe takes 1 s per text frame and holds one frame in its mailbox: at
            # 2.5 s the texts and the calls' announcement are through, the end frame waits.
            await trio.sleep(2.5)
            assert conv.ends() == []
            conv.task.interrupt()
            await conv.wait_ends(1)
            await trio.sleep(5)
            await trio.testing.wait_all_tasks_blocked()
            ends = conv.ends()
            assert len(ends) == 1
            assert ends[0].interrupted
            assert tool_answer(conv.messages(), "call_1") == "CANCELLED"
            assert ran == []
            assert_valid(conv.messages())
