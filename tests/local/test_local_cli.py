"""``trouper model pull`` / ``trouper model serve``: exit codes, messages, and signals.

The serve tests run the real CLI in a subprocess on the fake llama-server and check that the
server is gone after Ctrl-C (SIGINT), SIGTERM, and even after trouper itself is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import structlog
import trio

from actors.cli import _model_cmd, main
from actors.local import DEFAULT_MODEL, ModelIntegrityError, PullResult, model_path

from .conftest import FAKE_SERVER, process_alive, read_pids, wait_until

ROOT = Path(__file__).resolve().parents[2]
BOUND = 20.0
# The child restores Python's Ctrl-C handler in case the test runner was started with SIGINT
# ignored (as background jobs of non-interactive shells are).
CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from actors.cli import main; sys.exit(main())"
)


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """``main()`` configures structlog for the CLI; put the test session's configuration back."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_pull_reports_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seen = {}

    async def fake_pull(**kwargs: object) -> PullResult:
        seen.update(kwargs)
        return PullResult(path=tmp_path / "m.gguf", status="downloaded", seconds=8.25)

    monkeypatch.setattr(_model_cmd, "pull_model", fake_pull)
    assert main(["model", "pull", "--quiet", "--force"]) == 0
    assert seen["force"] is True
    assert seen["progress"] is False
    err = capsys.readouterr().err
    assert "Model ready" in err
    assert "downloaded and sha256 verified in 8.2 s" in err


def test_pull_error_is_one_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing_pull(**kwargs: object) -> PullResult:
        raise ModelIntegrityError("bad hash; deleted; run `trouper model pull` again")

    monkeypatch.setattr(_model_cmd, "pull_model", failing_pull)
    assert main(["model", "pull"]) == 1
    err = capsys.readouterr().err
    assert "error:" in err
    assert "run `trouper model pull` again" in err
    assert "Traceback" not in err


@pytest.fixture
def fake_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable llama-server stand-in, selected through TROUPER_LLAMA_SERVER."""
    script = tmp_path / "llama-server"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SERVER}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("TROUPER_LLAMA_SERVER", str(script))
    monkeypatch.setenv("FAKE_LLAMA_PIDFILE", str(tmp_path / "fake.pids"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return script


async def _serve_then(sig: signal.Signals, model: Path, pidfile: Path) -> tuple[int, str]:
    """Start ``trouper model serve``, wait for its URL, send ``sig``; return (exit code, stderr)."""
    with trio.fail_after(BOUND):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", CLI, "model", "serve", "--port", "0", "--model", str(model)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            out = b""
            while b"\n" not in out:
                data = await process.stdout.receive_some()
                assert data, "trouper model serve exited before printing its URL"
                out += data
            assert out.decode().startswith("http://127.0.0.1:")
            assert out.decode().strip().endswith("/v1")
            (server_pid,) = read_pids(pidfile)
            assert process_alive(server_pid)
            process.send_signal(sig)
            code = await process.wait()
            err = b""
            while data := await process.stderr.receive_some():
                err += data
            await wait_until(lambda: not process_alive(server_pid))
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()
    return code, err.decode()


async def test_serve_stops_server_on_ctrl_c(fake_binary: Path, fake_model_file: Path) -> None:
    code, err = await _serve_then(signal.SIGINT, fake_model_file, fake_binary.parent / "fake.pids")
    assert code == 0
    assert "Stopped." in err
    assert "Press Ctrl-C to stop." in err


async def test_serve_stops_server_on_sigterm(fake_binary: Path, fake_model_file: Path) -> None:
    code, err = await _serve_then(signal.SIGTERM, fake_model_file, fake_binary.parent / "fake.pids")
    assert code == 0
    assert "Stopping (SIGTERM)." in err


async def test_server_does_not_outlive_a_killed_trouper(
    fake_binary: Path, fake_model_file: Path
) -> None:
    # trouper gets no chance to clean up: the guard process sees its stdin close and stops
    # the server (the helper waits, bounded, until the server pid is gone).
    code, _ = await _serve_then(signal.SIGKILL, fake_model_file, fake_binary.parent / "fake.pids")
    assert code == -signal.SIGKILL


async def test_serve_reports_a_failing_server(
    fake_binary: Path, fake_model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_LLAMA_MODE", "exit")
    with trio.fail_after(BOUND):
        result = await trio.run_process(
            [sys.executable, "-c", CLI, "model", "serve", "--model", str(fake_model_file)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=ROOT,
            env={**os.environ},
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "error:" in err
    assert "failed to load model 'nonsense.gguf'" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- a server that cannot run


@pytest.fixture
def cached_default_model(trouper_home: Path) -> Path:
    """A sparse file under the default model's name, recorded as verified, so ``trouper chat``
    starts the (fake) server at once instead of pulling ~490 MB."""
    path = model_path()
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        f.truncate(DEFAULT_MODEL.size)
    record = {"sha256": DEFAULT_MODEL.sha256, "size": DEFAULT_MODEL.size}
    record["mtime_ns"] = path.stat().st_mtime_ns
    path.with_name(path.name + ".verified.json").write_text(json.dumps(record))
    return path


FAILURES = {
    "sigill": ["SIGILL", "CPU features this machine does not have", "trouper model rebuild"],
    "sigill_on_completion": ["SIGILL", "during its self-check", "trouper model rebuild"],
    "sigsegv": ["SIGSEGV", "segmentation fault", "trouper model doctor"],
    "exit1": ["exited with code 1", "invalid argument", "trouper model doctor"],
    "never_ready": ["did not become ready within 1 s", "trouper model doctor"],
}


def _spawn(args: list[str], mode: str) -> tuple[int, str]:
    """Run the CLI on a pseudo terminal with the fake server in ``mode``; (status, output)."""
    env = {**os.environ, "FAKE_LLAMA_MODE": mode, "TROUPER_LLAMA_READY_TIMEOUT": "1"}
    env.update(NO_COLOR="1", TERM="xterm")
    env = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}
    child = pexpect.spawn(
        sys.executable,
        ["-c", CLI, *args],
        env=env,
        cwd=str(ROOT),
        timeout=BOUND,
        encoding="utf-8",
        dimensions=(50, 120),
    )
    child.expect(pexpect.EOF)
    child.close()
    output = child.before or ""
    assert "Traceback" not in output
    return child.exitstatus if child.exitstatus is not None else -1, output


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_chat_explains_a_server_that_cannot_run_in_one_line(
    mode: str, fake_binary: Path, cached_default_model: Path
) -> None:
    status, output = _spawn(["chat"], mode)
    assert status == 2
    (line,) = _error_lines(output)
    for word in FAILURES[mode]:
        assert word in line


@pytest.mark.parametrize("mode", ["sigill", "exit1"])
def test_serve_explains_a_server_that_cannot_run_in_one_line(
    mode: str, fake_binary: Path, fake_model_file: Path
) -> None:
    status, output = _spawn(
        ["model", "serve", "--port", "0", "--model", str(fake_model_file)], mode
    )
    assert status == 1
    (line,) = _error_lines(output)
    for word in FAILURES[mode]:
        assert word in line


def test_doctor_on_a_working_server_is_all_well(fake_binary: Path, fake_model_file: Path) -> None:
    status, output = _spawn(["model", "doctor", "--model", str(fake_model_file)], "ok")
    assert status == 0, output
    assert "All well" in output
    assert re.search(r"ok\s+smoke run\s+ready in [\d.]+ s, one-token completion in \d+ ms", output)
    assert re.search(r"ok\s+server features\s+compiled for SSE3 SSSE3 AVX AVX2", output)
    assert re.search(r"warning\s+build\s+no trouper build record", output)
    assert re.search(r"ok\s+cpu\s+", output)


def test_doctor_names_the_failing_line(fake_binary: Path, fake_model_file: Path) -> None:
    status, output = _spawn(["model", "doctor", "--model", str(fake_model_file)], "sigill")
    assert status == 1
    (failed,) = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert re.match(r"FAILED\s+smoke run\s+llama-server was built for CPU features", failed)
    assert "trouper model rebuild" in failed
    assert "Not well: smoke run failed" in output


def test_doctor_without_a_server_names_the_missing_binary(
    fake_model_file: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TROUPER_LLAMA_SERVER", str(tmp_path / "no-such-llama-server"))
    status, output = _spawn(["model", "doctor", "--model", str(fake_model_file)], "ok")
    assert status == 1
    assert re.search(r"FAILED\s+llama-server\s+TROUPER_LLAMA_SERVER is set to", output)
