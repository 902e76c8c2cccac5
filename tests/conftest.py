"""Fixtures shared by the whole suite: ``local_llm_server`` -- the real llama-server on the real
local model, started once per test session for every end-to-end test (``tests/local``,
``tests/e2e``, ``tests/cli``) -- and ``structlog_restored``."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import httpx
import pytest
import structlog

from actors.local import (
    DEFAULT_MODEL,
    ServerCPUError,
    ServerNotInstalledError,
    build_server_argv,
    cached_model,
    check_build,
    find_llama_server,
    model_path,
    models_dir,
    server_exit_error,
    verify_model,
)
from actors.local._server import free_port, read_log_tail
from actors.storage.testing import INSTALL_HINT, RedisServer, find_redis_server

if TYPE_CHECKING:
    from collections.abc import Iterator

REAL_MODELS_DIR = models_dir()
"""The user's model cache, read before any test isolates TROUPER_HOME."""


@attrs.frozen
class LocalLLM:
    """The session's real llama-server: an OpenAI-compatible endpoint on the local model."""

    base_url: str
    """``http://127.0.0.1:PORT/v1``."""
    model: str
    """The model name to send in requests."""
    log_path: Path
    """llama-server's output."""
    pid: int = 0
    """The server's process id."""

    @property
    def root_url(self) -> str:
        """The server root (``/health``, ``/props``, ``/slots``)."""
        return self.base_url.removesuffix("/v1")

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self.root_url.rsplit(":", 1)[1])


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    """Skip -- or, under CI=true, fail: CI must run the end-to-end tests for real."""
    if _ci():
        pytest.fail(f"{reason} (CI is set: the local model and llama-server are required)")
    pytest.skip(reason)


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """Lets a test configure structlog: its configuration is put back after the test."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**saved)
    else:
        structlog.reset_defaults()


@pytest.fixture(scope="session")
def local_llm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLM]:
    """Start the real llama-server on the pulled local model once for the test session.

    Skips when llama-server or the model is missing (run ``make local``), except when the
    ``CI`` environment variable is true: then it fails. The server is a plain subprocess (so
    this sync fixture can serve trio and sync tests alike) and is terminated at session end.
    """
    try:
        command = find_llama_server()
    except ServerNotInstalledError as exc:
        _unavailable(f"llama-server is not installed: {exc}")
        raise
    try:  # a build for CPU features this machine lacks: one clear line, before it can crash
        check_build(Path(command.argv[0]), source=command.source)
    except ServerCPUError as exc:
        pytest.fail(str(exc))
    path = cached_model(directory=REAL_MODELS_DIR)
    if path is None:
        candidate = model_path(directory=REAL_MODELS_DIR)
        if not candidate.exists():
            _unavailable(f"the local model is not pulled ({candidate}): run `make local`")
        if not verify_model(candidate):
            _unavailable(f"the local model at {candidate} fails its sha256 check: pull it again")
        path = candidate
    port = free_port()
    argv = build_server_argv(command, path, port=port)
    log_path = tmp_path_factory.mktemp("llama-server") / "llama-server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(process, f"http://127.0.0.1:{port}/health", log_path, deadline=120.0)
        yield LocalLLM(
            base_url=f"http://127.0.0.1:{port}/v1",
            model=DEFAULT_MODEL.name,
            log_path=log_path,
            pid=process.pid,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_healthy(
    process: subprocess.Popen[bytes], url: str, log_path: Path, *, deadline: float
) -> None:
    end = time.monotonic() + deadline
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < end:
            if process.poll() is not None:
                tail = read_log_tail(log_path, lines=400)
                error = server_exit_error(process.returncode, log_tail=tail, log_path=log_path)
                pytest.fail(str(error))
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    pytest.fail(
        f"llama-server did not become ready within {deadline:g} s (GET {url} never answered "
        f"200); run `trouper model doctor` (log: {log_path})"
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session (no persistence), stopped by PID at the end.

    Without one the Redis tests are skipped, except on CI (``CI=true``), where they fail:
    CI installs the dev extra, which brings one."""
    if find_redis_server() is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()
