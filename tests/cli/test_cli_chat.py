"""``trouper chat``: the real console script, in a subprocess or on a pseudo terminal.

The ``e2e`` tests talk to the real local model: through ``--base-url`` to the session's
llama-server (``local_llm_server``), or -- for the interactive sessions -- to the llama-server
the CLI starts itself, which must be gone when the CLI exits. The others need no model.
Assertions are about what the CLI prints and how it exits, not about the model's wording.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest
import trio
from PIL import Image

from actors.storage import SQLiteConversationStorage
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from ..conftest import LocalLLM
from .cli_kit import (
    QUICK_TIMEOUT,
    assert_exited_cleanly,
    cli_env,
    llama_servers_of,
    plain,
    run,
    start_chat,
    trouper,
)

#: Bound on one answer of the real model (2 busy cores can make a short answer take 20 s).
ANSWER_TIMEOUT = 180.0
STATS = re.compile(r"ttft \d+ ms · \d+ tokens")
CALCULATOR_PROMPT = "Use the calculator to compute 1234 * 5678."


# ---------------------------------------------------------------- no model needed


def test_temperature_out_of_range_is_a_usage_error() -> None:
    result = run("chat", "--temperature", "5", "--prompt", "hi")
    assert result.returncode == 2
    assert "argument --temperature: temperature must be between 0 and 2, got 5" in result.stderr
    assert result.stderr.startswith("usage: trouper chat")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_unreachable_server_is_a_clear_connectivity_error() -> None:
    started = time.monotonic()
    result = run("chat", "--base-url", "http://127.0.0.1:9/v1", "--prompt", "hi")
    assert result.returncode == 1
    err = result.stderr
    assert "error: cannot reach the model server at http://127.0.0.1:9/v1" in err
    assert "is it running" in err
    assert "connect" in err.split("is it running", 1)[1]  # the underlying cause, too
    assert len(err.strip().splitlines()) == 1, "one message, on one line"
    assert "Traceback" not in err
    assert time.monotonic() - started < QUICK_TIMEOUT


def test_list_tools_prints_one_line_per_tool() -> None:
    result = run("chat", "--list-tools")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert [line.split("(", 1)[0] for line in lines] == [
        "get_current_time",
        "calculate",
        "convert_units",
    ]
    assert lines[1].startswith("calculate(expression)  ")
    assert result.stderr == ""


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "actors.cli", "chat", "--list-tools"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0
    assert "calculate(expression)" in result.stdout


async def test_conversation_is_kept_in_the_database_and_continued(tmp_path: Path) -> None:
    """``--conversation NAME --store PATH``: the first run stores the exchange, the second
    continues it (its request carries the history) and says so on stderr."""
    db = tmp_path / "conversations.db"
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.text_stream(["Nice to meet", " you, Ann."])),
            Reply.sse(chunks.text_stream(["You are Ann."])),
        )
        outputs = []
        for prompt in ("I am Ann.", "Who am I?"):
            with trio.fail_after(QUICK_TIMEOUT):
                done = await trio.run_process(
                    [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k",
                     "--model", "m", "--no-tools", "--conversation", "ann", "--store", str(db),
                     "--prompt", prompt],
                    capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
                )  # fmt: skip
            assert done.returncode == 0, done.stderr.decode()
            outputs.append((done.stdout.decode(), done.stderr.decode()))
        assert server.unexpected_requests == 0
        second = server.requests[1].json["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[1:3] == [
        {"role": "user", "content": "I am Ann."},
        {"role": "assistant", "content": "Nice to meet you, Ann."},
    ]
    assert outputs[0][1] == ""
    assert f"Continuing conversation ann (3 messages) from {db}" in outputs[1][1]
    assert outputs[1][0].startswith("You are Ann.")
    async with SQLiteConversationStorage(db) as storage:
        stored = await storage.load("ann")
    assert stored is not None
    assert stored.snapshot.messages[-1] == {"role": "assistant", "content": "You are Ann."}


def test_store_without_a_conversation_is_a_usage_error(tmp_path: Path) -> None:
    for option in ("--store", "--db"):  # --db: the option's earlier name
        result = run("chat", option, str(tmp_path / "c.db"), "--prompt", "hi")
        assert result.returncode == 2
        assert "--store needs --conversation NAME" in result.stderr
        assert not (tmp_path / "c.db").exists()


def test_a_database_path_that_cannot_be_used_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "c.db"
    result = run(
        "chat", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
        "--conversation", "x", "--store", str(missing), "--prompt", "hi",
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- the real model, --prompt


@pytest.mark.e2e
async def test_prompt_streams_an_answer_and_exits_0(local_llm_server: LocalLLM) -> None:
    """The answer is written piece by piece as it streams, then one statistics line."""
    chunks: list[tuple[float, bytes]] = []
    stderr = bytearray()
    args = [
        *trouper(),
        "chat",
        "--base-url",
        local_llm_server.base_url,
        "--temperature",
        "0",
        "--max-tokens",
        "100",
        "--prompt",
        "Write one sentence about the sea.",
    ]
    process = await trio.lowlevel.open_process(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    stdout, errout = process.stdout, process.stderr
    try:
        with trio.fail_after(ANSWER_TIMEOUT):
            async with trio.open_nursery() as nursery:

                async def drain_stderr() -> None:
                    async for data in errout:
                        stderr.extend(data)

                nursery.start_soon(drain_stderr)
                async for data in stdout:
                    chunks.append((time.monotonic(), bytes(data)))
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    out = b"".join(data for _, data in chunks).decode()
    assert process.returncode == 0, stderr.decode()
    assert stderr.decode() == ""
    lines = out.strip().splitlines()
    assert STATS.search(lines[-1]), "a statistics line ends the answer"
    answer = "\n".join(lines[:-1])
    assert answer.strip()
    assert "⚙" not in answer
    # Streamed: the answer reached the pipe in several writes, spread over time.
    answer_chunks = [(t, d) for t, d in chunks if not STATS.search(d.decode(errors="replace"))]
    assert len(answer_chunks) >= 2
    assert answer_chunks[-1][0] > answer_chunks[0][0]


@pytest.mark.e2e
def test_prompt_with_tools_shows_the_call_and_no_tools_offers_none(
    local_llm_server: LocalLLM,
) -> None:
    common = ["chat", "--base-url", local_llm_server.base_url, "--temperature", "0"]
    with_tools = run(*common, "--max-tokens", "80", "--prompt", CALCULATOR_PROMPT, bound=300)
    assert with_tools.returncode == 0, with_tools.stderr
    out = with_tools.stdout
    # The tool call and its result are shown as they happen, then the answer and the stats.
    assert re.search(r"^⚙ calculate\(\{\"expression\": .+\}\)$", out, re.MULTILINE), out
    assert re.search(r"^  → \{.*\"result\": 7006652", out, re.MULTILINE), out
    assert STATS.search(out.strip().splitlines()[-1])

    without = run(
        *common, "--no-tools", "--max-tokens", "80", "--prompt", CALCULATOR_PROMPT, bound=300
    )
    assert without.returncode == 0, without.stderr
    assert "⚙" not in without.stdout
    assert "→" not in without.stdout
    assert without.stdout.strip()
    assert without.stderr == ""


# ---------------------------------------------------------------- the real model, interactive


@pytest.mark.e2e
def test_interactive_session_on_the_embedded_model(
    local_llm_server: LocalLLM, spawn: list[pexpect.spawn], tmp_path: Path
) -> None:
    """Without --base-url the CLI starts llama-server itself. A tool call is shown, Ctrl-C
    interrupts a streaming answer and the prompt comes back, the next turn works, an image gets
    a clear "cannot read images", Ctrl-D leaves with status 0, and the server is gone."""
    del local_llm_server  # only for its skip/fail decision: the model and binary are there
    picture = tmp_path / "red.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(picture)
    child = start_chat(spawn, "--temperature", "0", "--max-tokens", "400")
    child.expect_exact("Starting the local model", timeout=ANSWER_TIMEOUT)
    child.expect(r"trouper chat · \S+ on local model", timeout=ANSWER_TIMEOUT)
    child.expect_exact("> ", timeout=ANSWER_TIMEOUT)
    servers = llama_servers_of(child)
    assert len(servers) == 2, "the guard and llama-server itself"

    # A tool call, shown as it happens, then the answer and its statistics.
    child.sendline(CALCULATOR_PROMPT)
    child.expect(r"⚙ calculate\(", timeout=ANSWER_TIMEOUT)
    child.expect(r"→ [^\r\n]*7006652", timeout=ANSWER_TIMEOUT)
    child.expect(r"ttft \d+ ms", timeout=ANSWER_TIMEOUT)
    child.expect_exact("> ", timeout=ANSWER_TIMEOUT)

    # Ctrl-C while the answer streams.
    long_prompt = "Write a 500-word essay about the history of Rome."
    child.sendline(long_prompt)
    child.expect_exact(long_prompt)
    child.expect(r"\r\n[^⚙\r\n]{15}", timeout=ANSWER_TIMEOUT)  # text is streaming
    child.sendintr()
    child.expect_exact("interrupted", timeout=QUICK_TIMEOUT)
    child.expect_exact("> ", timeout=QUICK_TIMEOUT)
    assert "Traceback" not in plain(child.before)

    # The conversation goes on.
    child.sendline("Say hello in one short sentence.")
    child.expect(r"ttft \d+ ms", timeout=ANSWER_TIMEOUT)
    child.expect_exact("> ", timeout=ANSWER_TIMEOUT)

    # The local model cannot see: one clear error line, and the prompt again.
    child.sendline(f"/image {picture} What is in this image?")
    child.expect_exact("error: the local model server cannot read images", timeout=ANSWER_TIMEOUT)
    child.expect_exact("> ", timeout=QUICK_TIMEOUT)

    # Ctrl-D leaves.
    child.sendeof()
    child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT)
    assert_exited_cleanly(child, servers)


@pytest.mark.e2e
def test_banner_names_the_servers_model_and_ctrl_d_leaves(
    local_llm_server: LocalLLM, spawn: list[pexpect.spawn]
) -> None:
    """With --base-url and no --model, the chat uses the one model the server lists."""
    child = start_chat(spawn, "--base-url", local_llm_server.base_url)
    child.expect_exact(f"trouper chat · {local_llm_server.model} on {local_llm_server.base_url}")
    child.expect_exact("/image PATH [question] sends an image")
    child.expect_exact("> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    assert_exited_cleanly(child)


@pytest.mark.e2e
def test_ctrl_c_at_the_prompt_leaves_and_stops_the_server(
    local_llm_server: LocalLLM, spawn: list[pexpect.spawn]
) -> None:
    del local_llm_server  # only for its skip/fail decision
    child = start_chat(spawn)
    child.expect_exact("> ", timeout=ANSWER_TIMEOUT)
    servers = llama_servers_of(child)
    assert len(servers) == 2
    child.sendintr()
    child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT)
    assert_exited_cleanly(child, servers)


def test_an_api_key_with_a_trailing_newline_is_one_clear_error() -> None:
    """A key read from a file keeps its newline: refused at once with one line, the key not
    shown (before: every request retried, then 'cannot reach the server')."""
    key = "sk-test-abcdefghijklmnop"
    result = run(
        "chat", "--base-url", "http://127.0.0.1:9/v1", "--api-key", key + "\n", "--prompt", "hi"
    )
    assert result.returncode == 2
    assert result.stderr.count("error:") == 1
    assert "--api-key contains a line break" in result.stderr
    assert key not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
