"""``trouper model pull|build|rebuild|doctor|serve``: the local model from the command line.

Each takes already-parsed options and returns a process exit code; errors of the local model
(:class:`~actors.local.LocalModelError`) are printed as one clear line, not a traceback.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

import attrs
import trio
from rich.console import Console
from rich.markup import escape

from actors.local import (
    DEFAULT_MODEL,
    BuildResult,
    DoctorReport,
    LocalModelError,
    PullResult,
    build_llama_server,
    diagnose,
    open_local_server,
    pull_model,
    server_exit_error,
)

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

__all__ = [
    "BuildOptions",
    "PullOptions",
    "ServeOptions",
    "model_build",
    "model_doctor",
    "model_pull",
    "model_serve",
]


@attrs.frozen
class PullOptions:
    """Options of ``trouper model pull``."""

    force: bool = False
    """Download and verify again even when a verified copy is cached."""
    quiet: bool = False
    """No progress bars (errors are still printed)."""


@attrs.frozen
class BuildOptions:
    """Options of ``trouper model build`` and ``trouper model rebuild``."""

    force: bool = False
    """Build even when the installed server is already trouper's build for this baseline
    (``rebuild`` sets it)."""
    baseline: str | None = None
    """The CPU baseline to build for (default: the highest this machine runs)."""
    check: bool = True
    """Run the self-check (server on the model, one-token completion) after building."""
    quiet: bool = False
    """No progress output (errors are still printed)."""


@attrs.frozen
class ServeOptions:
    """Options of ``trouper model serve``."""

    host: str = "127.0.0.1"
    """Address to listen on (``0.0.0.0`` exposes the server to the network)."""
    port: int | None = 8080
    """TCP port; ``None`` picks a free one."""
    model: Path | None = None
    """A GGUF file to serve instead of the default model (which is pulled if missing)."""
    verbose: bool = False
    """Show llama-server's own output in the terminal instead of its log file."""


def _stderr(console: Console | None) -> Console:
    return console if console is not None else Console(stderr=True, highlight=False)


def _print_error(console: Console, error: LocalModelError) -> None:
    console.print(f"[bold red]error:[/] {error}", markup=True, highlight=False, soft_wrap=True)


def _describe(result: PullResult) -> str:
    size_mb = DEFAULT_MODEL.size / 1e6
    if result.status == "cached":
        how = "already downloaded and verified"
    elif result.status == "verified":
        how = f"already downloaded; sha256 verified in {result.seconds:.1f} s"
    else:
        how = f"downloaded and sha256 verified in {result.seconds:.1f} s"
    return f"Model ready: {result.path} ({size_mb:.0f} MB, {how})."


def model_pull(options: PullOptions, *, console: Console | None = None) -> int:
    """Run ``trouper model pull``: make sure the verified local model is in the cache."""
    err = _stderr(console)
    return _run_and_report(
        err,
        lambda: pull_model(force=options.force, progress=not options.quiet, console=err),
        _describe,
        "Interrupted: nothing was saved under the model's name.",
    )


def _run_and_report(
    err: Console,
    work: Callable[[], Awaitable[T]],
    describe: Callable[[T], str],
    interrupted: str,
) -> int:
    """Run ``work`` under trio; print its result described, or its error in one line."""
    try:
        result = trio.run(work)
    except LocalModelError as exc:
        _print_error(err, exc)
        return 1
    except KeyboardInterrupt:
        err.print(interrupted, soft_wrap=True)
        return 130
    err.print(describe(result), highlight=False, soft_wrap=True)
    return 0


async def _run_server(options: ServeOptions, err: Console) -> int:
    async with open_local_server(
        options.model,
        host=options.host,
        port=options.port,
        show_output=options.verbose,
        console=err,
    ) as server:
        where = f" Log: {server.log_path}." if server.log_path is not None else ""
        err.print(
            f"Serving [bold]{server.model}[/] (OpenAI-compatible) at [bold]{server.base_url}[/]."
            f"{where} Press Ctrl-C to stop.",
            highlight=False,
            soft_wrap=True,
        )
        print(server.base_url, flush=True)
        code = await server.process.wait()
        error = server_exit_error(
            code,
            log_tail=server.log_tail(400),
            log_path=server.log_path,
            source=server.source,
            when="while serving",
        )
        _print_error(err, error)
        return 1


@contextmanager
def _unwrap_single() -> Iterator[None]:
    """Re-raise a nursery's lone exception (KeyboardInterrupt, LocalModelError) unwrapped."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


async def _serve(options: ServeOptions, err: Console) -> int:
    """Serve until Ctrl-C (KeyboardInterrupt), SIGTERM or SIGHUP; the server is always stopped."""
    code = 0
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals, _unwrap_single():
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    err.print(f"Stopping ({signal.Signals(signum).name}).")
                    nursery.cancel_scope.cancel()
                    return

            async def serve() -> None:
                nonlocal code
                code = await _run_server(options, err)
                nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            nursery.start_soon(serve)
    return code


def model_serve(options: ServeOptions, *, console: Console | None = None) -> int:
    """Run ``trouper model serve``: llama-server in the foreground until Ctrl-C."""
    err = _stderr(console)
    try:
        return trio.run(_serve, options, err)
    except LocalModelError as exc:
        _print_error(err, exc)
        return 1
    except KeyboardInterrupt:
        err.print("Stopped.")
        return 0


def _describe_build(result: BuildResult) -> str:
    record = result.record
    if result.status == "up to date":
        return (
            f"llama-server is up to date: trouper's build for {record.baseline}, built "
            f"{record.built_at} ({result.binary})."
        )
    text = f"Built llama-server for {record.baseline} in {record.seconds:.0f} s ({result.binary})."
    if result.check is not None:
        text += (
            f" Self-check passed: ready in {result.check.ready_seconds:.1f} s, one-token "
            f"completion in {result.check.completion_seconds * 1000:.0f} ms."
        )
    return text


def model_build(options: BuildOptions, *, console: Console | None = None) -> int:
    """Run ``trouper model build`` / ``rebuild``: a portable llama-server, recorded and checked."""
    err = _stderr(console)
    return _run_and_report(
        err,
        lambda: build_llama_server(
            force=options.force,
            baseline=options.baseline,
            check=options.check,
            progress=not options.quiet,
            console=err,
        ),
        _describe_build,
        "Interrupted: the build did not finish; run it again.",
    )


_MARKS = {"ok": "[green]ok[/]     ", "warning": "[yellow]warning[/]", "failed": "[red]FAILED[/] "}


def print_report(report: DoctorReport, console: Console) -> None:
    """Print the doctor's report: a line per check, then the verdict."""
    width = max(len(check.name) for check in report.checks)
    for check in report.checks:
        console.print(
            f"{_MARKS[check.status]} {check.name.ljust(width)}  {escape(check.detail)}",
            highlight=False,
            soft_wrap=True,
        )
    if report.ok:
        console.print("[green]All well:[/] the local model can run on this machine.")
    else:
        failed = ", ".join(check.name for check in report.checks if check.status == "failed")
        console.print(f"[red]Not well:[/] {failed} failed (the fix is on its line).")


def model_doctor(
    model: Path | None = None, *, smoke: bool = True, console: Console | None = None
) -> int:
    """Run ``trouper model doctor``: report every check; exit status 0 only if all is well."""
    out = console if console is not None else Console(highlight=False)
    try:
        report = trio.run(lambda: diagnose(model=model, smoke=smoke))
    except KeyboardInterrupt:
        return 130
    print_report(report, out)
    return 0 if report.ok else 1
