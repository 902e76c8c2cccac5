"""Line editing and history for ``trouper chat``'s prompt, with the standard library's ``readline``.

With ``readline`` importable (GNU readline or libedit: Linux, macOS), the prompt has the
usual line editing (arrows, Home/End, Ctrl-A/E/K/W, Ctrl-R search) and history: the lines
typed at the prompt are kept in :func:`history_path` (``$XDG_DATA_HOME/trouper/chat_history``,
``~/.local/share/trouper/chat_history`` without it), at most :data:`HISTORY_LENGTH` of them,
the file readable by its owner only. Without ``readline`` (Windows) the prompt is a plain
``input()`` and nothing is kept.

What is never kept: a line that holds something shaped like a credential or any secret the
process knows (what :func:`actors.client.redaction.redact` would hide: an ``sk-...`` key, a
``Bearer`` token, a URL with a password, the API key in use...), a line typed with a leading
space (as ``HISTCONTROL=ignorespace`` does in bash: the way to keep any line out of the
file), and a line equal to the one before it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import structlog

from ..client.redaction import redact

__all__ = ["HISTORY_LENGTH", "PromptHistory", "data_dir", "history_path", "keeps"]

#: How many lines the history file keeps (the oldest go first).
HISTORY_LENGTH = 1000

#: Turns off bracketed paste mode, which GNU readline turns on while it reads a line.
_BRACKETED_PASTE_OFF = "\x1b[?2004l"

log = structlog.get_logger("trouper.actors.cli")


def data_dir() -> Path:
    """Where trouper keeps its data (not created): ``$XDG_DATA_HOME/trouper``, or
    ``~/.local/share/trouper`` when ``XDG_DATA_HOME`` is unset or empty."""
    data_home = os.environ.get("XDG_DATA_HOME", "").strip()
    return (
        Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    ) / "trouper"


def history_path() -> Path:
    """The chat's history file (not created)."""
    return data_dir() / "chat_history"


def keeps(line: str, previous: str | None) -> bool:
    """Whether ``line``, typed after ``previous``, goes into the history (see the module)."""
    if not line.strip() or line[0].isspace() or line == previous:
        return False
    return redact(line) == line


def _readline() -> ModuleType | None:
    try:
        import readline
    except ImportError:  # no readline on this platform
        return None
    return readline


class PromptHistory:
    """The prompt's history while the chat runs: use it as a context manager around the
    prompt loop, call :meth:`add` with each line read.

    On entry it loads the history file (and turns ``readline``'s automatic history off, so a
    line is kept only once :meth:`add` accepts it); on exit it puts the terminal back as it was
    on entry. A line that is accepted is appended to the file at once, so a chat that is killed
    loses none, and the file is cut back to its last ``length`` lines (on entry too).

    Args:
        path: The history file (default: :func:`history_path`).
        length: How many lines to keep.
    """

    def __init__(self, path: Path | None = None, *, length: int = HISTORY_LENGTH) -> None:
        self.path = path or history_path()
        self.length = length
        self._readline = _readline()
        self._terminal: list[Any] | None = None
        self._file_usable = True

    @property
    def editing(self) -> bool:
        """Whether the prompt has line editing (``readline`` is available)."""
        return self._readline is not None

    def __enter__(self) -> PromptHistory:
        self._terminal = _terminal_state()
        readline = self._readline
        if readline is None:
            return self
        readline.set_auto_history(False)
        readline.clear_history()
        readline.set_history_length(self.length)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                readline.read_history_file(self.path)
            # Creates the file, cut back to `length` lines (readline writes the last ones).
            readline.write_history_file(self.path)
            self.path.chmod(0o600)
        except OSError as exc:
            self._file_usable = False
            log.warning("chat history not kept", path=str(self.path), error=str(exc))
        return self

    def __exit__(self, *exc_info: object) -> None:
        _restore_terminal(self._terminal, bracketed_paste=self.editing)

    def add(self, line: str) -> None:
        """Keep ``line`` in the history (in memory and in the file) unless :func:`keeps` says
        otherwise."""
        readline = self._readline
        if readline is None:
            return
        count = readline.get_current_history_length()
        previous = readline.get_history_item(count) if count else None
        if not keeps(line, previous):
            return
        readline.add_history(line)
        if not self._file_usable:
            return
        try:
            readline.append_history_file(1, self.path)
        except OSError as exc:
            self._file_usable = False
            log.warning("chat history not kept", path=str(self.path), error=str(exc))


def _terminal_state() -> list[Any] | None:
    """The terminal settings of stdin, if it is a terminal (POSIX)."""
    with contextlib.suppress(ImportError, OSError, ValueError):
        import termios

        if sys.stdin.isatty():
            return termios.tcgetattr(sys.stdin.fileno())
    return None


def _restore_terminal(state: list[Any] | None, *, bracketed_paste: bool) -> None:
    """Put the terminal back: readline may still be reading a line in its thread when the chat
    leaves (Ctrl-C at the prompt), with echo off and bracketed paste on."""
    if state is None:
        return
    with contextlib.suppress(ImportError, OSError, ValueError):
        import termios

        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, state)
    if bracketed_paste and sys.stdout.isatty():
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write(_BRACKETED_PASTE_OFF)
            sys.stdout.flush()
