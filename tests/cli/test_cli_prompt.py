"""``trouper chat`` as a terminal program: line editing and history at the prompt, what a 404
says, and the exit status of ``--prompt``. The real console script, on a pseudo terminal or in
a subprocess, against a scripted OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pexpect
import pytest
import trio

from actors.cli._history import HISTORY_LENGTH, PromptHistory, keeps
from actors.client.redaction import Redactor
from actors.testing import ChunkFactory, RecordedRequest, Reply, ScriptedOpenAIServer

from .cli_kit import (
    QUICK_TIMEOUT,
    assert_exited_cleanly,
    cli_env,
    expect,
    run,
    start_chat,
    trouper,
)

UP = "\x1b[A"
KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"


def _answer(text: str) -> Reply:
    return Reply.sse(ChunkFactory().text_stream([text]))


def _last_user_text(request: RecordedRequest) -> Any:
    assert request.json is not None
    return request.json["messages"][-1]["content"]


async def _chat_on_a_terminal(spawn: list[pexpect.spawn], server: ScriptedOpenAIServer) -> Any:
    child = await trio.to_thread.run_sync(
        lambda: start_chat(spawn, "--base-url", server.base_url, "--api-key", "k", "--model", "m")
    )
    await expect(child, "> ")
    return child


async def _leave(child: pexpect.spawn) -> None:
    child.sendeof()
    await trio.to_thread.run_sync(lambda: child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT))
    assert_exited_cleanly(child)


# ---------------------------------------------------------------- line editing and history


async def test_the_up_arrow_recalls_the_previous_line_in_this_chat_and_the_next(
    spawn: list[pexpect.spawn], data_home: Path
) -> None:
    """The up arrow brings back the line typed before (it is sent again, not ``^[[A``); the
    history is in the data directory, so the next chat recalls it too."""
    async with ScriptedOpenAIServer() as server:
        server.add(_answer("One."), _answer("Two."), _answer("Three."))
        child = await _chat_on_a_terminal(spawn, server)
        child.sendline("what is the first answer?")
        await expect(child, "One.")
        await expect(child, "> ")
        child.send(UP)
        await expect(child, "what is the first answer?")  # the line, shown again for editing
        child.send(" again\r")
        await expect(child, "Two.")
        await expect(child, "> ")
        await _leave(child)
        assert [_last_user_text(r) for r in server.requests] == [
            "what is the first answer?",
            "what is the first answer? again",
        ]
        history = data_home / "trouper" / "chat_history"
        assert history.read_text().splitlines()[-2:] == [
            "what is the first answer?",
            "what is the first answer? again",
        ]
        assert history.stat().st_mode & 0o777 == 0o600

        child = await _chat_on_a_terminal(spawn, server)
        child.send(UP + "\r")
        await expect(child, "Three.")
        await expect(child, "> ")
        await _leave(child)
        assert _last_user_text(server.requests[-1]) == "what is the first answer? again"
        assert "^[[A" not in child.before


async def test_lines_with_a_key_or_a_leading_space_are_not_kept(
    spawn: list[pexpect.spawn], data_home: Path
) -> None:
    """A line that holds a key (or starts with a space) is sent, but never written to the
    history file: the up arrow skips it."""
    async with ScriptedOpenAIServer() as server:
        server.add(_answer("A."), _answer("B."), _answer("C."), _answer("D."))
        child = await _chat_on_a_terminal(spawn, server)
        for line, answer in (
            ("kept line", "A."),
            (f"my key is {KEY}", "B."),
            (" private line", "C."),
        ):
            child.sendline(line)
            await expect(child, answer)
            await expect(child, "> ")
        child.send(UP + "\r")  # the last line kept, not the two after it
        await expect(child, "D.")
        await expect(child, "> ")
        await _leave(child)
    assert _last_user_text(server.requests[-1]) == "kept line"
    text = (data_home / "trouper" / "chat_history").read_text()
    assert "kept line" in text
    assert KEY not in text
    assert "private line" not in text


def test_what_the_history_keeps() -> None:
    assert keeps("hello", None)
    assert keeps("hello", "world")
    assert not keeps("hello", "hello")  # the same line twice in a row: once
    assert not keeps(" hello", None)  # a leading space: never
    assert not keeps("", None)
    assert not keeps(f"use {KEY}", None)  # shaped like a key
    assert not keeps("Authorization: Bearer abcdefghijklmnopqrstuvwxyz", None)
    assert not keeps("http://user:hunter2hunter2@example.com/v1", None)
    redactor = Redactor(["correct-horse-battery-staple"]).register()  # a secret of the process
    assert not keeps("the password is correct-horse-battery-staple", None)
    del redactor  # forgotten with it
    assert keeps("the password is correct-horse-battery-staple", None)


def test_the_history_file_keeps_its_last_lines(tmp_path: Path) -> None:
    """The file never holds more than ``length`` lines: the oldest go first, also the ones a
    longer history (an earlier ``length``) left."""
    path = tmp_path / "sub" / "chat_history"
    with PromptHistory(path, length=5) as history:
        assert history.editing
        for i in range(12):
            history.add(f"line {i}")
            assert len(path.read_text().splitlines()) == min(i + 1, 5)
    assert path.read_text().splitlines() == [f"line {i}" for i in range(7, 12)]
    with PromptHistory(path, length=3):
        pass
    assert path.read_text().splitlines() == [f"line {i}" for i in range(9, 12)]
    assert HISTORY_LENGTH == 1000


def test_an_unwritable_history_leaves_the_chat_working(tmp_path: Path) -> None:
    """A data directory that cannot be written keeps the history in memory only."""
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with PromptHistory(blocked / "chat_history") as history:
        history.add("still fine")


# ---------------------------------------------------------------- --help


def test_chat_help_names_the_log_file_and_the_exit_status() -> None:
    result = run("chat", "--help")
    assert result.returncode == 0
    text = result.stdout
    assert "--log-json FILE" in text
    assert "--prompt TEXT" in text
    assert "exit status (with --prompt" in text
    for code in ("0", "1", "2", "130"):
        assert f"\n  {code} " in text


# ---------------------------------------------------------------- errors and exit status


async def _prompt(server: ScriptedOpenAIServer, *, base_url: str | None = None) -> tuple[int, str]:
    with trio.fail_after(QUICK_TIMEOUT):
        done = await trio.run_process(
            [*trouper(), "chat", "--base-url", base_url or server.base_url, "--api-key", "k",
             "--model", "m", "--prompt", "hello"],
            capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
        )  # fmt: skip
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "Traceback" not in err
    return done.returncode, out + err


def _v1_only(request: RecordedRequest) -> Reply:
    """A server whose API is under ``/v1`` only, as llama-server's and OpenAI's are."""
    if not request.path.startswith("/v1/"):
        return Reply.error(404, "File Not Found", type="not_found_error")
    return _answer("Hi.")


async def test_a_404_for_a_base_url_without_v1_suggests_it() -> None:
    async with ScriptedOpenAIServer() as server:
        server.responder = _v1_only
        root = server.base_url.removesuffix("/v1")
        status, output = await _prompt(server, base_url=root)
        assert [r.path for r in server.requests] == ["/chat/completions"]
        assert status == 1
        assert (
            f"error: the server has no {root}/chat/completions (HTTP 404): does the base URL "
            f"need /v1 ({root}/v1)? (Error during completion: HTTP 404 Not Found: File Not Found"
        ) in output
        status, output = await _prompt(server)  # with /v1: it works
        assert (status, output.splitlines()[0]) == (0, "Hi.")


async def test_a_404_under_v1_asks_whether_the_base_url_is_the_api_root() -> None:
    async with ScriptedOpenAIServer() as server:
        server.add(Reply.error(404, "Invalid URL (POST /v1/chat/completions)"))
        status, output = await _prompt(server)
        base_url = server.base_url
    assert status == 1
    assert (
        f"error: the server has no {base_url}/chat/completions (HTTP 404): is --base-url "
        "the API root, the URL that /chat/completions is under?"
    ) in output


async def test_a_404_for_an_unknown_model_shows_the_servers_message_alone() -> None:
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.error(404, "The model `m` does not exist", code="model_not_found"),
        )
        status, output = await _prompt(server)
    assert status == 1
    assert "error: Error during completion: HTTP 404 Not Found: The model `m` does not" in output
    assert "base URL" not in output


@pytest.mark.parametrize(
    ("name", "arguments", "shown"),
    [
        ("lookup_weather", "{}", "which has no handler"),  # a function the CLI does not have
        ("calculate", '{"expression": ', "Invalid arguments for function call [calculate]"),
    ],
)
async def test_an_answer_after_a_failed_tool_call_exits_0(
    name: str, arguments: str, shown: str
) -> None:
    """The tool call fails (the error is shown), the model is told, and its answer is printed:
    the prompt succeeded."""
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.tool_call_stream([(name, arguments)])),
            Reply.sse(chunks.text_stream(["Sorry, I cannot do that."])),
        )
        status, output = await _prompt(server)
        follow_up = server.requests[1].json
    assert status == 0, output
    assert shown in output
    assert "Sorry, I cannot do that." in output
    assert follow_up is not None
    assert follow_up["messages"][-1]["role"] == "tool"


async def test_a_failed_answer_after_a_tool_call_exits_1() -> None:
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.tool_call_stream([("calculate", json.dumps({"expression": "2+2"}))])),
            Reply.error(400, "context too long"),
        )
        status, output = await _prompt(server)
    assert status == 1
    assert "context too long" in output


async def test_a_server_error_exits_1() -> None:
    async with ScriptedOpenAIServer() as server:
        server.add(Reply.error(401, "bad key"))
        status, output = await _prompt(server)
    assert status == 1
    assert "bad key" in output


async def test_an_empty_stdin_is_a_usage_error() -> None:
    with trio.fail_after(QUICK_TIMEOUT):
        done = await trio.run_process(
            [*trouper(), "chat", "--base-url", "http://127.0.0.1:9/v1"],
            stdin=b"  \n", capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert b"stdin is not a terminal and holds no prompt" in done.stderr


async def test_ctrl_c_at_a_prompt_with_readline_leaves_cleanly(
    spawn: list[pexpect.spawn],
) -> None:
    """Ctrl-C while readline reads a half-typed line still leaves the chat at once, with 0."""
    async with ScriptedOpenAIServer() as server:
        child = await _chat_on_a_terminal(spawn, server)
        child.send("half a li")
        await expect(child, "half a li")
        child.sendintr()
        await trio.to_thread.run_sync(lambda: child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT))
        assert_exited_cleanly(child)
        assert server.requests == []
