"""Worker processes for the cluster tests: real OS processes running
``tests.cluster.run_worker`` against the test's redis-server and scripted model.

The processes import the tests' modules from the repository root, passed explicitly as
``PYTHONPATH`` (a fresh clone needs nothing set by the user).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from runtime.cluster import ClusterClient

from .cluster_kit import SECS, wait_until

__all__ = ["REPO", "WorkerProcess", "worker_env", "worker_processes"]

#: The repository root (what the worker processes import the tests from).
REPO = Path(__file__).resolve().parents[2]


def worker_env(base_url: str) -> dict[str, str]:
    """The environment of a worker process: the scripted model, and the repository on
    ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OPENAI_BASE_URL"] = base_url
    env["OPENAI_API_KEY"] = "sk-test-cluster-0a1b2c"
    env["OPENAI_MODEL"] = "gpt-test"
    return env


@attrs.define(eq=False)
class WorkerProcess:
    """One worker process and its log file."""

    process: trio.Process
    log: Path
    worker_id: str = ""

    def log_tail(self, lines: int = 30) -> str:
        """The end of its output."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL it."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def worker_processes(
    count: int,
    *,
    redis_url: str,
    prefix: str,
    storage_prefix: str,
    base_url: str,
    logs: Path,
    lease_ttl: float = 3.0,
) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` worker processes, all announced when the block starts; stopped with SIGTERM
    (killed if they do not end in time) when it is left."""
    started: list[WorkerProcess] = []
    argv = [sys.executable, "-m", "tests.cluster.run_worker", redis_url, prefix]
    argv += [storage_prefix, str(lease_ttl)]
    try:
        for index in range(count):
            log = logs / f"worker-{index}.log"
            with log.open("wb") as out:
                process = await trio.lowlevel.open_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=worker_env(base_url),
                    cwd=str(REPO),
                )
            started.append(WorkerProcess(process, log))
        for worker in started:

            def ready(w: WorkerProcess = worker) -> bool:
                return "ready" in w.log_tail(200) or _died(w)

            await wait_until(ready, secs=30)
            assert not _died(worker), f"a worker died at start:\n{worker.log_tail()}"
            line = next(x for x in worker.log_tail(200).splitlines() if x.startswith("ready "))
            worker.worker_id = line.split()[1]
        yield started
    finally:
        for worker in started:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(SECS, shield=True):
            for worker in started:
                await worker.process.wait()
        for worker in started:
            if worker.process.returncode is None:
                worker.kill()
                with trio.CancelScope(shield=True):
                    await worker.process.wait()


def _died(worker: WorkerProcess) -> bool:
    return worker.process.poll() is not None


async def owned(client: ClusterClient) -> dict[str, set[str]]:
    """The keys each live worker owns, by worker id."""
    status = await client.status()
    return {w.worker_id: set(w.keys) for w in status.workers}
