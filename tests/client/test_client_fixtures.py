"""Every recorded stream in tests/fixtures/openai parses to exactly the row of its README, offline
(sans-I/O parser, any split of the bytes) and through the client over a real socket."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.client import (
    ChatClientError,
    ChatCompletionChunk,
    ChatCompletionsClient,
    IncompleteStreamError,
    ServerDisconnectedError,
    StreamError,
    StreamResult,
)
from actors.client._parser import ChunkStreamParser
from actors.testing import Reply, ScriptedOpenAIServer

from .client_helpers import EXPECTED, Expected, fixture_bytes, make_request

NAMES = sorted(EXPECTED)


def parse_pieces(
    pieces: Iterable[bytes], *, text_only: bool = False
) -> tuple[StreamResult, list[Any], ChatClientError | None]:
    """Feed ``pieces`` to a parser; the result, what it emitted (chunks, or strings with
    ``text_only``) and its failure."""
    parser = ChunkStreamParser(text_only=text_only)
    for piece in pieces:
        parser.feed(piece)
        if parser.finished:
            break
    parser.end_of_body()
    emitted: list[Any] = list(parser.texts) if text_only else list(parser.chunks)
    return parser.result(), emitted, parser.failure


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def usage_tuple(result: StreamResult) -> tuple[int, int, int, int | None, int | None] | None:
    usage = result.usage
    if usage is None:
        return None
    return (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        usage.cached_tokens,
        usage.reasoning_tokens,
    )


def check(result: StreamResult, failure: ChatClientError | None, expected: Expected) -> None:
    assert result.text == expected.text
    assert result.refusal == expected.refusal
    assert [(c.index, c.name, c.arguments_json) for c in result.tool_calls] == list(
        expected.tool_calls
    )
    for call in result.tool_calls:
        assert call.parse_error is None
        assert call.arguments == json.loads(call.arguments_json)
        assert call.type == "function"
        assert call.id
    assert result.finish_reason == expected.finish_reason
    assert usage_tuple(result) == expected.usage
    assert result.chunk_count == expected.chunks
    if expected.logprobs is not None:
        assert result.logprobs is not None
        assert len(result.logprobs) == expected.logprobs
    if expected.error is not None:
        assert isinstance(failure, StreamError)
        assert expected.error in failure.message
        assert failure.error_type == "server_error"
        assert failure.category == "server"
        assert not result.done
    elif expected.incomplete:
        assert isinstance(failure, IncompleteStreamError)
        assert failure.category == "connectivity"
        assert not result.complete
    else:
        assert failure is None
        assert result.done


class TestFixturesOffline:
    """The sans-I/O parser extracts exactly what the fixtures README says."""

    @pytest.mark.parametrize("name", NAMES)
    def test_whole_body(self, name: str) -> None:
        """Fed in one piece, each fixture gives its README row."""
        result, chunks, failure = parse_pieces([fixture_bytes(name)])
        check(result, failure, EXPECTED[name])
        assert len(chunks) == EXPECTED[name].chunks

    @pytest.mark.parametrize("name", NAMES)
    def test_one_byte_reads(self, name: str) -> None:
        """Fed one byte at a time (every CR/LF pair and UTF-8 sequence split), nothing changes."""
        data = fixture_bytes(name)
        result, _, failure = parse_pieces(data[i : i + 1] for i in range(len(data)))
        check(result, failure, EXPECTED[name])


class TestAnySplit:
    """Any split of a fixture's bytes into reads gives the same result (property test)."""

    @pytest.mark.parametrize("name", NAMES)
    @settings(
        max_examples=30,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data())
    def test_split_anywhere(self, name: str, data: st.DataObject) -> None:
        """Splitting a fixture at arbitrary offsets never changes what is extracted."""
        body = fixture_bytes(name)
        cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(body) - 1), max_size=60))
        result, chunks, failure = parse_pieces(split(body, cuts))
        check(result, failure, EXPECTED[name])
        reference, reference_chunks, _ = parse_pieces([body])
        assert result == reference
        assert chunks == reference_chunks


class TestFixturesOverHttp:
    """Served by a real HTTP server in small pieces, each fixture gives its README row."""

    @pytest.mark.parametrize("name", NAMES)
    async def test_fixture_through_client(
        self, name: str, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """The client's stream and result match the README (errors carry the partial result)."""
        server.add(Reply.raw(fixture_bytes(name), piece_size=97, framing="close"))
        expected = EXPECTED[name]
        failure: ChatClientError | None = None
        seen: list[ChatCompletionChunk] = []
        async with client.stream(make_request()) as stream:
            try:
                async for chunk in stream:
                    seen.append(chunk)
            except ChatClientError as exc:
                failure = exc
        result = stream.result()
        check(result, failure, expected)
        assert len(seen) == expected.chunks
        if failure is not None:
            assert failure.partial_result == result
            assert failure.attempts == 1
        assert len(server.requests) == 1

    async def test_truncated_chunked_body_is_a_disconnect(
        self, server: ScriptedOpenAIServer, client: ChatCompletionsClient
    ) -> None:
        """Fixture 09 cut at transport level (no terminating chunk) is a ServerDisconnectedError
        after its text was delivered, and it is not retried."""
        server.add(Reply.raw(fixture_bytes("09_openai_truncated_no_done.sse"), ending="disconnect"))
        with pytest.raises(ServerDisconnectedError) as caught:
            await client.complete(make_request())
        assert caught.value.category == "connectivity"
        assert caught.value.partial_result is not None
        assert caught.value.partial_result.text == "The connection dropped after this"
        assert len(server.requests) == 1
