"""What the tests read of the process tree (Linux ``/proc``)."""

from __future__ import annotations

import os
from pathlib import Path


def child_pids(pid: int | None = None) -> set[int]:
    """The live child processes of ``pid`` (default: this process), read from every thread's
    ``children`` list. A thread that ends while the list is read (trio's thread cache, say)
    is skipped."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid if pid is not None else os.getpid()}/task").iterdir():
        try:
            text = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        found.update(int(p) for p in text)
    return found
