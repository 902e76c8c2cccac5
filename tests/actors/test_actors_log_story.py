"""The turn's story at debug level: a two-tool-call turn logs the request, the first token,
each call started and settled, the retry and the response end, and every line an actor logs
carries ``session``, ``actor`` and ``turn``."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from actors import FunctionHandler
from actors.client import RetryPolicy
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer
from runtime.testing import capture_logs

from ..conversation_kit import MODEL, open_conversation
from .actors_kit import TOOLS, TWO_CALLS, TWO_TOOL_FUNCTIONS, BlockingTool

STORY = {
    "llm request",
    "first token",
    "response end",
    "tool call started",
    "tool call settled",
    "chat completion attempt failed; retrying",
}


def _story(logs: list[Any]) -> list[tuple[str, ...]]:
    """The story lines, reduced to what they say (times left out)."""
    out: list[tuple[str, ...]] = []
    for e in logs:
        event = e["event"]
        if event == "llm request":
            out.append((event, e["model"], str(e["messages"]), str(e["tools"])))
        elif event == "response end":
            out.append(
                (
                    event,
                    e["outcome"],
                    str(e["finish_reason"]),
                    str(e["prompt_tokens"]),
                    str(e["completion_tokens"]),
                    str(e["tool_calls"]),
                )
            )
        elif event in ("tool call started", "tool call settled"):
            out.append((event, e["name"], e["tool_call_id"], e.get("outcome", "")))
        elif event in STORY:
            out.append((event,))
    return out


class TestTwoToolTurnStory:
    async def test_every_stage_tells_its_part(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(
            Reply.error(503, "busy"),
            Reply.sse(chunks.tool_call_stream(TWO_CALLS, usage=(40, 12)), first_delay=0.3),
            Reply.sse(chunks.text_stream(["Sunny", " in Paris."], usage=(60, 5)), first_delay=0.1),
        )
        with capture_logs() as logs:
            async with open_conversation(
                server,
                tools=TOOLS,
                functions=TWO_TOOL_FUNCTIONS,
                name="story",
                retry=RetryPolicy(initial_delay=0.2, jitter=0),
            ) as conv:
                await conv.say("Weather and time in Paris?")
                await conv.wait_ends(2)

        story = _story(logs)
        story[4:6] = sorted(story[4:6])  # the two calls start concurrently, in either order
        assert story == [
            ("llm request", MODEL, "2", "2"),
            ("chat completion attempt failed; retrying",),
            ("first token",),
            ("response end", "ok", "tool_calls", "40", "12", "2"),
            ("tool call started", "get_time", "call_t", ""),
            ("tool call started", "get_weather", "call_w", ""),
            ("tool call settled", "get_weather", "call_w", "ok"),
            ("tool call settled", "get_time", "call_t", "error"),
            ("llm request", MODEL, "5", "2"),  # system, user, the calls, 2 results
            ("first token",),
            ("response end", "ok", "stop", "60", "5", "0"),
        ]
        by_event = {e["event"]: e for e in logs}
        retry = by_event["chat completion attempt failed; retrying"]
        assert retry["attempt"] == 1
        assert retry["retry_in_s"] == 0.2
        first_tokens = [e for e in logs if e["event"] == "first token"]
        assert [e["ttfb_ms"] for e in first_tokens] == [
            # after the 503, the backoff and the scripted delay; then the scripted delay
            pytest_approx(500.0),
            pytest_approx(100.0),
        ]
        settled = {e["tool_call_id"]: e for e in logs if e["event"] == "tool call settled"}
        assert settled["call_w"]["duration_ms"] == pytest_approx(250.0)
        assert settled["call_t"]["duration_ms"] == pytest_approx(500.0)
        assert settled["call_t"]["error"] == "RuntimeError"

        # Every line logged by an actor (the story, the lifecycle, the client's retry, the
        # executor's error) names its session, its actor and its turn.
        actor_lines = [e for e in logs if "actor" in e]
        assert {e["event"] for e in actor_lines} >= STORY | {"actor started", "actor stopped"}
        missing = [
            (e["event"], key)
            for e in actor_lines
            for key in ("session", "actor", "turn")
            if e.get(key) is None
        ]
        assert missing == []
        assert {e["session"] for e in actor_lines} == {"story"}
        tellers = {e["event"]: e["actor"] for e in actor_lines if e["event"] in STORY}
        assert tellers["llm request"] == conv.llm.name
        assert tellers["chat completion attempt failed; retrying"] == conv.llm.name
        assert tellers["tool call started"] == f"{conv.llm.name}:tools"

    async def test_the_interruption_names_the_actors_it_interrupted(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.tool_call_stream(TWO_CALLS)))
        lookup = BlockingTool()
        functions: dict[str | None, FunctionHandler] = {"get_weather": lookup, "get_time": lookup}
        with capture_logs() as logs:
            async with open_conversation(server, tools=TOOLS, functions=functions) as conv:
                await conv.say("Weather and time?")
                await lookup.wait_running()
                await trio.testing.wait_all_tasks_blocked()
                conv.harness.interrupt()
                await trio.testing.wait_all_tasks_blocked()

        (interruption,) = [e for e in logs if e["event"] == "interruption"]
        assert interruption["interrupted"] == [f"{conv.llm.name}:tools"]
        settled = [e for e in logs if e["event"] == "tool call settled"]
        assert sorted((e["tool_call_id"], e["outcome"]) for e in settled) == [
            ("call_t", "cancelled"),
            ("call_w", "cancelled"),
        ]
        assert {e["turn"] for e in settled} == {0}

    async def test_no_story_line_when_debug_is_off(
        self,
        autojump_clock: trio.testing.MockClock,
        server: ScriptedOpenAIServer,
        chunks: ChunkFactory,
    ) -> None:
        server.add(Reply.sse(chunks.text_stream(["Hi."])))
        with capture_logs() as logs:
            import structlog

            structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(20))
            async with open_conversation(server) as conv:
                await conv.say("Hello")
                await conv.wait_ends(1)
        assert [e for e in logs if e["event"] in STORY] == []


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value, abs=1.0)
