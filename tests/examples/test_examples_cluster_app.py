"""The cluster example app (``examples/cluster_app.py``) under a real ``uvicorn --workers 2``
(a process of its own with two worker processes), a real redis-server, the scripted OpenAI
server, and a real HTTP client: each conversation reaches its answer wherever it runs, an
interrupt sent on another connection ends the answer being streamed, and shutting uvicorn
down stops both workers cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from actors.storage.testing import RedisServer, free_port
from actors.testing import ScriptedOpenAIServer

from ..cluster.cluster_kit import new_prefix
from ..cluster.conversation_app import answer_pieces, responder
from ..cluster.process_kit import REPO, worker_env
from .app_kit import Event, ScriptedServerThread, read_events

SECS = 30.0


@contextmanager
def uvicorn_workers(redis_url: str, base_url: str, logs: Path) -> Iterator[httpx.Client]:
    """``uvicorn examples.cluster_app:app --workers 2`` and a client of it; shut down with
    SIGINT (as Ctrl-C would) when the block is left."""
    port = free_port()
    env = worker_env(base_url)
    env.update(
        TROUPER_REDIS_URL=redis_url,
        TROUPER_CLUSTER_PREFIX=new_prefix(),
        TROUPER_STORAGE_PREFIX=new_prefix(),
        TROUPER_LEASE_TTL="3",
    )
    log = logs / "uvicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "examples.cluster_app:app", "--workers", "2",
             "--port", str(port), "--host", "127.0.0.1", "--timeout-graceful-shutdown", "5"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=str(REPO),
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=SECS) as client:
            deadline = time.monotonic() + SECS
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if len(client.get("/cluster").json()["workers"]) == 2:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield client
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(SECS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"uvicorn did not stop:\n{log.read_text()}") from None
    assert process.returncode == 0, log.read_text()


def ask(client: httpx.Client, cid: str, line: str) -> list[Event]:
    with client.stream("POST", f"/conversations/{cid}/messages", content=line) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(read_events(response))


def texts(events: list[Event]) -> list[Any]:
    return [e.data for e in events if e.name == "text"]


def test_conversations_answer_wherever_they_run(redis_server: RedisServer, tmp_path: Path) -> None:
    with (
        ScriptedServerThread(ScriptedOpenAIServer(responder=responder)) as scripted,
        uvicorn_workers(redis_server.url, scripted.server.base_url, tmp_path) as client,
    ):
        for index in range(4):
            events = ask(client, f"web-{index}", f"hello {index}")
            assert texts(events) == answer_pieces(f"hello {index}")
            assert events[-1] == Event("done", {"interrupted": False, "lost": False})
        status = client.get("/cluster").json()
        # The conversations were spread over both processes, and any process reaches any.
        assert sorted(len(w["keys"]) for w in status["workers"]) == [2, 2]
        assert {w["pid"] for w in status["workers"]} != {os.getpid()}
        events = ask(client, "web-0", "again")
        assert texts(events) == answer_pieces("again")


def test_an_interrupt_on_another_connection_ends_the_answer(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with (
        ScriptedServerThread(ScriptedOpenAIServer(responder=responder)) as scripted,
        uvicorn_workers(redis_server.url, scripted.server.base_url, tmp_path) as client,
        client.stream("POST", "/conversations/web-long/messages", content="long story") as response,
    ):
        events = read_events(response)
        assert next(events) == Event("text", answer_pieces("long story")[0])
        with httpx.Client(base_url=str(client.base_url), timeout=SECS) as other:
            assert other.post("/conversations/web-long/interrupt").json() == {"interrupted": True}
        rest = list(events)
        assert rest[-1] == Event("done", {"interrupted": True, "lost": False})
        assert len(texts(rest)) < 50
        after = ask(client, "web-long", "short")
        assert texts(after) == answer_pieces("short")
        assert client.post("/conversations/nobody/interrupt").json() == {"interrupted": False}
