"""Generation parameters and requests are validated at construction and build the right body."""

from __future__ import annotations

import math
from typing import Any

import pytest

from actors.client import (
    ChatCompletionsClient,
    ChatRequest,
    GenerationParams,
    InvalidParameterError,
    Timeouts,
)

from .client_helpers import make_request


class TestValidation:
    """Out-of-range or wrong-typed values fail at construction with a message naming them."""

    @pytest.mark.parametrize(
        ("field", "value", "fragment"),
        [
            ("temperature", 2.5, "0 <= temperature <= 2"),
            ("temperature", -0.1, "0 <= temperature <= 2"),
            ("temperature", math.nan, "temperature"),
            ("top_p", 1.01, "0 <= top_p <= 1"),
            ("top_k", -1, "top_k >= 0"),
            ("max_tokens", 0, "max_tokens >= 1"),
            ("max_completion_tokens", 0, "max_completion_tokens >= 1"),
            ("frequency_penalty", 2.1, "-2 <= frequency_penalty <= 2"),
            ("presence_penalty", -3, "-2 <= presence_penalty <= 2"),
            ("top_logprobs", 21, "0 <= top_logprobs <= 20"),
            ("seed", 2**63, "seed"),
        ],
    )
    def test_out_of_range(self, field: str, value: Any, fragment: str) -> None:
        """The error names the field, the value and the allowed range."""
        kwargs: dict[str, Any] = {field: value}
        if field == "top_logprobs":
            kwargs["logprobs"] = True
        with pytest.raises(InvalidParameterError) as caught:
            GenerationParams(**kwargs)
        message = str(caught.value)
        assert f"GenerationParams.{field}={value!r}" in message
        assert fragment in message
        assert isinstance(caught.value, ValueError)
        assert caught.value.category == "invalid_request"

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("temperature", "hot"),
            ("temperature", True),
            ("max_tokens", 1.5),
            ("seed", "42"),
            ("logprobs", 1),
            ("user", 3),
            ("service_tier", 1),
            ("response_format", {"schema": {}}),
            ("response_format", "json"),
        ],
    )
    def test_wrong_type(self, field: str, value: Any) -> None:
        """Wrong types are refused too (bool is not a number)."""
        with pytest.raises(InvalidParameterError, match=f"GenerationParams.{field}"):
            GenerationParams(**{field: value})

    @pytest.mark.parametrize("stop", [[], ["a", "b", "c", "d", "e"], [""], "", [1]])
    def test_stop(self, stop: Any) -> None:
        """stop is one string or 1 to 4 non-empty strings."""
        with pytest.raises(InvalidParameterError, match=r"GenerationParams\.stop"):
            GenerationParams(stop=stop)

    def test_top_logprobs_requires_logprobs(self) -> None:
        """top_logprobs without logprobs=True is refused."""
        with pytest.raises(InvalidParameterError, match="requires logprobs=True"):
            GenerationParams(top_logprobs=3)

    def test_valid_extremes(self) -> None:
        """Range bounds are inclusive."""
        params = GenerationParams(
            temperature=0,
            top_p=1,
            top_k=0,
            max_tokens=1,
            frequency_penalty=-2,
            presence_penalty=2,
            stop=["a", "b", "c", "d"],
            logprobs=True,
            top_logprobs=20,
            seed=-(2**63),
        )
        assert params.stop == ("a", "b", "c", "d")

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"model": ""},
            {"messages": []},
            {"messages": "hi"},
            {"messages": [{"content": "no role"}]},
            {"tools": [{"function": {}}]},
            {"tool_choice": "always"},
            {"parallel_tool_calls": "yes"},
            {"params": {"temperature": 1}},
        ],
    )
    def test_bad_request(self, kwargs: dict[str, Any]) -> None:
        """A malformed request is refused before anything is sent."""
        with pytest.raises(InvalidParameterError, match="ChatRequest"):
            make_request(**kwargs)

    def test_timeouts_validated(self) -> None:
        """Timeouts must be positive numbers (None disables the optional ones)."""
        with pytest.raises(ValueError, match=r"Timeouts\.idle"):
            Timeouts(idle=0)
        assert Timeouts(first_token=None, idle=None, total=None).total is None


class TestUpdates:
    """with_updates applies a validated partial update and returns a new instance."""

    def test_update_and_unset(self) -> None:
        """Known keys are changed; None unsets; the original is untouched."""
        base = GenerationParams(temperature=0.7, max_tokens=100)
        updated = base.with_updates({"temperature": 0.2, "max_tokens": None, "seed": 7})
        assert (updated.temperature, updated.max_tokens, updated.seed) == (0.2, None, 7)
        assert base.temperature == 0.7

    def test_update_is_validated(self) -> None:
        """An invalid value in an update is refused."""
        with pytest.raises(InvalidParameterError, match="temperature=9"):
            GenerationParams().with_updates({"temperature": 9})

    def test_unknown_key_lists_valid_keys(self) -> None:
        """An unknown key names itself and every valid key."""
        with pytest.raises(InvalidParameterError) as caught:
            GenerationParams().with_updates({"temprature": 1})
        message = str(caught.value)
        assert "temprature" in message
        for name in GenerationParams.field_names():
            assert name in message

    def test_unknown_keys_to_extra(self) -> None:
        """On request, unknown keys go to extra, merged with the existing extra."""
        params = GenerationParams(extra={"min_p": 0.1}).with_updates(
            {"repetition_penalty": 1.1, "top_p": 0.9}, unknown_to_extra=True
        )
        assert dict(params.extra) == {"min_p": 0.1, "repetition_penalty": 1.1}
        assert params.top_p == 0.9


class TestBody:
    """The JSON body holds set parameters only, with extras merged last."""

    def test_minimal_body(self) -> None:
        """Unset parameters are absent; streaming and usage are requested."""
        assert make_request().to_body() == {
            "model": "test-model",
            "messages": [{"role": "user", "content": "Hello"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }

    def test_full_body_and_extra_order(self) -> None:
        """Every parameter is sent as given; params.extra then request.extra win last."""
        tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
        request = ChatRequest(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "f"}},
            parallel_tool_calls=False,
            params=GenerationParams(
                temperature=0.5,
                top_p=0.9,
                top_k=40,
                max_tokens=10,
                max_completion_tokens=20,
                seed=1,
                frequency_penalty=0.1,
                presence_penalty=-0.1,
                stop="END",
                logprobs=True,
                top_logprobs=2,
                response_format={"type": "json_object"},
                service_tier="flex",
                user="u1",
                extra={"min_p": 0.05, "temperature": 0.6},
            ),
            extra={"temperature": 0.7, "stream_options": {"include_usage": False}},
            include_usage=True,
        )
        body = request.to_body()
        assert body["temperature"] == 0.7
        assert body["stream_options"] == {"include_usage": False}
        assert body["min_p"] == 0.05
        assert body["stop"] == "END"
        assert body["tools"] == tools
        assert body["parallel_tool_calls"] is False
        for key in (
            "top_p",
            "top_k",
            "max_tokens",
            "max_completion_tokens",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "logprobs",
            "top_logprobs",
            "response_format",
            "service_tier",
            "user",
            "tool_choice",
        ):
            assert key in body

    def test_without_usage(self) -> None:
        """include_usage=False leaves stream_options out."""
        assert "stream_options" not in make_request(include_usage=False).to_body()

    async def test_unserialisable_body_is_refused(self) -> None:
        """A message that cannot become JSON fails before anything is sent."""
        from actors.client import ChatCompletionsClient

        client = ChatCompletionsClient(api_key="x", base_url="http://127.0.0.1:9/v1")
        request = make_request(messages=[{"role": "user", "content": b"bytes"}])
        with pytest.raises(InvalidParameterError, match="JSON"):
            client.stream(request)
        await client.aclose()


class TestApiKey:
    """A key that cannot be sent as it is (a trailing newline from a file, spaces, control or
    non-ASCII characters) is refused when the client is made, naming the problem and the
    source but never the key; before, every request failed as a "connection error"."""

    @pytest.mark.parametrize(
        ("key", "problem"),
        [
            ("sk-proj-abcdefghijklmnop\n", "line break"),
            ("sk-proj-abcdefghijklmnop\r\n", "line break"),
            (" sk-proj-abcdefghijklmnop", "whitespace"),
            ("sk-proj-abc\x00defghijklmnop", "control character"),
            ("sk-proj-abcdéfghijklmnop", "non-ASCII"),
        ],
    )
    def test_a_key_that_cannot_be_sent_is_refused_up_front(self, key: str, problem: str) -> None:
        with pytest.raises(InvalidParameterError, match=problem) as caught:
            ChatCompletionsClient(key, base_url="http://127.0.0.1:9/v1")
        assert "api_key" in str(caught.value)
        assert "abcdefghijklmnop" not in str(caught.value)
        assert "abcdefghijklmnop" not in repr(caught.value)

    def test_the_environment_variable_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefghijklmnop\n")
        with pytest.raises(InvalidParameterError, match=r"\$OPENAI_API_KEY contains a line"):
            ChatCompletionsClient(base_url="http://127.0.0.1:9/v1")

    def test_an_ordinary_key_is_taken(self) -> None:
        client = ChatCompletionsClient("sk-proj-abc_DEF-123", base_url="http://127.0.0.1:9/v1")
        assert "sk-proj-abc_DEF-123" not in repr(client)
