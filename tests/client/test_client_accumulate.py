"""The accumulator folds chunks into text, tool calls and usage by the documented rules."""

from __future__ import annotations

from typing import Any

import cattrs

from actors.client import StreamResult
from actors.client._accumulate import StreamAccumulator
from actors.client._chunks import parse_chunk
from actors.testing import ChunkFactory

F = ChunkFactory()


def fold(*chunks: dict[str, Any]) -> StreamResult:
    accumulator = StreamAccumulator()
    for chunk in chunks:
        accumulator.add(parse_chunk(chunk))
    return accumulator.result()


def fragments(*calls: dict[str, Any]) -> dict[str, Any]:
    """One chunk carrying several tool-call fragments."""
    return F.chunk({"tool_calls": list(calls)})


class TestToolCalls:
    """Tool calls are assembled per index from every fragment, robust to server quirks."""

    def test_first_non_empty_id_and_name_win(self) -> None:
        """Repeated or null ids/names on later fragments do not corrupt the call."""
        result = fold(
            F.tool_call(0, id="call_1", name="get_weather", arguments='{"a"'),
            fragments({"index": 0, "id": "call_1", "function": {"name": "get_weather"}}),
            fragments({"index": 0, "id": "", "function": {"name": None, "arguments": ":1}"}}),
        )
        (call,) = result.tool_calls
        assert (call.id, call.name, call.arguments_json, call.arguments) == (
            "call_1",
            "get_weather",
            '{"a":1}',
            {"a": 1},
        )

    def test_id_before_name_and_name_later(self) -> None:
        """An id may come first and the name in a later fragment."""
        result = fold(
            fragments({"index": 0, "id": "call_9", "type": "function"}),
            fragments({"index": 0, "function": {"name": "lookup", "arguments": "{}"}}),
        )
        assert (result.tool_calls[0].id, result.tool_calls[0].name) == ("call_9", "lookup")

    def test_call_without_id(self) -> None:
        """A call whose server never sent an id is kept with an empty id."""
        result = fold(fragments({"index": 0, "function": {"name": "f", "arguments": "{}"}}))
        assert result.tool_calls[0].id == ""
        assert result.tool_calls[0].type == "function"

    def test_interleaved_indexes_and_several_per_chunk(self) -> None:
        """Fragments of different calls may interleave and share a chunk."""
        result = fold(
            F.tool_call(0, id="a", name="f", arguments=""),
            F.tool_call(1, id="b", name="g", arguments='{"y":'),
            fragments(
                {"index": 0, "function": {"arguments": '{"x":'}},
                {"index": 1, "function": {"arguments": "2}"}},
                {"index": 0, "function": {"arguments": "1}"}},
            ),
        )
        assert [(c.index, c.name, c.arguments) for c in result.tool_calls] == [
            (0, "f", {"x": 1}),
            (1, "g", {"y": 2}),
        ]

    def test_reused_index_with_new_id_starts_new_call(self) -> None:
        """Ollama sends every parallel call at index 0; a new id there is a separate call."""
        result = fold(
            F.tool_call(0, id="call_a", name="first", arguments='{"n":1}'),
            F.tool_call(0, id="call_b", name="second", arguments='{"n":2}'),
            F.finish("tool_calls"),
        )
        assert [(c.index, c.id, c.name, c.arguments) for c in result.tool_calls] == [
            (0, "call_a", "first", {"n": 1}),
            (1, "call_b", "second", {"n": 2}),
        ]

    def test_missing_index_uses_position(self) -> None:
        """Fragments without index (old Ollama) are placed by their position."""
        result = fold(
            F.chunk(
                {
                    "tool_calls": [
                        {"id": "x", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "y", "function": {"name": "g", "arguments": "{}"}},
                    ]
                }
            )
        )
        assert [c.name for c in result.tool_calls] == ["f", "g"]

    def test_invalid_json_kept_with_error(self) -> None:
        """Broken arguments yield the call with a parse error and the raw text."""
        result = fold(F.tool_call(0, id="c", name="f", arguments='{"a": 1'))
        (call,) = result.tool_calls
        assert call.arguments is None
        assert call.arguments_json == '{"a": 1'
        assert call.parse_error is not None
        assert "not valid JSON" in call.parse_error

    def test_json_that_is_not_an_object(self) -> None:
        """Arguments must be a JSON object."""
        result = fold(F.tool_call(0, id="c", name="f", arguments="[1, 2]"))
        assert result.tool_calls[0].arguments is None
        assert result.tool_calls[0].parse_error is not None
        assert "JSON list" in result.tool_calls[0].parse_error

    def test_empty_arguments_are_an_empty_object(self) -> None:
        """A call without arguments has arguments {}."""
        result = fold(F.tool_call(0, id="c", name="f"))
        assert result.tool_calls[0].arguments == {}
        assert result.tool_calls[0].parse_error is None

    def test_other_choices_are_ignored(self) -> None:
        """Only choice 0 is accumulated."""
        result = fold(
            F.chunk(choices=[{"index": 1, "delta": {"content": "other"}}]),
            F.text("mine"),
        )
        assert result.text == "mine"


class TestUsageAndMetadata:
    """Usage is the last snapshot; metadata is the last non-null value."""

    def test_last_usage_snapshot_wins(self) -> None:
        """Running usage (vLLM continuous stats) is replaced, never summed."""
        result = fold(
            F.chunk({"content": "a"}, usage={"prompt_tokens": 5, "completion_tokens": 1}),
            F.chunk({"content": "b"}, usage={"prompt_tokens": 5, "completion_tokens": 2}),
            F.chunk({}, usage=None),
        )
        assert result.usage is not None
        assert result.usage.completion_tokens == 2

    def test_usage_details_kept(self) -> None:
        """Cached and reasoning token details survive."""
        result = fold(F.text("x"), F.usage(10, 4, cached_tokens=6, reasoning_tokens=3))
        assert result.usage is not None
        assert (result.usage.cached_tokens, result.usage.reasoning_tokens) == (6, 3)

    def test_metadata_and_reasoning(self) -> None:
        """Model, fingerprint, id and reasoning text are surfaced."""
        result = fold(
            F.chunk({"reasoning_content": "hmm, "}),
            F.chunk({"reasoning_content": "ok"}),
            F.text("answer"),
            F.finish("stop"),
        )
        assert (result.model, result.system_fingerprint, result.id) == (
            F.model,
            F.system_fingerprint,
            F.id,
        )
        assert result.reasoning == "hmm, ok"
        assert result.text == "answer"
        assert result.complete
        assert not result.done

    def test_add_reports_output(self) -> None:
        """add() tells whether a chunk carried output; has_output remembers it."""
        accumulator = StreamAccumulator()
        assert not accumulator.add(parse_chunk(F.role()))
        assert not accumulator.has_output
        assert accumulator.add(parse_chunk(F.text("x")))
        assert accumulator.has_output

    def test_result_unstructures_with_cattrs(self) -> None:
        """A result converts to plain data (for logs or snapshots) with the cattrs converter."""
        result = fold(F.tool_call(0, id="c", name="f", arguments='{"a": 1}'), F.usage(3, 1))
        data = cattrs.unstructure(result)
        assert data["tool_calls"][0]["arguments"] == {"a": 1}
        assert data["usage"]["total_tokens"] == 4
