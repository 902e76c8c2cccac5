"""``trouper chat --context-window TOKENS|auto|off`` and ``--summarize``: how the chat's
window is chosen, and a long stored conversation continued through the real console script
with a small window (its request is trimmed, the stored conversation is not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from actors import ContextWindow
from actors.cli import build_parser
from actors.cli._chat import ChatOptions, context_window_for
from actors.storage import AppendMessages, SQLiteConversationStorage
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .cli_kit import QUICK_TIMEOUT, cli_env, run, trouper


def _props(n_ctx: int) -> Reply:
    body = {"default_generation_settings": {"n_ctx": n_ctx}, "total_slots": 4}
    return Reply.raw(
        json.dumps(body).encode(), headers={"content-type": "application/json"}, framing="length"
    )


class TestFlags:
    @pytest.mark.parametrize(
        ("args", "value"),
        [([], "auto"), (["--context-window", "off"], "off"), (["--context-window", "4096"], 4096)],
    )
    def test_values(self, args: list[str], value: int | str) -> None:
        parsed = build_parser().parse_args(["chat", *args])
        assert parsed.context_window == value
        assert parsed.summarize is False
        assert build_parser().parse_args(["chat", "--summarize"]).summarize is True

    @pytest.mark.parametrize(
        ("value", "message"),
        [("lots", "'lots' is not a number of tokens, 'auto' or 'off'"), ("100", "at least 256")],
    )
    def test_a_bad_value_is_a_usage_error(self, value: str, message: str) -> None:
        result = run("chat", "--context-window", value, "--prompt", "hi")
        assert result.returncode == 2
        assert message in result.stderr
        assert result.stderr.startswith("usage: trouper chat")
        assert "Traceback" not in result.stderr

    def test_the_help_tells_the_default(self) -> None:
        result = run("chat", "--help")
        text = " ".join(result.stdout.split())
        assert "--context-window TOKENS|auto|off" in text
        assert "auto (the default): on the local model, its context per conversation" in text
        assert "--summarize" in text


class TestChoice:
    async def test_auto_on_the_local_model_asks_its_server(self) -> None:
        async with ScriptedOpenAIServer(replies=[_props(4096)]) as server:
            window = await context_window_for(ChatOptions(), server.base_url, "no-key", local=True)
            (request,) = server.requests
        assert (request.method, request.path) == ("GET", "/props")
        assert window == ContextWindow(4096)

    async def test_auto_on_the_local_model_falls_back_to_its_slot_size(self) -> None:
        async with ScriptedOpenAIServer(replies=[Reply.error(404, "no")]) as server:
            window = await context_window_for(ChatOptions(), server.base_url, None, local=True)
        assert window == ContextWindow(2048)

    async def test_auto_with_a_server_of_your_own_is_off(self) -> None:
        async with ScriptedOpenAIServer() as server:
            window = await context_window_for(ChatOptions(), server.base_url, "k", local=False)
            assert server.requests == []
        assert window is None

    async def test_tokens_off_summarize_and_the_answers_reserve(self) -> None:
        url = "http://127.0.0.1:9/v1"
        given = ChatOptions(context_window=3000, summarize=True, max_tokens=200)
        assert await context_window_for(given, url, None, local=False) == ContextWindow(
            3000, strategy="summarize", reserve=200
        )
        off = ChatOptions(context_window="off")
        assert await context_window_for(off, url, None, local=True) is None
        # An answer limit of half the window or more is no reserve: the default stays.
        big = ChatOptions(context_window=1000, max_tokens=600)
        assert await context_window_for(big, url, None, local=False) == ContextWindow(1000)


async def test_a_long_stored_conversation_is_trimmed_in_the_request(tmp_path: Path) -> None:
    db = tmp_path / "conversations.db"
    turns = []
    for turn in range(30):
        turns.append({"role": "user", "content": f"question {turn} " + "x" * 200})
        turns.append({"role": "assistant", "content": f"answer {turn} " + "y" * 200})
    async with SQLiteConversationStorage(db) as storage:
        await storage.append(
            "long",
            [AppendMessages([{"role": "system", "content": "Be brief."}, *turns])],
            expected_version=0,
        )
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.error(404, "Not Found"),  # POST /tokenize: estimated then
            Reply.sse(chunks.text_stream(["Fine."])),
        )
        with trio.fail_after(QUICK_TIMEOUT):
            done = await trio.run_process(
                [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k",
                 "--model", "m", "--no-tools", "--conversation", "long", "--store", str(db),
                 "--context-window", "1024", "--prompt", "And now?"],
                capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        assert [r.path for r in server.requests] == ["/tokenize", "/v1/chat/completions"]
        sent = server.requests[1].json["messages"]
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[-1] == {"role": "user", "content": "And now?"}
    assert 2 < len(sent) < 12
    assert sent[1]["role"] == "user"
    assert done.stdout.decode().startswith("Fine.")
    async with SQLiteConversationStorage(db) as storage:
        stored = await storage.load("long")
    assert stored is not None
    assert len(stored.snapshot.messages) == 1 + 60 + 2
