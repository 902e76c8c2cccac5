"""What the model (or a server) sends reaches the terminal as text: its control sequences are not
executed. The CLI tests run the real console script against a scripted server, with the output
in a pipe (so the CLI adds no styling of its own, and every control character in the output came
from outside)."""

from __future__ import annotations

import json
import re

import pytest
import trio

from actors.cli._terminal import printable
from actors.testing import ChunkFactory, Reply, ScriptedOpenAIServer

from .cli_kit import QUICK_TIMEOUT, cli_env, trouper

#: Every character a terminal may act on, but newline and tab.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

TITLE = "\x1b]0;pwned\x07"  # OSC 0: set the window title
CLEAR = "\x1b[2J\x1b[H"  # CSI: clear the screen, cursor home
LINK = "\x1b]8;;https://evil.example/\x1b\\click here\x1b]8;;\x1b\\"  # OSC 8 hyperlink
C1_CSI = "\x9b31m"  # 8-bit CSI (U+009B)
DCS = "\x1bP1$qm\x1b\\"  # DCS request: makes some terminals type an answer
BIDI = "\u202etxt.exe\u202c"  # right-to-left override
OVERWRITE = "rm -rf ~\rls      "  # carriage return: the second half hides the first
BACKSPACES = "safe\x08\x08\x08\x08"


async def run_chat(*replies: Reply) -> tuple[int, str, str]:
    """``trouper chat --prompt`` on a scripted server; returns (status, stdout, stderr)."""
    async with ScriptedOpenAIServer() as server:
        server.add(*replies)
        with trio.fail_after(QUICK_TIMEOUT):
            done = await trio.run_process(
                [*trouper(), "chat", "--base-url", server.base_url, "--api-key", "k",
                 "--model", "m", "--prompt", "hello"],
                capture_stdout=True, capture_stderr=True, env=cli_env(), check=False,
            )  # fmt: skip
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_control_sequences_in_an_answer_are_not_passed_to_the_terminal() -> None:
    """The answer, a tool call's arguments and its result (which repeats them) carry escape
    sequences, C1 controls and bidi overrides: the terminal gets only their text."""
    chunks = ChunkFactory()
    arguments = json.dumps({"expression": "1+1" + C1_CSI + BIDI}, ensure_ascii=False)
    status, out, err = await run_chat(
        Reply.sse(
            chunks.tool_call_stream(
                [("calculate", arguments)], text=[f"Hello {TITLE}", f"{CLEAR}world "]
            )
        ),
        Reply.sse(
            chunks.text_stream(
                [LINK, f" {C1_CSI}red {DCS}", f"file {BIDI} ", OVERWRITE, f" {BACKSPACES}\r\n"]
            )
        ),
    )
    assert status == 0, err
    assert err == ""
    assert not CONTROL.findall(out), CONTROL.findall(out)
    assert "Hello world " in out
    assert "⚙ calculate(" in out
    assert "  → {" in out
    assert "click here red file txt.exe rm -rf ~ls" in out
    assert "safe\n" in out


async def test_control_sequences_in_a_function_name_and_an_error_are_not_passed() -> None:
    """The model calls a function whose name carries sequences: the call line and the error
    (the function has no handler) show the name as text."""
    chunks = ChunkFactory()
    status, out, err = await run_chat(
        Reply.sse(chunks.tool_call_stream([(f"calc{TITLE}{CLEAR}ulate", "{}")])),
        Reply.sse(chunks.text_stream(["Sorry."])),
    )
    assert status == 0  # the error is shown, and the model's answer after it is printed
    assert not CONTROL.findall(out), CONTROL.findall(out)
    assert not CONTROL.findall(err), CONTROL.findall(err)
    assert "⚙ calculate({})" in out
    assert "error: The LLM called function [calculate], which has no handler" in err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, unicode: é — 世界 🎉, RTL mark \u200f", None),
        ("lines\nand\ttabs\n", None),
        ("windows\r\nline end", "windows\nline end"),
        (f"a{TITLE}b", "ab"),
        (f"a{CLEAR}b", "ab"),
        (LINK, "click here"),
        ("\x1b]2;title\x1b\\x", "x"),  # OSC ended by ST
        ("\x9d0;title\x9cx", "x"),  # 8-bit OSC and ST
        (f"{C1_CSI}x", "x"),
        (f"{DCS}x", "x"),
        ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\x", "x"),  # APC, PM, SOS
        ("\x1b(0x\x1b(B", "x"),  # character set switches (line drawing)
        ("\x1b7\x1b8\x1bcx", "x"),  # save/restore cursor, full reset
        ("a\x1b", "a"),  # lone ESC at the end of a piece
        ("\x1b]0;never ended", "0;never ended"),  # no ESC left: the rest is plain text
        ("\x1b[3", "3"),  # a sequence cut short
        ("bell\x07 bs\x08 vt\x0b ff\x0c nul\x00 del\x7f cr\r", "bell bs vt ff nul del cr"),
        (BIDI + "\u2066\u2067\u2068\u2069", "txt.exe"),
    ],
)
def test_printable_keeps_the_text_and_drops_every_control(text: str, shown: str | None) -> None:
    assert printable(text) == (text if shown is None else shown)


def test_pieces_of_a_stream_stay_harmless_wherever_a_sequence_is_cut() -> None:
    """A stream can cut a sequence between two pieces: each piece is cleaned on its own, and
    what they show together still holds no control character."""
    hostile = f"{TITLE}{CLEAR}{LINK}{C1_CSI}{DCS}{BIDI}{OVERWRITE}"
    for cut in range(len(hostile) + 1):
        shown = printable(hostile[:cut]) + printable(hostile[cut:])
        assert not CONTROL.search(shown), (cut, shown)
