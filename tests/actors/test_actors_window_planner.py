"""The context window's pure planning (``actors._planner``), its configuration
(``ContextWindow``) and the token counter, without a session.

The property tests draw conversations with tool calls (several calls per batch, text after
them, system and developer messages between turns) and check what every request must be: valid
for the API (every ``tool`` message right after the assistant message that made its call),
holding every system/developer message and the latest user turn, and within the budget
whenever that is possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import ContextWindow, TokenCounter
from actors._planner import (
    PROTECTED_ROLES,
    SUMMARY_PREFIX,
    harder_start,
    plan_start,
    request_messages,
    safe_starts,
)

from ..conversation_kit import context_problems

Message = dict[str, Any]


def _user(text: str = "question") -> Message:
    return {"role": "user", "content": text}


def _assistant(text: str = "answer") -> Message:
    return {"role": "assistant", "content": text}


def _calls(ids: Sequence[str]) -> list[Message]:
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
        ],
    }
    return [call, *({"role": "tool", "tool_call_id": i, "content": "42"} for i in ids)]


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """A valid conversation: an optional leading system message, then turns (a user message,
    then answers: text, or batches of tool calls with their results), with system/developer
    messages now and then between turns."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": "be brief"})
    call_number = 0
    for turn in range(draw(st.integers(1, 12))):
        if turn and draw(st.integers(0, 5)) == 0:
            role = draw(st.sampled_from(["system", "developer"]))
            messages.append({"role": role, "content": f"note {turn}"})
        messages.append(_user(f"question {turn}"))
        for _ in range(draw(st.integers(0, 3))):
            if draw(st.booleans()):
                count = draw(st.integers(1, 3))
                ids = [f"call_{call_number + k}" for k in range(count)]
                call_number += count
                messages.extend(_calls(ids))
            else:
                messages.append(_assistant(f"answer {turn}"))
    return messages


def _kept_counts(messages: Sequence[Message], start: int, sizes: Sequence[int]) -> dict[int, int]:
    return {
        i: sizes[i]
        for i in range(len(messages))
        if i >= start or messages[i]["role"] in PROTECTED_ROLES
    }


def _request_tokens(messages: Sequence[Message], start: int, sizes: Sequence[int]) -> int:
    return sum(_kept_counts(messages, start, sizes).values())


def _last_user(messages: Sequence[Message]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def _check_request(messages: Sequence[Message], start: int) -> tuple[Message, ...]:
    request = request_messages(messages, start, None)
    assert context_problems(request) == []
    protected = [m for m in messages if m["role"] in PROTECTED_ROLES]
    assert [m for m in request if m["role"] in PROTECTED_ROLES] == protected
    tail = messages[_last_user(messages) :]
    assert list(request[-len(tail) :]) == list(tail), "the latest user turn is sent whole"
    return request


class TestPlanProperties:
    @settings(max_examples=300, deadline=None)
    @given(
        conversation=conversations(),
        data=st.data(),
        budget=st.integers(1, 2000),
        target=st.floats(0.1, 1.0),
        fixed=st.integers(0, 200),
    )
    def test_any_plan_is_valid_and_fits_when_it_can(
        self,
        conversation: list[Message],
        data: st.DataObject,
        budget: int,
        target: float,
        fixed: int,
    ) -> None:
        sizes = data.draw(
            st.lists(st.integers(1, 300), min_size=len(conversation), max_size=len(conversation))
        )
        goal = int(budget * target)
        start = plan_start(
            conversation,
            _kept_counts(conversation, 0, sizes),
            start=0,
            fixed=fixed,
            budget=budget,
            goal=goal,
        )
        assert start == 0 or conversation[start]["role"] == "user"
        _check_request(conversation, start)
        total = fixed + _request_tokens(conversation, start, sizes)
        everything = fixed + sum(sizes)
        if everything <= budget:
            assert start == 0, "nothing is left out of a request that fits"
            return
        smallest = fixed + _request_tokens(conversation, _last_user(conversation), sizes)
        if smallest <= goal:
            assert total <= goal, "a trim goes down to the goal when it can"
        elif smallest <= budget:
            assert total <= budget
        else:
            assert start == max([0, *safe_starts(conversation, 0)]), "as much as possible"

    @settings(max_examples=150, deadline=None)
    @given(conversation=conversations(), budget=st.integers(50, 1500))
    def test_a_growing_conversation_moves_its_window_forward_only(
        self, conversation: list[Message], budget: int
    ) -> None:
        """As the store uses it: planned again after every message, the start only moves
        forward, every request is valid, and trims are rare (the goal leaves room)."""
        start = trims = 0
        sizes = [20 + 7 * (i % 5) for i in range(len(conversation))]
        for end in range(1, len(conversation) + 1):
            prefix = conversation[:end]
            if not any(m["role"] == "user" for m in prefix):
                continue
            new = plan_start(
                prefix,
                _kept_counts(prefix, start, sizes),
                start=start,
                fixed=0,
                budget=budget,
                goal=int(budget * 0.7),
            )
            assert new >= start
            trims += new > start
            start = new
            request = request_messages(prefix, start, None)
            # A prefix may end inside a batch (calls recorded, results not yet): only its
            # complete part must be valid.
            if not context_problems(prefix):
                assert context_problems(request) == []
        users = sum(m["role"] == "user" for m in conversation)
        assert trims <= users

    @settings(max_examples=200, deadline=None)
    @given(conversation=conversations())
    def test_harder_start_halves_the_request_or_says_it_cannot(
        self, conversation: list[Message]
    ) -> None:
        counter = TokenCounter()
        harder = harder_start(conversation, 0, counter.estimate_message)
        if harder is None:
            assert safe_starts(conversation, 0) == []
            return
        assert harder in safe_starts(conversation, 0)
        _check_request(conversation, harder)
        before = sum(counter.estimate_message(m) for m in conversation)
        after = sum(
            counter.estimate_message(m) for m in request_messages(conversation, harder, None)
        )
        last = _last_user(conversation)
        if harder != last:
            assert after <= before // 2


class TestPlan:
    def test_tool_results_are_never_separated_from_their_calls(self) -> None:
        # A user message between a call and its result (an application appended it): no
        # request may begin there.
        messages = [
            {"role": "system", "content": "s"},
            _user("a"),
            _calls(["c1"])[0],
            _user("typed while the tool ran"),
            _calls(["c1"])[1],
            _assistant("done"),
            _user("b"),
        ]
        assert safe_starts(messages, 0) == [1, 6]  # 1 leaves nothing out
        counts = dict.fromkeys(range(len(messages)), 100)
        start = plan_start(messages, counts, start=0, fixed=0, budget=250, goal=200)
        assert start == 6
        assert request_messages(messages, start, None) == (messages[0], messages[6])

    def test_the_summary_follows_the_system_messages_kept(self) -> None:
        messages = [
            {"role": "system", "content": "s"},
            _user("a"),
            _assistant("x"),
            {"role": "developer", "content": "d"},
            _user("b"),
        ]
        request = request_messages(messages, 4, "they said a")
        assert request == (
            messages[0],
            messages[3],
            {"role": "system", "content": SUMMARY_PREFIX + "they said a"},
            messages[4],
        )
        assert request_messages(messages, 0, None) == tuple(messages)

    def test_no_user_message_no_trim(self) -> None:
        messages = [{"role": "system", "content": "s"}, _assistant("hello")]
        counts = dict.fromkeys(range(2), 1000)
        assert plan_start(messages, counts, start=0, fixed=0, budget=10, goal=5) == 0
        assert harder_start(messages, 0, TokenCounter().estimate_message) is None


class TestContextWindow:
    def test_defaults(self) -> None:
        window = ContextWindow(2048)
        assert window.strategy == "drop"
        assert window.answer_reserve == 512
        assert window.budget == 1536
        assert window.goal == int(1536 * 0.7)
        assert ContextWindow(2048, reserve=100).budget == 1948

    @pytest.mark.parametrize(
        ("kwargs", "words"),
        [
            ({"max_tokens": 0}, "positive int"),
            ({"max_tokens": True}, "positive int"),
            ({"max_tokens": 100, "strategy": "forget"}, "'drop' or 'summarize'"),
            ({"max_tokens": 100, "target": 0}, "(0, 1]"),
            ({"max_tokens": 100, "target": 1.5}, "(0, 1]"),
            ({"max_tokens": 100, "reserve": -1}, "int >= 0"),
            ({"max_tokens": 100, "reserve": 100}, "leaves nothing"),
            ({"max_tokens": 100, "summary_timeout": 0}, "summary_timeout"),
        ],
    )
    def test_bad_values_are_refused_with_what_is_wrong(
        self, kwargs: dict[str, Any], words: str
    ) -> None:
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("]", r"\]")):
            ContextWindow(**kwargs)


class TestTokenCounter:
    def test_estimates_are_conservative_and_count_images(self) -> None:
        counter = TokenCounter()
        assert counter.estimate("a" * 30) == 10
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
        message = {"role": "user", "content": [{"type": "text", "text": "abc"}, image]}
        assert counter.estimate_message(message) == 1 + 8 + 768
        call = _calls(["c1"])[0]
        assert counter.estimate_message(call) == counter.estimate("f({})") + 8

    async def test_counts_with_the_tokenizer_and_caches(self) -> None:
        seen: list[str] = []

        async def tokenize(text: str) -> list[int]:
            seen.append(text)
            await trio.lowlevel.checkpoint()
            return list(range(len(text.split())))

        counter = TokenCounter(tokenize)
        assert counter.uses_tokenizer is None
        assert await counter.count("one two three") == 3
        assert await counter.count("one two three") == 3
        assert await counter.count_message(_user("a b")) == 2 + 8
        assert seen == ["one two three", "a b"]
        assert counter.uses_tokenizer is True

    async def test_a_failed_probe_means_estimates_from_then_on(self) -> None:
        calls = 0

        async def tokenize(text: str) -> int:
            nonlocal calls
            calls += 1
            raise RuntimeError("404")

        counter = TokenCounter(tokenize)
        assert await counter.count("x" * 9) == 3
        assert await counter.count("y" * 9) == 3
        assert calls == 1
        assert counter.uses_tokenizer is False

    async def test_the_cache_is_bounded(self) -> None:
        async def tokenize(text: str) -> int:
            return 1

        counter = TokenCounter(tokenize, cache_size=2)
        for text in ("a", "b", "c"):
            await counter.count(text)
        assert len(counter._cache) == 2
