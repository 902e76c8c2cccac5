"""End-to-end: a long chat on the real local model with a 2,048-token context window.

Forty turns of about 100 tokens each outgrow the window within a few turns: the store leaves
the oldest turns out of the requests (counting with llama-server's ``/tokenize``), the model
keeps answering, and every request the server received is valid for the API and holds the
system message and the latest user turn. A few turns ask for the weather tool, so tool calls
and their results are in the window too. Answers are kept short (``max_tokens``) so the test
runs in about a minute on 2 cores.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
import trio

from actors import (
    ContextWindow,
    FunctionCallParams,
    FunctionSchema,
    LLMUsageMetricsData,
    OpenAILLMService,
    PipelineParams,
    ToolsSchema,
)
from actors.client import Timeouts

from .. import conversation_kit
from ..conftest import LocalLLM
from ..conversation_kit import context_problems
from .e2e_kit import STEP_TIMEOUT, server_get

pytestmark = pytest.mark.e2e

TURNS = 40
#: The turns that ask for the tool (few: a tool turn costs two inferences).
TOOL_TURNS = (5, 25)
WINDOW = 2048
SYSTEM = {"role": "system", "content": "You are a helpful assistant. Answer in a few words."}
WEATHER = FunctionSchema(
    name="get_weather",
    description="Get the current weather for a city",
    properties={"city": {"type": "string", "description": "City name"}},
    required=["city"],
)
COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange"]
ANIMALS = ["cat", "dog", "fox", "owl", "cow", "bee", "elk", "yak"]


def _line(turn: int) -> str:
    if turn in TOOL_TURNS:
        return "What is the weather in Paris right now? Use the tool."
    color, animal = COLORS[turn % len(COLORS)], ANIMALS[turn % len(ANIMALS)]
    facts = " ".join(
        f"Fact {turn}.{k}: the {color} {animal} number {k} sleeps in room {turn * 10 + k}."
        for k in range(5)
    )
    return f"{facts} Question: which room does the {color} {animal} number 2 sleep in?"


async def test_a_forty_turn_chat_keeps_answering_in_a_small_window(
    local_llm_server: LocalLLM,
) -> None:
    props = await server_get(local_llm_server, "/props")
    assert props["default_generation_settings"]["n_ctx"] >= WINDOW
    bodies: list[dict[str, Any]] = []

    async def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            bodies.append(json.loads(request.content))

    async def get_weather(params: FunctionCallParams) -> None:
        await params.result_callback({"temperature_c": 18, "condition": "sunny"})

    answers: list[str] = []
    # A low target: each trim leaves out many turns, so the server re-reads the window
    # (its cache keeps only the system message and tools) a few times only.
    window = ContextWindow(WINDOW, reserve=256, target=0.5)
    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}, trust_env=False) as http,
        conversation_kit.open_conversation(
            local_llm_server,
            model=local_llm_server.model,
            api_key="no-key",
            quick_start=True,
            messages=[SYSTEM],
            tools=ToolsSchema(standard_tools=[WEATHER]),
            functions={"get_weather": get_weather},
            params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
            name="e2e-window",
            llm_params=OpenAILLMService.InputParams(temperature=0, max_tokens=48),
            timeouts=Timeouts(connect=10.0, first_token=STEP_TIMEOUT, idle=60.0),
            within=STEP_TIMEOUT,
            context_window=window,
            http_client=http,
        ) as chat,
    ):
        for turn in range(TURNS):
            with trio.fail_after(STEP_TIMEOUT):
                await chat.transport.send_text(_line(turn))
                answers.append(await chat.transport.wait_answer())
        counter = chat.llm._token_counter
        messages = chat.messages()

    assert chat.errors == []
    assert not any(end.error or end.interrupted for end in chat.ends())
    assert all(answer.strip() for answer in answers), answers
    assert counter is not None
    assert counter.uses_tokenizer is True, "counted with llama-server's /tokenize"
    # The conversation keeps every turn.
    assert [m["content"] for m in messages if m["role"] == "user"] == [
        _line(t) for t in range(TURNS)
    ]
    assert len(bodies) >= TURNS
    firsts = []
    for body in bodies:
        sent = body["messages"]
        assert context_problems(sent) == [], sent
        assert sent[0] == SYSTEM
        users = [m["content"] for m in sent if m["role"] == "user"]
        firsts.append(users[0])
    # Each request holds the latest user turn: the last one asked is in the last request.
    assert bodies[-1]["messages"][-1]["role"] in ("user", "tool")
    assert _line(TURNS - 1) in [m.get("content") for m in bodies[-1]["messages"]]
    # The window moved, in several trims, each leaving out many turns at once.
    trims = sum(1 for a, b in itertools.pairwise(firsts) if a != b)
    assert firsts[-1] != _line(0)
    assert 2 <= trims <= TURNS // 4
    # Every prompt fit the window (the server's own count).
    prompts = [u.value.prompt_tokens for u in chat.usage() if isinstance(u, LLMUsageMetricsData)]
    assert prompts
    assert max(prompts) <= WINDOW - 48
    # Some turns called the tool and its results travelled with their call.
    assert any(m.get("tool_calls") for m in messages)
