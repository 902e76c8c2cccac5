"""What the CLI tests share: running the real ``trouper`` console script (in a subprocess or
on a pseudo terminal), reading its output, and finding the processes it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import trio

from actors.local import model_path

from ..conftest import REAL_MODELS_DIR

#: Bound on anything that needs no model.
QUICK_TIMEOUT = 30.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def trouper() -> list[str]:
    """The installed ``trouper`` console script (``python -m actors.cli`` without one)."""
    script = Path(sys.executable).with_name("trouper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "actors.cli"]


def cli_env() -> dict[str, str]:
    """The environment without any OpenAI configuration (so no other backend is picked), with
    plain output (no colours) and wide lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(NO_COLOR="1", COLUMNS="200", LINES="50")
    return env


def run(*args: str, bound: float = QUICK_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``trouper ARGS`` to completion with stdin closed; return its output."""
    return subprocess.run(
        [*trouper(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=bound,
        check=False,
    )


def _restore_sigint() -> None:
    # A child inherits an ignored SIGINT (background jobs of non-interactive shells run so);
    # a terminal user's Ctrl-C is delivered with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_chat(children: list[pexpect.spawn], *args: str) -> pexpect.spawn:
    """``trouper chat ARGS`` on a pseudo terminal."""
    command = trouper()
    child = pexpect.spawn(
        command[0],
        [*command[1:], "chat", *args],
        env=cli_env(),
        encoding="utf-8",
        timeout=QUICK_TIMEOUT,
        dimensions=(50, 200),
        preexec_fn=_restore_sigint,
    )
    children.append(child)
    return child


async def expect(child: pexpect.spawn, pattern: str) -> None:
    """Wait (in a thread, so the test's trio servers go on) until ``child`` prints
    ``pattern``, at most :data:`QUICK_TIMEOUT`."""
    await trio.to_thread.run_sync(lambda: child.expect_exact(pattern, timeout=QUICK_TIMEOUT))


def plain(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return ANSI.sub("", text)


# ---------------------------------------------------------------- processes


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except (FileNotFoundError, ProcessLookupError):
        return []


def descendants(root: int) -> list[int]:
    """Every live descendant of process ``root`` (Linux ``/proc``)."""
    parents = {int(p): _ppid(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def llama_servers_of(child: pexpect.spawn) -> list[int]:
    """The llama-server processes (with their guard) the CLI ``child`` runs."""
    model = str(model_path(directory=REAL_MODELS_DIR))
    return [
        pid
        for pid in descendants(child.pid)
        if any(model == arg for arg in _cmdline(pid))
        and any(arg.endswith("llama-server") for arg in _cmdline(pid))
    ]


def assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 10.0
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [(pid, _cmdline(pid)) for pid in pids if alive(pid)]
    assert not left, f"llama-server outlived the CLI: {left}"


def assert_exited_cleanly(child: pexpect.spawn, servers: list[int] | None = None) -> None:
    """``child`` (at its end of file) closes with status 0, not by a signal, without a
    traceback; and the llama-servers it ran, if given, are gone."""
    child.close()
    assert "Traceback" not in plain(child.before or "")
    assert child.signalstatus is None
    assert child.exitstatus == 0
    if servers is not None:
        assert_gone(servers)
