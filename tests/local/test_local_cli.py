"""``trouper model pull`` / ``trouper model serve``: exit codes, messages, and signals.

The serve tests run the real CLI in a subprocess on the fake llama-server and check that the
server is gone after Ctrl-C (SIGINT), SIGTERM, and even after trouper itself is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
import trio

from actors.cli import _model_cmd, main
from actors.local import ModelIntegrityError, PullResult

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
