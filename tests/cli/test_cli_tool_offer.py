"""Which tools ``trouper chat`` offers with a line: on the embedded model only those the line
is about (and those called during the previous answer), elsewhere every tool. The offer is
checked where it matters, in the requests the real console script sends to a scripted
server."""

from __future__ import annotations

from typing import Any

import pexpect
import pytest
import trio

from actors.cli._offer import ToolOffer
from actors.cli._tools import BUILTIN_TOOLS, about_arithmetic, about_time, about_units
from actors.local import DEFAULT_MODEL
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .cli_kit import QUICK_TIMEOUT, assert_exited_cleanly, cli_env, expect, start_chat, trouper

EMBEDDED = DEFAULT_MODEL.name
ALL = ["get_current_time", "calculate", "convert_units"]


def offered(request_json: dict[str, Any]) -> list[str]:
    """The names of the tools a request offers."""
    return [tool["function"]["name"] for tool in request_json.get("tools") or ()]


# ---------------------------------------------------------------- what a line is about


@pytest.mark.parametrize(
    ("line", "time", "arithmetic", "units"),
    [
        ("hi", False, False, False),
        ("Tell me a joke.", False, False, False),
        ("What is the capital of France?", False, False, False),
        ("Count from 1 to 200, one number per line.", False, False, False),
        ("Give me 3 ideas for a summer trip.", False, False, False),
        ("What time is it in Tokyo?", True, False, False),
        ("What day is it today?", True, False, False),
        ("What is 12*7?", False, True, False),
        ("What is 3 \u00d7 4?", False, True, False),
        ("What is 15% of 80?", False, True, False),
        ("Use the calculator to compute 1234 * 5678.", False, True, False),
        ("What is the square root of 81?", False, True, False),
        ("Convert 5 miles to km.", False, False, True),
        ("How many feet in a mile?", False, False, True),
        ("What is 100°F in celsius?", False, False, True),
        ("I weigh 70 kg.", False, False, True),
    ],
)
def test_what_a_line_is_about(line: str, time: bool, arithmetic: bool, units: bool) -> None:
    assert (about_time(line), about_arithmetic(line), about_units(line)) == (
        time,
        arithmetic,
        units,
    )


def test_the_offer_follows_the_line_and_the_previous_answers_calls() -> None:
    offer = ToolOffer(BUILTIN_TOOLS, every_line=False)
    assert offer.offered == ()
    assert offer.change_for("Tell me a joke.") is None  # nothing offered, nothing to change
    change = offer.change_for("What time is it in Tokyo?")
    assert change is not None
    assert [t["function"]["name"] for t in change.tools or ()] == ["get_current_time"]
    assert offer.change_for("What time is it in Lima?") is None  # the same offer
    # A follow-up keeps the tools the previous answer called.
    assert offer.for_line("And in Paris?", {"get_current_time"}) == ("get_current_time",)
    # A longer line is a new question: the previous calls do not count.
    essay = "Write a 500-word essay about the history of Rome."
    assert offer.for_line(essay, {"calculate"}) == ()
    assert offer.for_line("Which tools do you have?") == tuple(ALL)
    change = offer.change_for("Thanks!")
    assert change is not None
    assert change.tools is None
    assert ToolOffer(BUILTIN_TOOLS, every_line=True).for_line("hi") == tuple(ALL)
    assert ToolOffer((), every_line=False).for_line("What is 2+2?") == ()


# ---------------------------------------------------------------- the requests the CLI sends


async def _prompt(*args: str, replies: int = 1) -> list[dict[str, Any]]:
    """``trouper chat ... --prompt`` against a scripted server; the bodies of its requests."""
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(*(Reply.sse(chunks.text_stream(["Fine."])) for _ in range(replies)))
        with trio.fail_after(QUICK_TIMEOUT):
            done = await trio.run_process(
                [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k", *args],
                capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
            )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        return [request.json for request in server.requests]


@pytest.mark.parametrize(
    ("line", "names"),
    [
        ("Tell me a joke.", []),
        ("What is 12*7?", ["calculate"]),
        (
            "Convert 5 miles to km, then tell me the time in Paris.",
            ["get_current_time", "convert_units"],
        ),
    ],
)
async def test_the_embedded_model_is_offered_the_tools_a_line_is_about(
    line: str, names: list[str]
) -> None:
    (request,) = await _prompt("--model", EMBEDDED, "--prompt", line)
    assert offered(request) == names
    assert ("tools" in request) == bool(names)


async def test_all_tools_and_other_models_get_every_tool_with_every_line() -> None:
    (request,) = await _prompt("--model", EMBEDDED, "--all-tools", "--prompt", "Tell me a joke.")
    assert offered(request) == ALL
    (request,) = await _prompt("--model", "gpt-4o-mini", "--prompt", "Tell me a joke.")
    assert offered(request) == ALL
    (request,) = await _prompt("--model", EMBEDDED, "--no-tools", "--prompt", "What is 2+2?")
    assert "tools" not in request


async def test_a_follow_up_line_is_offered_the_tool_the_previous_answer_called(
    spawn: list[pexpect.spawn],
) -> None:
    """Interactive: a time question (the model calls the time tool), then "And in Paris?"
    (offered the time tool again), then a joke (offered none)."""
    chunks = ChunkFactory()
    async with ScriptedOpenAIServer() as server:
        server.add(
            Reply.sse(chunks.tool_call_stream([("get_current_time", '{"timezone": "UTC"}')])),
            Reply.sse(chunks.text_stream(["It is noon."])),
            Reply.sse(chunks.text_stream(["Noon there too."])),
            Reply.sse(chunks.text_stream(["A joke."])),
        )
        child = await trio.to_thread.run_sync(
            lambda: start_chat(
                spawn, "--base-url", server.base_url, "--api-key", "k", "--model", EMBEDDED
            )
        )
        for line, answer in [
            ("What time is it?", "It is noon."),
            ("And in Paris?", "Noon there too."),
            ("Tell me a joke.", "A joke."),
        ]:
            await expect(child, "> ")
            child.sendline(line)
            await expect(child, answer)
        await expect(child, "> ")
        child.sendeof()
        await trio.to_thread.run_sync(lambda: child.expect(pexpect.EOF, timeout=QUICK_TIMEOUT))
        assert_exited_cleanly(child)
        bodies = [request.json for request in server.requests]
    assert [offered(body) for body in bodies] == [
        ["get_current_time"],
        ["get_current_time"],  # the tool result's follow-up request
        ["get_current_time"],
        [],
    ]
