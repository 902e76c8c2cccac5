"""A tiny supervisor that keeps llama-server from outliving trouper, even if trouper is SIGKILLed.

Run as ``python -I -S _guard.py COMMAND ARGS...`` with a pipe as stdin. It starts COMMAND as its
child (which also receives SIGKILL if the guard dies, via Linux's parent-death signal), forwards
SIGTERM/SIGINT/SIGHUP to it, ends the way it ended (its exit code, or death by the same
signal, so the owner sees a SIGILL as a SIGILL), and -- when its stdin reaches end of file
because the process holding the pipe's other end (trouper) is gone -- stops the child itself:
SIGTERM, then SIGKILL after a grace period. Standard library only, and no trouper imports, so it
starts in a few milliseconds.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time

__all__ = ["main"]

GRACE_SECONDS = 5.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the guard) dies; no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _watch_stdin(child: int) -> None:
    """Block until stdin closes (the owner died), then stop the child."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    try:
        os.kill(child, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
            os.kill(child, 0)  # raises once the child has been reaped
        os.kill(child, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _die_like_child(signum: int) -> None:
    """End this process by ``signum``, the signal that ended the child (no core file)."""
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError):
        pass
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    os.kill(os.getpid(), signum)


def main(argv: list[str]) -> int:
    """Run ``argv`` under the guard and return the exit status to exit with."""
    if not argv:
        print("usage: _guard.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    guard = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with_parent()
        if os.getppid() != guard:  # the guard died before prctl took effect
            os._exit(1)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"cannot execute {argv[0]}: {exc}", file=sys.stderr, flush=True)
        os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    threading.Thread(target=_watch_stdin, args=(child,), daemon=True).start()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status) if status else 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    if code < 0:
        _die_like_child(-code)
    os._exit(code if code >= 0 else 128 - code)
