"""Text conversations through the public pipeline: turns, history, the legacy messages frame,
vision input and settings updates, each checked on the request the server received next."""

from __future__ import annotations

import base64
import io
from typing import Any

import trio
import trio.testing
from PIL import Image

from actors import (
    ErrorCategory,
    FunctionSchema,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMMessagesFrame,
    LLMMessagesUpdateFrame,
    LLMRunFrame,
    LLMSetToolChoiceFrame,
    LLMSetToolsFrame,
    LLMTextFrame,
    LLMUpdateSettingsFrame,
    OpenAILLMService,
    ToolsSchema,
    VisionImageRawFrame,
)
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..conversation_kit import MODEL, SYSTEM, assert_valid, of_type, open_conversation


class TestTextTurn:
    """A user turn streams one answer: one start/end pair, the deltas in order, one assistant
    message in the context."""

    async def test_one_turn(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        pieces = ["Hel", "lo", ", ", "wor", "ld", "!"]
        server.add(Reply.sse(chunks.text_stream(pieces, usage=(9, 6)), delay=0.05))
        async with open_conversation(server) as conv:
            await conv.say("Hi there")
            await conv.wait_ends(1)

            body = conv.request(0)
            assert body["model"] == MODEL
            assert body["stream"] is True
            assert body["messages"] == [SYSTEM, {"role": "user", "content": "Hi there"}]
            assert "tools" not in body

            after_llm = [
                f
                for f in conv.output
                if isinstance(f, LLMFullResponseStartFrame | LLMTextFrame | LLMFullResponseEndFrame)
            ]
            assert [type(f) for f in after_llm] == (
                [LLMFullResponseStartFrame]
                + [LLMTextFrame] * len(pieces)
                + [LLMFullResponseEndFrame]
            )
            assert conv.texts() == pieces
            (end,) = conv.ends()
            assert not end.interrupted
            assert not end.error
            # The aggregator passes everything on: the same pair leaves the pipeline.
            assert len(conv.starts(conv.sink)) == 1
            assert len(conv.ends(conv.sink)) == 1
            assert conv.texts(conv.sink) == pieces

            messages = conv.messages()
            assert messages[-1] == {"role": "assistant", "content": "Hello, world!"}
            assert not conv.context.is_interrupted(len(messages) - 1)
            assert conv.errors == []
            assert_valid(messages)

    async def test_second_turn_carries_the_first_exchange(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.sse(chunks.text_stream(["Paris."])),
            Reply.sse(chunks.text_stream(["About 2.1 million."])),
        )
        async with open_conversation(server) as conv:
            await conv.say("Capital of France?")
            await conv.wait_ends(1)
            await conv.say("How many people live there?")
            await conv.wait_ends(2)

            second = conv.request_messages(1)
            assert second == [
                SYSTEM,
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
                {"role": "user", "content": "How many people live there?"},
            ]
            assert conv.messages() == [
                *second,
                {"role": "assistant", "content": "About 2.1 million."},
            ]
            assert len(conv.starts()) == 2
            assert len(conv.ends()) == 2
            assert_valid(conv.messages())


class TestMessagesFrame:
    """``LLMMessagesFrame`` runs one inference on exactly the messages it carries."""

    async def test_inference_on_exactly_those_messages(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["Bonjour"])))
        given: list[dict[str, Any]] = [
            {"role": "system", "content": "Translate to French."},
            {"role": "user", "content": "Hello"},
        ]
        async with open_conversation(server) as conv:
            await conv.queue(LLMMessagesFrame(given))
            await conv.wait_ends(1)
            assert conv.request_messages(0) == given
            assert "tools" not in conv.request(0)
            assert conv.texts() == ["Bonjour"]
            assert len(conv.starts()) == 1
            assert len(conv.ends()) == 1


def _rgb_pixels(width: int, height: int) -> bytes:
    return bytes(
        (x * 7 + y * 3) % 256 for y in range(height) for x in range(width) for _ in range(3)
    )


def _image_url(message: dict[str, Any]) -> str:
    parts = message["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(urls) == 1
    url = urls[0]
    assert isinstance(url, str)
    return url


class TestVision:
    """``VisionImageRawFrame`` becomes a user message with the question and the image as a
    data URL: raw pixels JPEG-encoded, encoded images passed through, oversized ones refused."""

    async def test_raw_rgb_pixels_are_sent_as_jpeg(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["A gradient."])))
        async with open_conversation(server) as conv:
            frame = VisionImageRawFrame(
                image=_rgb_pixels(32, 24), size=(32, 24), format="RGB", text="What is this?"
            )
            await conv.queue(frame)
            await conv.wait_ends(1)

            (message,) = conv.request_messages(0)
            assert message["role"] == "user"
            assert message["content"][0] == {"type": "text", "text": "What is this?"}
            url = _image_url(message)
            head, data = url.split(",", 1)
            assert head == "data:image/jpeg;base64"
            picture = Image.open(io.BytesIO(base64.b64decode(data)))
            assert picture.format == "JPEG"
            assert picture.size == (32, 24)
            assert conv.texts() == ["A gradient."]

    async def test_png_bytes_are_passed_through(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
        png = buffer.getvalue()
        server.add(Reply.sse(chunks.text_stream(["Red."])))
        async with open_conversation(server) as conv:
            await conv.queue(VisionImageRawFrame(image=png, size=(8, 8), format="image/png"))
            await conv.wait_ends(1)
            (message,) = conv.request_messages(0)
            assert message["content"] == [
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
                }
            ]

    async def test_oversized_image_is_refused_with_a_clear_error(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["Still here."])))
        async with open_conversation(server, max_image_bytes=1_000) as conv:
            await conv.queue(
                VisionImageRawFrame(
                    image=b"\x89PNG" + bytes(5_000), size=(64, 64), format="image/png"
                )
            )
            await conv.wait_errors(1)
            (error,) = conv.errors
            assert error.category == ErrorCategory.INVALID_REQUEST
            assert "VisionImageRawFrame" in error.error
            assert "1,000" in error.error
            assert "5,004" in error.error
            assert not error.fatal
            assert server.requests == []
            # The refused image still gets an answer that ends, with the error, after it.
            await conv.wait_ends(1)
            assert len(conv.starts()) == 1
            (end,) = conv.ends()
            assert end.error
            assert not end.interrupted
            # The session goes on.
            await conv.say("Hello?")
            await conv.wait_ends(2)
            assert conv.texts() == ["Still here."]

    async def test_pixels_that_do_not_match_the_size_are_refused(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        async with open_conversation(server) as conv:
            await conv.queue(VisionImageRawFrame(image=bytes(10), size=(32, 24), format="RGB"))
            await conv.wait_errors(1)
            (error,) = conv.errors
            assert error.category == ErrorCategory.INVALID_REQUEST
            assert "(32, 24)" in error.error
            assert "10 bytes" in error.error
            assert server.requests == []


class TestUpdateSettings:
    """``LLMUpdateSettingsFrame`` changes the model and parameters from the next request on; an
    invalid value is refused with an error and changes nothing."""

    async def test_model_and_temperature_change_between_turns(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["one"])), Reply.sse(chunks.text_stream(["two"])))
        params = OpenAILLMService.InputParams(temperature=0.7, max_completion_tokens=100)
        async with open_conversation(server, llm_params=params) as conv:
            await conv.say("first")
            await conv.wait_ends(1)
            await conv.queue(LLMUpdateSettingsFrame({"model": "gpt-other", "temperature": 0.2}))
            await conv.say("second")
            await conv.wait_ends(2)

            first, second = conv.request(0), conv.request(1)
            assert (first["model"], first["temperature"]) == (MODEL, 0.7)
            assert (second["model"], second["temperature"]) == ("gpt-other", 0.2)
            assert second["max_completion_tokens"] == 100
            assert conv.llm.model == "gpt-other"
            assert conv.errors == []
            # The frame travels on for the stages after the LLM.
            assert len(of_type(conv.output, LLMUpdateSettingsFrame)) == 1

    async def test_invalid_value_changes_nothing(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["ok"])))
        params = OpenAILLMService.InputParams(temperature=0.7)
        async with open_conversation(server, llm_params=params) as conv:
            await conv.queue(LLMUpdateSettingsFrame({"model": "gpt-other", "temperature": 7}))
            await conv.queue(LLMUpdateSettingsFrame({"temprature": 0.1}))
            await conv.wait_errors(2)
            bad_value, bad_key = conv.errors
            for error in (bad_value, bad_key):
                assert error.category == ErrorCategory.INVALID_REQUEST
                assert "LLMUpdateSettingsFrame" in error.error
                assert "nothing changed" in error.error
            assert "temperature" in bad_value.error
            assert "temprature" in bad_key.error
            assert conv.llm.model == MODEL
            assert conv.llm.params.temperature == 0.7

            await conv.say("still the same?")
            await conv.wait_ends(1)
            body = conv.request(0)
            assert (body["model"], body["temperature"]) == (MODEL, 0.7)


class TestContextFrames:
    """The frames that edit the conversation change what the next request carries: appended
    or replaced messages, tools, tool choice; ``run_llm`` and ``LLMRunFrame`` start an
    inference."""

    async def test_edits_show_in_the_next_requests(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(*(Reply.sse(chunks.text_stream([f"answer {i}"])) for i in range(3)))
        tools = ToolsSchema(standard_tools=[FunctionSchema(name="ping")])
        async with open_conversation(server) as conv:
            note = {"role": "user", "content": "Remember: blue."}
            await conv.queue(LLMMessagesAppendFrame([note]))  # no run_llm: no inference
            await conv.queue(LLMSetToolsFrame(tools))
            await conv.queue(LLMSetToolChoiceFrame("required"))
            await conv.queue(LLMRunFrame())
            await conv.wait_ends(1)
            first = conv.request(0)
            assert first["messages"] == [SYSTEM, note]
            assert first["tools"] == tools.to_openai()
            assert first["tool_choice"] == "required"

            await conv.queue(LLMSetToolsFrame(None))
            await conv.queue(LLMSetToolChoiceFrame(None))
            await conv.queue(
                LLMMessagesAppendFrame([{"role": "user", "content": "Colour?"}], run_llm=True)
            )
            await conv.wait_ends(2)
            second = conv.request(1)
            assert "tools" not in second
            assert "tool_choice" not in second
            assert second["messages"][-2:] == [
                {"role": "assistant", "content": "answer 0"},
                {"role": "user", "content": "Colour?"},
            ]

            fresh = [SYSTEM, {"role": "user", "content": "Start over."}]
            await conv.queue(LLMMessagesUpdateFrame(fresh, run_llm=True))
            await conv.wait_ends(3)
            assert conv.request_messages(2) == fresh
            assert conv.messages() == [*fresh, {"role": "assistant", "content": "answer 2"}]
            assert conv.errors == []

    async def test_invalid_edit_is_refused_with_an_error(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
    ) -> None:
        async with open_conversation(server) as conv:
            await conv.queue(LLMSetToolChoiceFrame("sometimes"))
            await conv.wait_errors(1)
            (error,) = conv.errors
            assert error.category == ErrorCategory.INVALID_REQUEST
            assert "sometimes" in error.error
            assert conv.context.tool_choice is None
            assert server.requests == []


async def test_the_output_passes_on_what_it_shows_uncopied(
    autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """The quick start's output passes each frame it shows on as it is: the same object, still
    interruptible (no interruption drops it on its way: the envelope carries the mark, see
    ``Actor.push_uninterruptible``)."""
    server.add(Reply.sse(chunks.text_stream(["Hello", " there"], usage=(3, 2))))
    async with open_conversation(server, quick_start=True) as conv:
        await conv.say("Hi")
        await conv.wait_ends(1)
        shown = {f.id: f for f in conv.output}
        passed = [f for f in conv.sink if f.id in shown]
        texts = [f for f in passed if isinstance(f, LLMTextFrame)]
        assert [f.text for f in texts] == ["Hello", " there"]
        for frame in passed:
            assert frame is shown[frame.id]
        assert all(f.interruptible for f in texts)


async def test_each_streamed_delta_is_a_fresh_text_frame_of_the_inference_turn(
    autojump_clock: trio.testing.MockClock, server: ScriptedOpenAIServer, chunks: ChunkFactory
) -> None:
    """The LLM makes one ``LLMTextFrame`` per content delta, as ``LLMTextFrame(text)`` would in
    its handler (it builds them on a fast path): the inference's turn, ids increasing after
    the start frame's, interruptible, recorded in the context, equal to a frame made the
    usual way."""
    server.add(Reply.sse(chunks.text_stream(["One", " two", " three"], usage=(3, 3))))
    async with open_conversation(server, quick_start=True) as conv:
        await conv.say("Hi")
        await conv.wait_ends(1)
        (start,) = of_type(conv.output, LLMFullResponseStartFrame)
        texts = of_type(conv.output, LLMTextFrame)
    assert texts == [LLMTextFrame("One"), LLMTextFrame(" two"), LLMTextFrame(" three")]
    assert all(type(f) is LLMTextFrame for f in texts)
    assert [f.turn for f in texts] == [start.turn] * 3
    assert start.turn is not None
    ids = [start.id, *(f.id for f in texts)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert all(f.interruptible and f.append_to_context for f in texts)
    assert all(start.created_at <= f.created_at for f in texts)
