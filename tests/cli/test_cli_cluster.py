"""``trouper worker`` and ``trouper cluster status``: the real console script against a real
redis-server, with the scripted OpenAI server as the model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import trio

from actors.cluster import ConversationClient
from actors.storage.testing import RedisServer
from actors.testing import ScriptedOpenAIServer

from ..cluster.cluster_kit import new_prefix, read_answer, wait_until
from ..cluster.conversation_app import answer_pieces, responder
from ..cluster.process_kit import REPO, worker_env
from .cli_kit import QUICK_TIMEOUT, cli_env, trouper


def _env() -> dict[str, str]:
    """The CLI's environment, importing this repository (a fresh clone needs nothing set)."""
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``trouper ARGS`` to completion (stdin closed)."""
    return subprocess.run(
        [*trouper(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=QUICK_TIMEOUT,
        check=False,
    )


async def _status(redis: str, prefix: str) -> dict[str, Any]:
    done = await trio.run_process(
        [*trouper(), "cluster", "status", "--redis", redis, "--prefix", prefix, "--json"],
        capture_stdout=True,
        capture_stderr=True,
        env=_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    data: dict[str, Any] = json.loads(done.stdout)
    return data


async def test_a_worker_serves_conversations_and_status_shows_them(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = new_prefix()
    log = tmp_path / "worker.log"
    async with ScriptedOpenAIServer(responder=responder) as server:
        env = {**_env(), **worker_env(server.base_url)}
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [*trouper(), "worker", "--redis", redis_server.url,
                 "--pipeline", "tests.cluster.conversation_app:factory",
                 "--prefix", prefix, "--storage-prefix", new_prefix(), "--lease-ttl", "3"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=str(REPO),
            )  # fmt: skip
        try:
            await wait_until(lambda: "serving" in log.read_text(), secs=QUICK_TIMEOUT)
            async with (
                ConversationClient(redis_server.url, prefix=prefix) as client,
                client.open("cli-1") as conversation,
            ):
                placement = await conversation.send_text("hello")
                texts, outcome = await read_answer(conversation)
            assert (texts, outcome) == (answer_pieces("hello"), "done")
            status = await _status(redis_server.url, prefix)
            [worker] = status["workers"]
            assert worker["worker_id"] == placement.worker
            assert worker["pid"] == process.pid
            assert worker["keys"] == {"cli-1": placement.epoch}
            text = run("cluster", "status", "--redis", redis_server.url, "--prefix", prefix)
            assert text.returncode == 0, text.stderr
            assert "1 live worker(s)" in text.stdout
            assert "cli-1  (placement" in text.stdout
        finally:
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(QUICK_TIMEOUT):
                await process.wait()
        assert process.returncode == 0, log.read_text()
        assert await _status(redis_server.url, prefix) == {"workers": [], "orphans": {}}
        assert "worker stopped" in log.read_text()


def test_a_pipeline_that_cannot_be_loaded_is_one_error_line(redis_server: RedisServer) -> None:
    done = run("worker", "--redis", redis_server.url, "--pipeline", "no_such_module:factory")
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot import 'no_such_module'")
    assert "Traceback" not in done.stderr
    done = run("worker", "--redis", redis_server.url, "--pipeline", "factory")
    assert done.returncode == 2
    assert "module:factory" in done.stderr


def _one_error_line(done: subprocess.CompletedProcess[str], starts: str = "error: ") -> None:
    """``done`` failed with exit status 2 and one line on stderr starting with ``starts``,
    no traceback, and nothing of the test URLs' password anywhere."""
    assert done.returncode == 2, done.stdout
    assert done.stderr.startswith(starts), done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    assert os.linesep not in done.stderr.strip()


def test_status_of_an_unreachable_redis_is_one_error_line() -> None:
    done = run("cluster", "status", "--redis", "redis://:s3cret-pw@127.0.0.1:1/0")
    _one_error_line(done)


def test_a_worker_that_cannot_reach_redis_is_one_error_line() -> None:
    done = run(
        "worker",
        "--redis",
        "redis://user:s3cret-pw@127.0.0.1:1/0",
        "--pipeline",
        "examples.cluster_app:conversation_pipeline",
    )
    _one_error_line(done)
    assert "unavailable" in done.stderr


def test_a_worker_with_a_bad_collector_threshold_is_one_error_line() -> None:
    done = run(
        "worker",
        "--redis",
        "redis://user:s3cret-pw@127.0.0.1:1/0",
        "--pipeline",
        "examples.cluster_app:conversation_pipeline",
        "--gc-young",
        "-3",
    )
    _one_error_line(done, "error: young must be a positive integer")
