"""The context holds exactly what the user saw: after an interruption, the assistant text in
the conversation is the text the output delivered (handed to ``on_output``) in that turn, no
more and no less, and an answer is marked interrupted exactly when it was cut before its end
was shown.

The review's cases first (interrupted right after a token was shown; a whole answer shown,
then interrupted), an output stage written by a user, then the property: random conversations
through the README pipeline (``transport.input(), user aggregator, llm, transport.output(),
assistant aggregator``) against a scripted server on a real socket, with random token
schedules and interruptions before, during and right after the text, mid-tool-call and right
after the end frame (see ``delivery_kit``), 1,000 rounds in virtual time and a soak of 200
sessions in real time. Seeded, so a failure names its seed.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio
import trio.testing

from actors import (
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    OutputCallback,
    OutputTransport,
    TextTransport,
    TranscriptionFrame,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer, sse_body
from runtime import Actor, Frame, FrameDirection, Pipeline, PipelineTask

from ..conversation_kit import API_KEY, MODEL, SYSTEM, WAIT_SECS, Notifier, open_conversation
from .delivery_kit import DeliveryHarness, plan_round

TOKENS = [f"t{i};" for i in range(30)]

#: 50 conversations of 20 rounds: 1,000 rounds in virtual time.
SESSIONS = 50
ROUNDS = 20

#: The real-time soak: 200 conversations of 3 rounds, 25 at a time.
SOAK_SESSIONS = 200
SOAK_ROUNDS = 3
SOAK_CONCURRENCY = 25


@asynccontextmanager
async def readme_pipeline(
    server: ScriptedOpenAIServer, on_output: Callable[[Frame], None]
) -> AsyncIterator[tuple[PipelineTask, TextTransport, OpenAILLMContext]]:
    """The README's pipeline against ``server``, showing frames with ``on_output``."""
    async with open_conversation(server, quick_start=True, on_output=on_output) as conv:
        yield conv.task, conv.transport, conv.context


@asynccontextmanager
async def shown_with(
    server: ScriptedOpenAIServer, on_output: OutputCallback, *between: Actor[Frame]
) -> AsyncIterator[tuple[PipelineTask, TextTransport, OpenAILLMContext]]:
    """The README's pipeline with any ``on_output`` (one that may return awaitables), and
    ``between`` the output and the assistant aggregator."""
    transport = TextTransport(on_output=on_output)
    llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=server.base_url)
    context = OpenAILLMContext(messages=[SYSTEM])
    pair = llm.create_context_aggregator(context)
    stages = [transport.input(), pair.user(), llm, transport.output(), *between, pair.assistant()]
    async with PipelineTask(Pipeline(stages)) as task:
        yield task, transport, context


async def say_and_wait(transport: TextTransport, *lines: str) -> None:
    """Send each line and wait for its answer."""
    for line in lines:
        await transport.send_text(line)
        with trio.fail_after(WAIT_SECS):
            await transport.wait_answer()


class TestTheReviewCases:
    """What the review saw: text the user was shown missing from the context."""

    async def test_interrupted_right_after_the_12th_token_keeps_12(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(TOKENS), delay=0.1),
            Reply.sse(chunks.text_stream(["ok"])),
        )
        shown: list[str] = []

        def show(frame: Frame) -> None:
            if isinstance(frame, LLMTextFrame):
                shown.append(frame.text)
                if len(shown) == 12:
                    task.interrupt()
                    transport.interrupted()

        async with readme_pipeline(server, show) as (task, transport, context):
            await transport.send_text("Tell me a long story")
            with trio.fail_after(WAIT_SECS):
                await transport.wait_answer()
            await transport.send_text("Something else")
            with trio.fail_after(WAIT_SECS):
                assert await transport.wait_answer() == "ok"
        assert shown[:12] == TOKENS[:12]
        assert server.requests[1].json["messages"] == [
            SYSTEM,
            {"role": "user", "content": "Tell me a long story"},
            {"role": "assistant", "content": "".join(TOKENS[:12])},
            {"role": "user", "content": "Something else"},
        ]
        assert context.is_interrupted(2)

    async def test_a_whole_answer_shown_then_interrupted_is_kept_whole_and_unmarked(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """The output has shown the whole answer, end frame included, when the interruption
        comes: all of it is in the context, not marked as interrupted. (The answer arrives in
        one piece, so the output shows it all before the aggregator has run.)"""
        server.add(
            Reply.raw(sse_body(chunks.text_stream(TOKENS))),
            Reply.sse(chunks.text_stream(["ok"])),
        )

        def show(frame: Frame) -> None:
            if isinstance(frame, LLMFullResponseEndFrame) and not answered:
                answered.append(frame)
                task.interrupt()
                transport.interrupted()

        answered: list[Frame] = []
        async with readme_pipeline(server, show) as (task, transport, context):
            await transport.send_text("Tell me a long story")
            with trio.fail_after(WAIT_SECS):
                await transport.wait_answer()
            await transport.send_text("Something else")
            with trio.fail_after(WAIT_SECS):
                await transport.wait_answer()
        assert server.requests[1].json["messages"][2] == {
            "role": "assistant",
            "content": "".join(TOKENS),
        }
        assert not context.is_interrupted(2)


class Logger(Actor[Frame]):
    """A stage between the output and the assistant aggregator: 0.01 s per text frame."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, LLMTextFrame):
            await trio.sleep(0.01)
        await self.push_frame(frame, direction)


class TestAStageBetweenTheOutputAndTheAggregator:
    async def test_frames_it_still_holds_at_the_interruption_are_committed(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """The output shows the answer faster than the logger after it passes it on. The
        interruption comes once 20 tokens are shown, while the logger still holds most of
        them: all 20 reach the context, none of the 10 the output never showed."""
        server.add(
            Reply.raw(sse_body(chunks.text_stream(TOKENS))),
            Reply.sse(chunks.text_stream(["ok"])),
        )
        shown: list[str] = []
        logger = Logger(name="Logger")

        def show(frame: Frame) -> None:
            if isinstance(frame, LLMTextFrame):
                shown.append(frame.text)
                if len(shown) == 20:
                    held = logger.ref.statistics().data_depth
                    assert held >= 10, held
                    task.interrupt()
                    transport.interrupted()

        async with shown_with(server, show, logger) as (task, transport, context):
            await say_and_wait(transport, "Tell me a long story", "Something else")
        assert server.requests[1].json["messages"][2:] == [
            {"role": "assistant", "content": "".join(TOKENS[:20])},
            {"role": "user", "content": "Something else"},
        ]
        assert context.is_interrupted(2)


class Speaker(OutputTransport):
    """An output stage a user could write: "speaks" each text for 0.05 s (a TTS, say)."""

    def __init__(self) -> None:
        super().__init__(name="Speaker")
        self.spoken: list[str] = []
        self.notifier = Notifier()

    async def deliver(self, frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame):
            self.spoken.append(frame.text)
            self.notifier.notify()
            await trio.sleep(0.05)


class TestAnOutputStageOfYourOwn:
    async def test_what_deliver_was_given_is_what_the_context_keeps(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """A subclass of ``OutputTransport`` only writes ``deliver``. Text arrives faster than
        it is spoken; the interruption lands while the 5th text is being spoken: the first
        five are in the context, the ones still queued are not."""
        server.add(Reply.sse(chunks.text_stream(TOKENS)), Reply.sse(chunks.text_stream(["ok"])))
        speaker = Speaker()
        llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=server.base_url)
        context = OpenAILLMContext(messages=[SYSTEM])
        pair = llm.create_context_aggregator(context)
        async with PipelineTask(Pipeline([pair.user(), llm, speaker, pair.assistant()])) as task:
            await task.queue_frame(TranscriptionFrame("Tell me a story", user_id="u", timestamp=""))
            await speaker.notifier.wait_for(lambda: len(speaker.spoken) == 5)
            await trio.sleep(0.01)  # in the middle of speaking it
            task.interrupt()
            await task.queue_frame(TranscriptionFrame("Stop", user_id="u", timestamp=""))
            await speaker.notifier.wait_for(lambda: speaker.spoken[-1:] == ["ok"])
        assert speaker.spoken[:5] == TOKENS[:5]
        assert server.requests[1].json["messages"][2:] == [
            {"role": "assistant", "content": "".join(TOKENS[:5])},
            {"role": "user", "content": "Stop"},
        ]
        assert context.is_interrupted(2)


async def _settle_virtual() -> None:
    await trio.testing.wait_all_tasks_blocked()


class TestContextIsWhatTheOutputDelivered:
    """Property: every round of every conversation, whatever the interruption point."""

    async def test_1000_random_rounds_in_virtual_time(
        self, autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer
    ) -> None:
        failures: list[str] = []
        rounds = interrupted = cut = 0
        for seed in range(SESSIONS):
            rng = random.Random(seed)
            plans = [plan_round(rng, r, scale=0.5) for r in range(ROUNDS)]
            harness = DeliveryHarness(server, _settle_virtual)
            with trio.fail_after(3600):
                await harness.run(plans)
            rounds += len(plans)
            interrupted += harness.interrupted_rounds()
            cut += harness.cut_answers()
            failures += [f"seed {seed}, {problem}" for problem in harness.problems()]
        # About 800 interruptions, about 280 of them cutting an answer after some text.
        assert rounds >= 1000
        assert interrupted >= 600
        assert cut >= 200
        assert failures == [], f"{len(failures)} problems in {rounds} rounds:\n" + "\n".join(
            failures[:40]
        )

    async def test_soak_of_200_sessions_in_real_time(self) -> None:
        """The same property with real time and real scheduling: 200 conversations, 25 at a
        time (each with its own scripted server on 127.0.0.1), tokens a few milliseconds
        apart, interruptions at random moments."""
        failures: list[str] = []
        rounds = interrupted = cut = 0
        limiter = trio.CapacityLimiter(SOAK_CONCURRENCY)

        async def conversation(seed: int) -> None:
            nonlocal rounds, interrupted, cut
            rng = random.Random(10_000 + seed)
            plans = [plan_round(rng, r, scale=0.003) for r in range(SOAK_ROUNDS)]

            async def settle() -> None:
                await trio.sleep(rng.random() * 0.003)

            async with limiter, ScriptedOpenAIServer() as server:
                harness = DeliveryHarness(server, settle)
                await harness.run(plans)
                assert server.unexpected_requests == 0
            rounds += len(plans)
            interrupted += harness.interrupted_rounds()
            cut += harness.cut_answers()
            failures.extend(f"seed {seed}, {problem}" for problem in harness.problems())

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for seed in range(SOAK_SESSIONS):
                    nursery.start_soon(conversation, seed)
        # About 490 interruptions, about 190 of them cutting an answer after some text.
        assert rounds == SOAK_SESSIONS * SOAK_ROUNDS
        assert interrupted >= 300
        assert cut >= 60
        assert failures == [], f"{len(failures)} problems in {rounds} rounds:\n" + "\n".join(
            failures[:40]
        )


class TestACallbackThatSometimesReturnsAnAwaitable:
    """``on_output`` a plain function that returns an awaitable for some frames (a lambda
    around an async send, say): the output stage shows most frames at once, in its
    synchronous handler, and awaits what the callback returns before it shows the next."""

    @staticmethod
    def callback(events: list[str]) -> OutputCallback:
        def show(frame: Frame) -> Awaitable[None] | None:
            if not isinstance(frame, LLMTextFrame):
                return None
            events.append(f"show {frame.text}")
            number = frame.text[1:-1]  # "t6;": 6 (one of TOKENS)
            if not number.isdigit() or int(number) % 3:
                return None

            async def slowly() -> None:
                await trio.sleep(0.01)
                events.append(f"shown {frame.text}")

            return slowly()

        return show

    async def test_every_frame_is_shown_once_in_order(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.raw(sse_body(chunks.text_stream(TOKENS))))
        events: list[str] = []
        async with shown_with(server, self.callback(events)) as (_, transport, context):
            await say_and_wait(transport, "Count")
        expected: list[str] = []
        for token in TOKENS:
            expected.append(f"show {token}")
            if int(token[1:-1]) % 3 == 0:
                expected.append(f"shown {token}")
        assert events == expected
        assert context.messages[-1] == {"role": "assistant", "content": "".join(TOKENS)}

    async def test_an_interruption_while_one_is_awaited_keeps_that_frame_shown(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        """Interrupted while the showing of ``t6;`` is awaited: the showing is cancelled, but
        the frame counts as shown (the docs of ``OutputTransport.deliver``), so the context
        has the text up to it, and the next turn works."""
        server.add(
            Reply.raw(sse_body(chunks.text_stream(TOKENS))),
            Reply.sse(chunks.text_stream(["ok"])),
        )
        events: list[str] = []
        show = self.callback(events)

        def interrupting(frame: Frame) -> Awaitable[None] | None:
            result = show(frame)
            if isinstance(frame, LLMTextFrame) and frame.text == "t6;":
                task.interrupt()
                transport.interrupted()
            return result

        async with shown_with(server, interrupting) as (task, transport, context):
            await say_and_wait(transport, "Count", "Something else")
        assert "shown t6;" not in events
        assert server.requests[1].json["messages"][2] == {
            "role": "assistant",
            "content": "".join(TOKENS[:7]),
        }
        assert context.is_interrupted(2)
        assert context.messages[-1] == {"role": "assistant", "content": "ok"}
