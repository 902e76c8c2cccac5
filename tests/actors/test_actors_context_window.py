"""The context window through the public pipeline, over the scripted OpenAI server: what each
request holds (and what the conversation and its storage keep), the server's tokenizer, one
trim-and-retry on ``context_length_exceeded``, and the summary request of the summarize
strategy."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    ContextWindow,
    ErrorCategory,
    FunctionCallParams,
    FunctionSchema,
    OpenAILLMService,
    TokenCounter,
    ToolsSchema,
)
from actors._planner import SUMMARY_PREFIX
from actors._service import SUMMARY_INSTRUCTION
from actors.client import BadRequestError, ContextLengthExceededError
from actors.storage import SQLiteConversationStorage
from actors.testing import ChunkFactory, RecordedRequest, Reply, ScriptedOpenAIServer

from ..conversation_kit import SYSTEM, assert_valid, open_conversation

_chunks = ChunkFactory()

#: 120 characters: 40 estimated tokens (+ 8 per message).
_PAD = "x" * 100


def _question(turn: int) -> str:
    return f"question {turn:04d} {_PAD}"[:120]


def _is_chat(request: RecordedRequest) -> bool:
    return request.path.endswith("/chat/completions")


def _chat_requests(server: ScriptedOpenAIServer) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if _is_chat(r)]


def _estimated(messages: Sequence[Mapping[str, Any]]) -> int:
    counter = TokenCounter()
    return sum(counter.estimate_message(m) for m in messages)


def _answering(
    *, tokenize: Any = None, summary: str = "SUMMARY", overflow: int = 0
) -> tuple[list[str], Any]:
    """A responder: ``/tokenize`` with ``tokenize(text)`` (404 without), summary requests with
    ``summary``, a user message ``call ...`` with a tool call, anything else with a
    90-character answer; the first ``overflow`` chat requests fail as too long."""
    tokenized: list[str] = []
    failures = [overflow]

    def respond(request: RecordedRequest) -> Reply:
        if request.path.endswith("/tokenize"):
            if tokenize is None:
                return Reply.error(404, "File Not Found", type="not_found_error")
            text = request.json["content"]
            tokenized.append(text)
            return Reply.raw(
                json.dumps({"tokens": list(range(tokenize(text)))}).encode(),
                headers={"content-type": "application/json"},
                framing="length",
            )
        messages = request.json["messages"]
        if messages[0]["content"] == SUMMARY_INSTRUCTION:
            return Reply.sse(_chunks.text_stream([summary]))
        if failures[0] > 0:
            failures[0] -= 1
            return Reply.error(
                400,
                "the request (3000 tokens) exceeds the available context size (2048 tokens), "
                "try increasing it",
                type="exceed_context_size_error",
            )
        last = messages[-1]
        if last["role"] == "user" and str(last["content"]).startswith("call"):
            return Reply.sse(_chunks.tool_call_stream([("lookup", '{"q": "a"}')]))
        return Reply.sse(_chunks.text_stream(["a" * 45, "b" * 45]))

    return tokenized, respond


async def _lookup(params: FunctionCallParams) -> None:
    await params.result_callback({"found": "yes"})


_TOOLS = ToolsSchema(
    standard_tools=[FunctionSchema("lookup", "Look something up", {"q": {"type": "string"}}, ["q"])]
)


async def _turns(conv: Any, count: int, *, first: int = 0, calls_every: int = 0) -> None:
    ends = len(conv.ends())
    for turn in range(first, first + count):
        text = _question(turn)
        if calls_every and turn % calls_every == calls_every - 1:
            text = "call " + text
        await conv.say(text)
        ends += 2 if text.startswith("call") else 1
        await conv.wait_ends(ends)


class TestDrop:
    async def test_long_conversation_is_trimmed_in_requests_and_kept_whole(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        window = ContextWindow(800, reserve=200)
        _, respond = _answering()
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(
                server,
                context_window=window,
                tools=_TOOLS,
                functions={"lookup": _lookup},
            ) as conv,
        ):
            await _turns(conv, 24, calls_every=5)
            assert conv.pair.store.context_window == window
            requests = _chat_requests(server)
            snapshot = conv.pair.store.snapshot()
            messages = conv.messages()

        # The conversation keeps every message: 24 user turns, 4 of them with a tool call.
        assert sum(m["role"] == "user" for m in messages) == 24
        assert len(messages) == 1 + 24 * 2 + 4 * 2
        assert snapshot.window_start is None  # a plain snapshot: no window
        tools_tokens = _estimated([{"role": "x", "content": json.dumps(conv.context.tools)}])
        starts = []
        for body in requests:
            sent = body["messages"]
            assert_valid(sent, allow_in_progress=True)
            assert sent[0] == SYSTEM
            assert _estimated(sent) + tools_tokens <= window.budget
            first_user = next(m["content"] for m in sent if m["role"] == "user")
            starts.append(first_user)
        assert requests[-1]["messages"][-1]["role"] in ("user", "tool")
        # Left out: the first turns, in a few trims only (the goal leaves room).
        assert starts[0] == _question(0)
        assert starts[-1] != _question(0)
        trims = sum(1 for a, b in itertools.pairwise(starts) if a != b)
        assert 1 <= trims <= len(requests) // 3
        # Each request holds the conversation from its start on, whole.
        last = requests[-1]["messages"]
        at = next(i for i, m in enumerate(messages) if m.get("content") == last[1]["content"])
        assert last[1:] == messages[at:-1]  # all but the answer to it

    async def test_the_snapshot_says_what_the_request_leaves_out(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        _, respond = _answering()
        seen: list[Any] = []
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server, context_window=ContextWindow(500, reserve=100)) as conv,
        ):
            original = conv.llm._infer

            async def spy(context: Any) -> None:
                seen.append(context)
                await original(context)

            conv.llm._infer = spy  # type: ignore[method-assign]
            await _turns(conv, 8)
        last = seen[-1]
        assert last.window_start is not None
        assert last.window_start > 0
        assert last.omitted == tuple(range(1, last.window_start))
        assert len(last.messages) == 16  # the whole conversation so far
        assert list(last.request_messages()) == _chat_requests(server)[-1]["messages"]

    async def test_the_storage_keeps_the_whole_conversation(self, tmp_path: Path) -> None:
        # Real time: the SQLite storage works in a thread, which virtual time would outrun.
        _, respond = _answering()
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            SQLiteConversationStorage(tmp_path / "c.db") as storage,
        ):
            async with open_conversation(
                server,
                storage=storage,
                conversation_id="long",
                context_window=ContextWindow(500, reserve=100),
            ) as conv:
                await _turns(conv, 10)
            stored = await storage.load("long")
        assert stored is not None
        assert len(stored.snapshot.messages) == 21
        assert len(_chat_requests(server)[-1]["messages"]) < 21

    async def test_off_by_default_nothing_changes(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        _, respond = _answering()
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server) as conv,
        ):
            await _turns(conv, 10)
            assert conv.llm.context_window is None
            assert conv.pair.store.context_window is None
        assert all(_is_chat(r) for r in server.requests), "no /tokenize probe"
        assert len(_chat_requests(server)[-1]["messages"]) == 20


class TestTokenizer:
    async def test_counts_with_the_servers_tokenizer_once_per_text(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        # The tokenizer says each text is 100 tokens: far more than the estimate.
        tokenized, respond = _answering(tokenize=lambda text: 100)
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server, context_window=ContextWindow(600, reserve=100)) as conv,
        ):
            await _turns(conv, 6)
            assert conv.llm._token_counter is not None
            assert conv.llm._token_counter.uses_tokenizer is True
        assert len(tokenized) == len(set(tokenized)), "each text is tokenized once"
        assert _question(5) in tokenized
        assert tokenized[0] == SYSTEM["content"]
        # By the estimate the 6 turns (about 600 tokens) would nearly fit the budget of 500;
        # by the tokenizer's count (108 per message) only the latest turns do.
        last = _chat_requests(server)[-1]["messages"]
        assert 1 + 1 <= len(last) <= 4
        assert last[-1]["content"] == _question(5)
        requests = [r for r in server.requests if r.path.endswith("/tokenize")]
        assert requests[0].headers["authorization"].startswith("Bearer ")


async def _turns_then_overflow(
    server: ScriptedOpenAIServer, conv: Any, count: int, *, overflow: int
) -> int:
    """Play ``count`` turns, then have the server refuse the next ``overflow`` chat requests
    as too long for the context; return how many chat requests it had received before."""
    await _turns(conv, count)
    before = len(_chat_requests(server))
    server.responder = _answering(overflow=overflow)[1]
    return before


class TestContextLengthExceeded:
    async def test_one_trim_harder_and_retry(self, autojump_clock: trio.testing.MockClock) -> None:
        _, respond = _answering()
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server, context_window=ContextWindow(100_000)) as conv,
        ):
            before = await _turns_then_overflow(server, conv, 6, overflow=1)
            await _turns(conv, 1, first=6)
            assert conv.errors == []
        retried = _chat_requests(server)[before:]
        assert len(retried) == 2
        full, harder = retried[0]["messages"], retried[1]["messages"]
        assert len(full) == 14
        assert len(harder) < len(full)
        assert harder[0] == SYSTEM
        assert harder[-1]["content"] == _question(6)
        assert _estimated(harder[1:]) <= _estimated(full[1:]) // 2
        assert len(conv.messages()) == 15

    async def test_a_second_refusal_is_an_error_frame(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        _, respond = _answering()
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server, context_window=ContextWindow(100_000)) as conv,
        ):
            before = await _turns_then_overflow(server, conv, 4, overflow=2)
            await conv.say(_question(4))
            await conv.wait_errors(1)
            await conv.wait_ends(5)
            (error,) = conv.errors
            assert conv.ends()[-1].error
        assert len(_chat_requests(server)) - before == 2
        assert isinstance(error.exception, ContextLengthExceededError)
        assert isinstance(error.exception, BadRequestError)
        assert error.category == ErrorCategory.INVALID_REQUEST
        assert "exceeds the available context size" in error.error

    async def test_without_a_window_no_retry(self, autojump_clock: trio.testing.MockClock) -> None:
        async with (
            ScriptedOpenAIServer(responder=_answering(overflow=1)[1]) as server,
            open_conversation(server) as conv,
        ):
            await conv.say("hi")
            await conv.wait_errors(1)
        assert len(_chat_requests(server)) == 1


class TestSummarize:
    async def test_the_left_out_turns_are_summarised_by_one_extra_request(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        window = ContextWindow(700, strategy="summarize", reserve=100, summary_max_tokens=40)
        _, respond = _answering(summary="They asked questions 0 to 3.")
        async with (
            ScriptedOpenAIServer(responder=respond) as server,
            open_conversation(server, context_window=window) as conv,
        ):
            await _turns(conv, 10)
            messages = conv.messages()
        chats = _chat_requests(server)
        summaries = [b for b in chats if b["messages"][0]["content"] == SUMMARY_INSTRUCTION]
        answers = [b for b in chats if b["messages"][0]["content"] != SUMMARY_INSTRUCTION]
        assert 1 <= len(summaries) <= 3
        first = summaries[0]
        assert first["max_tokens"] == 40
        assert "tools" not in first
        assert _question(0) in first["messages"][1]["content"]
        if len(summaries) > 1:
            assert "Summary so far: They asked" in summaries[1]["messages"][1]["content"]
        summary_message = {
            "role": "system",
            "content": SUMMARY_PREFIX + "They asked questions 0 to 3.",
        }
        assert answers[0]["messages"][1] != summary_message
        assert answers[-1]["messages"][:2] == [SYSTEM, summary_message]
        assert len(answers) == 10
        # The summary is sent, never stored in the conversation.
        assert summary_message not in messages
        assert len(messages) == 21

    async def test_a_failed_summary_drops_the_turns(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        window = ContextWindow(500, strategy="summarize", reserve=100, summary_max_tokens=40)
        _, respond = _answering()

        def failing(request: RecordedRequest) -> Reply:
            if _is_chat(request) and request.json["messages"][0]["content"] == SUMMARY_INSTRUCTION:
                return Reply.error(400, "no summaries today")
            return respond(request)  # type: ignore[no-any-return]

        async with (
            ScriptedOpenAIServer(responder=failing) as server,
            open_conversation(server, context_window=window) as conv,
        ):
            await _turns(conv, 8)
            assert conv.errors == []
        answers = [
            b["messages"]
            for b in _chat_requests(server)
            if b["messages"][0]["content"] != SUMMARY_INSTRUCTION
        ]
        assert len(answers) == 8
        last = answers[-1]
        assert not any(str(m["content"]).startswith(SUMMARY_PREFIX) for m in last)
        assert last[-1]["content"] == _question(7)
        assert len(last) < 16


def test_the_service_refuses_a_window_that_is_not_one() -> None:
    with pytest.raises(TypeError, match="context_window must be a ContextWindow"):
        OpenAILLMService(api_key="sk-x", context_window=2048)  # type: ignore[arg-type]
