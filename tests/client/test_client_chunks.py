"""Chunks are typed objects, tolerant of unknown fields, missing fields and server quirks."""

from __future__ import annotations

import pytest

from actors.client import ChoiceDelta, FunctionCallDelta, ToolCallDelta
from actors.client._chunks import parse_chunk


class TestShapes:
    """Every documented member is read; unknown ones are ignored and kept in raw."""

    def test_full_openai_chunk(self) -> None:
        """An OpenAI chunk with logprobs and usage is fully typed."""
        value = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1761564674,
            "model": "gpt-4o",
            "service_tier": "default",
            "system_fingerprint": "fp_1",
            "obfuscation": "xyz",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "Hi", "refusal": None},
                    "logprobs": {
                        "content": [
                            {
                                "token": "Hi",
                                "logprob": -0.5,
                                "bytes": [72, 105],
                                "top_logprobs": [{"token": "Hey", "logprob": -1, "bytes": None}],
                            }
                        ],
                        "refusal": None,
                    },
                    "finish_reason": None,
                }
            ],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        }
        chunk = parse_chunk(value)
        assert chunk.id == "chatcmpl-1"
        assert chunk.created == 1761564674
        assert chunk.service_tier == "default"
        assert chunk.content == "Hi"
        assert chunk.delta.role == "assistant"
        logprobs = chunk.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.content is not None
        assert logprobs.content[0].bytes == (72, 105)
        assert logprobs.content[0].top_logprobs[0].logprob == -1.0
        assert chunk.usage is not None
        assert (chunk.usage.cached_tokens, chunk.usage.reasoning_tokens) == (3, 2)
        assert chunk.raw["obfuscation"] == "xyz"

    def test_empty_object(self) -> None:
        """A field-less chunk (e.g. an 'event: ping' payload) is valid and empty."""
        chunk = parse_chunk({})
        assert chunk.choices == ()
        assert chunk.delta == ChoiceDelta()
        assert chunk.finish_reason is None
        assert not chunk.has_output

    def test_vllm_stop_reason_and_no_arguments_key(self) -> None:
        """vLLM's stop_reason is kept; a tool fragment without arguments is fine."""
        chunk = parse_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "id": "t1",
                                    "type": "function",
                                    "index": 0,
                                    "function": {"name": "f"},
                                }
                            ]
                        },
                        "finish_reason": None,
                        "stop_reason": 128009,
                    }
                ]
            }
        )
        assert chunk.choices[0].stop_reason == 128009
        assert chunk.delta.tool_calls == (
            ToolCallDelta(index=0, id="t1", type="function", function=FunctionCallDelta(name="f")),
        )

    def test_llamacpp_timings_kept(self) -> None:
        """llama.cpp's non-standard timings object is exposed."""
        chunk = parse_chunk({"choices": [], "timings": {"prompt_n": 15, "predicted_ms": 40.5}})
        assert chunk.timings == {"prompt_n": 15, "predicted_ms": 40.5}

    def test_groq_usage_in_x_groq(self) -> None:
        """Groq's x_groq.usage is used when the standard usage is absent."""
        chunk = parse_chunk(
            {
                "choices": [],
                "x_groq": {
                    "id": "req_1",
                    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
                },
            }
        )
        assert chunk.usage is not None
        assert chunk.usage.total_tokens == 10

    @pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
    def test_reasoning_fields(self, key: str) -> None:
        """Reasoning text is read from reasoning_content or reasoning."""
        chunk = parse_chunk({"choices": [{"index": 0, "delta": {key: "thinking"}}]})
        assert chunk.delta.reasoning_content == "thinking"
        assert chunk.has_output

    def test_ollama_tool_call_without_index(self) -> None:
        """A tool call without index (old Ollama) has index None."""
        chunk = parse_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {"id": "c", "function": {"name": "f", "arguments": "{}"}}
                            ]
                        },
                    }
                ]
            }
        )
        assert chunk.delta.tool_calls[0].index is None

    def test_other_choice_is_not_choice_zero(self) -> None:
        """delta/content/finish_reason describe choice 0 only."""
        chunk = parse_chunk(
            {"choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": "stop"}]}
        )
        assert chunk.content == ""
        assert chunk.finish_reason is None


class TestLeniency:
    """Wrong-typed members degrade to None instead of failing the stream."""

    def test_wrong_types(self) -> None:
        """Numbers where strings belong, strings where numbers belong, junk lists."""
        chunk = parse_chunk(
            {
                "id": 5,
                "created": "yesterday",
                "model": None,
                "choices": [
                    "junk",
                    {"index": 0.0, "delta": "nope", "logprobs": 3, "finish_reason": None},
                ],
                "usage": {"prompt_tokens": 1.0, "completion_tokens": "2", "total_tokens": None},
                "timings": [1, 2],
            }
        )
        assert chunk.id is None
        assert chunk.created is None
        assert len(chunk.choices) == 1
        assert chunk.choices[0].delta == ChoiceDelta()
        assert chunk.choices[0].logprobs is None
        assert chunk.usage is not None
        assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens) == (1, 0)
        assert chunk.timings is None

    def test_content_parts_are_joined(self) -> None:
        """Content sent as a list of text parts becomes one string."""
        chunk = parse_chunk(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b"},
                            ]
                        },
                    }
                ]
            }
        )
        assert chunk.content == "ab"

    def test_not_a_mapping(self) -> None:
        """Only a JSON object is a chunk."""
        with pytest.raises(TypeError, match="JSON object"):
            parse_chunk([1, 2])  # type: ignore[arg-type]
