"""The chat's calculator cannot be made to work without bound, and never holds the chat.

The CLI tests run the real console script against a scripted OpenAI-compatible server that
asks for the calculation; the others run the calculator the way the chat's tool does.
"""

from __future__ import annotations

import json
import re
import sys
import time
from types import FrameType

import pexpect
import pytest
import trio

from actors.cli._calculator import CalculatorLimits, calculate, calculate_in_thread
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .cli_kit import QUICK_TIMEOUT, assert_exited_cleanly, cli_env, expect, start_chat, trouper

#: The outside review's expression: unbounded, it runs for minutes on one big-integer operation.
HUGE = "((9**999)**999)**999"


def _calculate_call(expression: str) -> Reply:
    return Reply.sse(
        ChunkFactory().tool_call_stream([("calculate", json.dumps({"expression": expression}))])
    )


async def test_a_huge_calculation_is_refused_at_once() -> None:
    """``trouper chat --prompt``: the model asks for ``((9**999)**999)**999``; the tool answers
    at once with a clear error, the model gets it, and the chat ends normally."""
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            _calculate_call(HUGE),
            Reply.sse(chunks.text_stream(["That number is far too large."])),
        )
        started = time.monotonic()
        with trio.fail_after(QUICK_TIMEOUT):
            done = await trio.run_process(
                [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k",
                 "--model", "m", "--prompt", f"What is {HUGE}?"],
                capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
            )  # fmt: skip
        elapsed = time.monotonic() - started
        follow_up = server.requests[1].json["messages"]
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert f'⚙ calculate({{"expression": "{HUGE}"}})' in out
    result_line = next(line for line in out.splitlines() if line.startswith("  → "))
    assert "an intermediate result would be too large" in result_line
    assert "That number is far too large." in out
    tool_message = follow_up[-1]
    assert tool_message["role"] == "tool"
    assert json.loads(tool_message["content"]) == {
        "expression": HUGE,
        "error": "an intermediate result would be too large (more than 65536 bits, about "
        "19728 digits); simplify the expression",
    }
    assert elapsed < 15, "the CLI starts in about a second; the calculation takes no time"


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        (HUGE, "an intermediate result would be too large"),
        ("(9**999)**999", "an intermediate result would be too large"),
        ("9**999*9**999", "result too large"),  # 6,340 bits: fine on the way, too long to show
        ("round(7, -10**9)", "an intermediate result would be too large"),  # 10**(10**9) inside
        ("1.5**(10**400)", "result too large"),
        ("sqrt(1, 2)", "wrong arguments: math.sqrt() takes exactly one argument (2 given)"),
        ("__import__('os')", "unsupported element in expression"),
        ("1/0", "division by zero"),
    ],
)
def test_expensive_or_invalid_expressions_are_refused_with_a_clear_message(
    expression: str, error: str
) -> None:
    started = time.perf_counter()
    with pytest.raises(ValueError, match="^" + re.escape(error)):
        calculate(expression)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1234 * 5678", 7006652),
        ("(3 + 4) * sqrt(16)", 28.0),
        ("2**10000 // 2**9990", 1024),  # large intermediate results are fine
        ("round(pi, 2)", 3.14),
        ("2**-1000", 2.0**-1000),
    ],
)
async def test_ordinary_expressions_are_answered(expression: str, result: float) -> None:
    assert await calculate_in_thread(expression) == result


def test_the_slowest_expression_allowed_takes_milliseconds() -> None:
    """500 characters of the costliest operation allowed (long divisions of the largest
    integers allowed): the whole evaluation stays far below a second (about 50 ms here)."""
    expression = "+".join(["3**41340//7**11600"] * 26)
    assert len(expression) <= 500
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"^result too large$"):
        calculate(expression)
    assert time.perf_counter() - started < 0.5


def _calculating_threads() -> list[int]:
    """The threads that are evaluating an expression right now (in :func:`calculate`; a worker
    that is returning from the wrapper around it is done)."""
    found = []
    for thread_id, frame in sys._current_frames().items():
        walker: FrameType | None = frame
        while walker is not None:
            if walker.f_code is calculate.__code__:
                found.append(thread_id)
                break
            walker = walker.f_back
    return found


async def test_a_cancellation_stops_a_long_calculation_at_once() -> None:
    """With the limits raised, an evaluation that would run for about 10 s (200 long divisions
    of 50 ms each) is cancelled after 0.2 s: the call returns within one division, and the
    worker thread is no longer calculating (the evaluation ended, it was not abandoned). On the
    trio thread, the cancellation could only land after the 10 s."""
    limits = CalculatorLimits(
        max_chars=10_000, max_bits=2**20, max_result_bits=2**21, time_budget_secs=600
    )
    expression = "+".join(["3**200000//7**50000"] * 200)
    started = time.monotonic()
    with trio.move_on_after(0.2) as scope:  # real time: the worker thread works in real time
        await calculate_in_thread(expression, limits=limits)
    stopped_after = time.monotonic() - started
    assert scope.cancelled_caught
    assert stopped_after < 1.5
    assert _calculating_threads() == []


# ---------------------------------------------------------------- the terminal


async def test_ctrl_c_interrupts_an_answer_after_a_huge_calculation(
    spawn: list[pexpect.spawn],
) -> None:
    """An interactive chat on a terminal: the model asks for the huge calculation, the refusal
    is shown at once, the follow-up answer streams, Ctrl-C interrupts it, and the chat goes
    on."""
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            _calculate_call(HUGE),
            # The follow-up streams a little, then never ends: only Ctrl-C ends it.
            Reply.sse(chunks.text_stream(["It is a very ", "large number"]), ending="stall"),
            Reply.sse(chunks.text_stream(["Still here."])),
        )
        child = await trio.to_thread.run_sync(
            lambda: start_chat(
                spawn, "--base-url", server.base_url, "--api-key", "k", "--model", "m"
            )
        )
        await expect(child, "> ")
        child.sendline(f"What is {HUGE}?")
        await expect(child, "⚙ calculate(")
        await expect(child, "→ ")
        await expect(child, "an intermediate result would be too large")
        await expect(child, "large number")
        child.sendintr()
        await expect(child, "interrupted")
        await expect(child, "> ")
        with trio.fail_after(QUICK_TIMEOUT):
            await server.wait_client_disconnects()
        child.sendline("Are you there?")
        await expect(child, "Still here.")
        await expect(child, "> ")
        child.sendeof()
        await trio.to_thread.run_sync(lambda: child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT))
        assert_exited_cleanly(child)
