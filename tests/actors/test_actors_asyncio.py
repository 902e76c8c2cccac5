"""The seed pipeline embedded in an asyncio application through ``AsyncioBridge``.

Synchronous tests that start their own asyncio loop: the scripted OpenAI server and the
pipeline run in trio (as the bridge's guest), the application code that feeds the user's
text, reads the answer and interrupts is asyncio.
"""

from __future__ import annotations

import asyncio

import trio

from actors import (
    LLMFullResponseEndFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    TranscriptionFrame,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime import AsyncioBridge, Frame, FrameDirection, Pipeline, PipelineTask

from ..conversation_kit import API_KEY, MODEL, SYSTEM


async def _serve(server: ScriptedOpenAIServer, url: asyncio.Future[str]) -> None:
    """Run the scripted server in trio until this call is cancelled from asyncio."""
    async with server:
        url.set_result(server.base_url)
        await trio.sleep_forever()


def test_an_asyncio_app_holds_a_conversation_and_interrupts_it() -> None:
    chunks = ChunkFactory()
    server = ScriptedOpenAIServer()
    server.add(
        Reply.sse(chunks.text_stream(["Hello", " from", " trio"])),
        # The second answer sends its first piece at once and then stalls: the application
        # interrupts it after that piece.
        Reply.sse(
            [
                chunks.chunk({"role": "assistant", "content": "One"}),
                chunks.text(" two"),
                chunks.finish(),
            ],
            first_delay=0.0,
            delay=60.0,
        ),
        Reply.sse(chunks.text_stream(["Sure."])),
    )

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        frames: asyncio.Queue[Frame] = asyncio.Queue()

        def listener(frame: Frame, direction: FrameDirection) -> None:
            if isinstance(frame, LLMTextFrame | LLMFullResponseEndFrame):
                frames.put_nowait(frame)

        async def answer() -> str:
            text = []
            while not isinstance(frame := await frames.get(), LLMFullResponseEndFrame):
                assert isinstance(frame, LLMTextFrame)
                text.append(frame.text)
            return "".join(text)

        async with AsyncioBridge() as trio_side:
            url: asyncio.Future[str] = loop.create_future()
            serving = asyncio.create_task(trio_side.run(_serve, server, url))
            llm = OpenAILLMService(model=MODEL, api_key=API_KEY, base_url=await url)
            pair = llm.create_context_aggregator(OpenAILLMContext(messages=[SYSTEM]))
            task = PipelineTask(
                Pipeline([pair.user(), llm, pair.assistant()]), on_downstream=listener
            )
            running = asyncio.create_task(trio_side.run(task.run))

            answers = []
            await trio_side.run(task.queue_frame, TranscriptionFrame("Hi", user_id="u"))
            answers.append(await answer())

            await trio_side.run(task.queue_frame, TranscriptionFrame("Count", user_id="u"))
            first = await frames.get()
            assert isinstance(first, LLMTextFrame)
            await trio_side.run_sync(task.interrupt)
            answers.append(first.text)
            # The interrupted response still ends with its end frame, and no text after it.
            assert isinstance(await frames.get(), LLMFullResponseEndFrame)

            await trio_side.run(task.queue_frame, TranscriptionFrame("Stop?", user_id="u"))
            answers.append(await answer())

            await trio_side.run(task.end)
            await running
            serving.cancel()
            messages = pair.context.get_messages()
        assert [m["role"] for m in messages] == [
            "system", "user", "assistant", "user", "assistant", "user", "assistant",
        ]  # fmt: skip
        assert messages[4]["content"].startswith("One")  # committed, marked as interrupted
        assert len(server.requests) == 3
        return answers

    assert asyncio.run(main()) == ["Hello from trio", "One", "Sure."]
