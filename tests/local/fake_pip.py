"""A stand-in for ``python -m pip`` in unit tests: ``download ... --dest DIR REQS`` copies wheels.

The wheels come from ``FAKE_PIP_SOURCE`` (one ``*.whl`` per requirement, matched by name).
``FAKE_PIP_EXIT`` makes it fail with that exit code after printing pip-like error lines;
``FAKE_PIP_SKIP`` names a requirement whose wheel it silently leaves out; ``FAKE_PIP_HANG``
makes it hang after starting the first download (writing its pid to ``FAKE_PIP_LOG.pid``);
``FAKE_PIP_LOG`` is a file to which it appends one line per run.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path


def main() -> int:
    """Copy the requested wheels to ``--dest``, printing pip's raw progress lines."""
    args = sys.argv[1:]
    assert args[0] == "download", args
    log = os.environ.get("FAKE_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(" ".join(args) + "\n")
    dest = Path(args[args.index("--dest") + 1])
    requirements = [a for a in args if "==" in a]
    code = int(os.environ.get("FAKE_PIP_EXIT", "0"))
    if code:
        print("Collecting " + requirements[0])
        for i in range(30):
            print(f"  noise line {i}")
        print("ERROR: Could not find a version that satisfies the requirement " + requirements[0])
        print("ERROR: No matching distribution found for " + requirements[0], file=sys.stderr)
        return code
    source = Path(os.environ["FAKE_PIP_SOURCE"])
    for requirement in requirements:
        name = re.sub(r"[-_.]+", "_", requirement.split("==")[0]).lower()
        if requirement == os.environ.get("FAKE_PIP_SKIP"):
            continue
        (wheel,) = source.glob(f"{name}-*.whl")
        size = wheel.stat().st_size
        print(f"Collecting {requirement}")
        print(f"  Downloading {wheel.name} ({size} bytes)")
        print(f"Progress 0 of {size}", flush=True)
        if os.environ.get("FAKE_PIP_HANG"):
            Path(f"{log}.pid").write_text(str(os.getpid()))
            time.sleep(60)
        print(f"Progress {size // 2} of {size}\r", end="", flush=True)
        shutil.copy(wheel, dest / wheel.name)
        print(f"Progress {size} of {size}", flush=True)
    print("Successfully downloaded " + " ".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
