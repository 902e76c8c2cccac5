"""``ChatStream.text_deltas()``: the text-only way to read a stream gives the same text, result,
errors and timing as iterating chunks, and its fast path agrees with the full parser."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from actors.client import (
    ChatClientError,
    ChatCompletionsClient,
    StreamIdleTimeoutError,
    StreamResult,
)
from actors.client._accumulate import StreamAccumulator
from actors.client._chunks import parse_chunk
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .client_helpers import EXPECTED, fixture_bytes, make_request
from .test_client_fixtures import check, parse_pieces, split

NAMES = sorted(EXPECTED)
F = ChunkFactory()


def parse_text(pieces: Iterable[bytes]) -> tuple[StreamResult, list[str], ChatClientError | None]:
    return parse_pieces(pieces, text_only=True)


def parse_chunks(pieces: Iterable[bytes]) -> tuple[StreamResult, list[str]]:
    """The chunk mode's result and the non-empty contents of its chunks."""
    result, chunks, _ = parse_pieces(pieces)
    return result, [c.content for c in chunks if c.content]


class TestTextOnlyParser:
    @pytest.mark.parametrize("name", NAMES)
    def test_same_result_and_text_as_chunks(self, name: str) -> None:
        """For every recorded stream, text mode extracts the README row, the same result as the
        chunk mode, and exactly the non-empty contents of the chunks."""
        body = fixture_bytes(name)
        result, texts, failure = parse_text([body])
        check(result, failure, EXPECTED[name])
        reference, reference_texts = parse_chunks([body])
        assert result == reference
        assert texts == reference_texts
        # one byte at a time and an arbitrary split agree too
        assert parse_text(body[i : i + 1] for i in range(len(body)))[:2] == (result, texts)
        assert parse_text(split(body, range(7, len(body), 53)))[:2] == (result, texts)

    @pytest.mark.parametrize(
        "payload",
        [
            {"choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {"id": "c1", "model": "m", "created": 5, "system_fingerprint": "fp",
             "service_tier": "default", "choices": [{"index": 0, "delta": {"content": "x"},
                                                     "finish_reason": None, "logprobs": None}],
             "usage": None},
            {"choices": [{"delta": {"content": ""}}]},
        ],
    )  # fmt: skip
    def test_fast_path_folds_like_add(self, payload: dict[str, object]) -> None:
        """The commonest shape is folded in directly, with the same outcome as ``add``."""
        fast, slow = StreamAccumulator(), StreamAccumulator()
        assert fast.add_content_payload(json.loads(json.dumps(payload))) is not None
        slow.add(parse_chunk(payload))
        assert fast.result() == slow.result()
        assert fast.has_output == slow.has_output

    @pytest.mark.parametrize(
        "payload",
        [
            {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
            {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]},
            {"choices": [{"index": 0, "delta": {"content": "x", "role": "assistant"}}]},
            {"choices": [{"index": 0, "delta": {"content": 5}}]},
            {"choices": [{"index": "0", "delta": {"content": "x"}}]},
            {"choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": []}}]},
            {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"total_tokens": 1}},
            {"choices": [{"index": 0, "delta": {"content": "x"}}], "x_groq": {"usage": {}}},
            {"choices": [{"index": 0, "delta": {"content": "x"}}], "model": 3},
            {"choices": [{"index": 0, "delta": {"content": "x"}}], "created": "soon"},
            {"choices": [{"delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
            {"choices": []},
        ],
    )
    def test_other_shapes_are_left_to_the_full_parser(self, payload: dict[str, object]) -> None:
        """Anything else is refused by the fast path (nothing folded in) and, through the parser,
        gives the same result as chunk mode."""
        accumulator = StreamAccumulator()
        assert accumulator.add_content_payload(payload) is None
        assert accumulator.chunk_count == 0
        body = f"data: {json.dumps(payload)}\n\ndata: [DONE]\n\n".encode()
        result, texts, _ = parse_text([body])
        reference, reference_texts = parse_chunks([body])
        assert result == reference
        assert texts == reference_texts


class TestTextDeltasOverHttp:
    @pytest.mark.parametrize("name", NAMES)
    async def test_fixture_through_client(
        self, name: str, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """Over a real socket in small pieces: the README row, errors with the partial result."""
        server.add(Reply.raw(fixture_bytes(name), piece_size=97, framing="close"))
        failure: ChatClientError | None = None
        texts: list[str] = []
        async with client.stream(make_request()) as stream:
            try:
                async for text in stream.text_deltas():
                    texts.append(text)
            except ChatClientError as exc:
                failure = exc
        result = stream.result()
        check(result, failure, EXPECTED[name])
        assert "".join(texts) == result.text
        assert all(texts)
        if failure is not None:
            assert failure.partial_result == result

    async def test_first_token_of_a_tool_call_stream(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """No text at all, yet the first tool-call fragment is the first token."""
        server.add(
            Reply.sse(F.tool_call_stream([("lookup", '{"k": 1}')]), first_delay=1.5, delay=0.25)
        )
        async with client.stream(make_request()) as stream:
            texts = [text async for text in stream.text_deltas()]
        assert texts == []
        assert stream.first_token_at is not None
        assert stream.request_started_at is not None
        assert stream.first_token_at - stream.request_started_at == pytest.approx(1.75)
        assert [c.name for c in stream.result().tool_calls] == ["lookup"]

    async def test_tool_call_fragments_keep_the_stream_alive(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """Tool-call fragments 3 s apart (idle timeout 5 s) stream for 30 s without text and
        without an idle timeout: every chunk counts, not only text."""
        arguments = json.dumps({"text": "x" * 70})
        reply = F.tool_call_stream([("lookup", arguments)], fragment_size=8)
        server.add(Reply.sse(reply, delay=3.0))
        async with client.stream(make_request()) as stream:
            texts = [text async for text in stream.text_deltas()]
        assert texts == []
        assert trio.current_time() > 25.0
        assert json.loads(stream.result().tool_calls[0].arguments_json) == json.loads(arguments)

    async def test_idle_timeout_still_applies(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        client: ChatCompletionsClient,
    ) -> None:
        """A stall after text: the idle timeout fires as with chunks."""
        server.add(Reply.sse([F.role(), F.text("So far")], done=False, ending="stall"))
        texts: list[str] = []

        async def read_all() -> None:
            async with client.stream(make_request()) as stream:
                async for text in stream.text_deltas():
                    texts.append(text)

        with pytest.raises(StreamIdleTimeoutError):
            await read_all()
        assert texts == ["So far"]

    async def test_one_mode_per_stream(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """Chunks and text cannot both be read from one stream."""
        server.add(Reply.sse(F.text_stream(["a", "b"])), Reply.sse(F.text_stream(["c"])))
        async with client.stream(make_request()) as stream:
            async for _ in stream:
                break
            with pytest.raises(RuntimeError, match="already iterated as chunks"):
                stream.text_deltas()
        async with client.stream(make_request()) as stream:
            texts = stream.text_deltas()
            with pytest.raises(RuntimeError, match="read with text_deltas"):
                stream.__aiter__()
            assert [t async for t in texts] == ["c"]
