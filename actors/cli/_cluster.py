"""``trouper worker`` and ``trouper cluster status``: serve conversations as a worker of the
cluster, and show the cluster (see ``docs/scale-out.md``).

Every error is one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time

import attrs
import trio

from runtime import logging as rlog
from runtime import tune_gc
from runtime.cluster import ClusterError, ClusterStatus, cluster_status

from ..cluster import ConversationFactory, ConversationWorker
from ..storage import StorageError
from ..storage._urls import mask_url

__all__ = ["WorkerOptions", "load_factory", "run_status", "run_worker"]


@attrs.frozen
class WorkerOptions:
    """What ``trouper worker`` was asked for.

    Attributes:
        redis: The cluster's Redis URL.
        pipeline: ``module:factory``, the conversation factory.
        storage: The conversations' Redis URL (``None``: ``redis``).
        prefix: The cluster's key prefix.
        storage_prefix: The storage's key prefix.
        lease_ttl: Seconds a placement lasts unless renewed.
        idle_timeout: Seconds after which an idle conversation is stopped.
        log_json: Log JSON lines instead of console text.
        log_level: The lowest level logged.
        gc_young: The cyclic collector's youngest threshold for the process
            (:func:`runtime.tune_gc`; ``None``: its default); 0 leaves the collector as
            Python set it.
    """

    redis: str
    pipeline: str
    storage: str | None = None
    prefix: str = "trouper:cluster:"
    storage_prefix: str = "trouper:"
    lease_ttl: float = 10.0
    idle_timeout: float = 300.0
    log_json: bool = False
    log_level: str = "info"
    gc_young: int | None = None


def load_factory(spec: str) -> ConversationFactory:
    """The callable that ``module:name`` names (the current directory is importable, as
    for ``uvicorn``).

    Raises:
        ValueError: Not ``module:name``, or the module or name cannot be loaded.
    """
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ValueError(f"--pipeline takes module:factory, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{module_name!r} has no callable {name!r}")
    return factory  # type: ignore[no-any-return]


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_worker(options: WorkerOptions) -> int:
    """``trouper worker``: serve until SIGTERM or Ctrl-C; the exit status."""
    try:
        factory = load_factory(options.pipeline)
        worker = ConversationWorker(
            options.redis,
            factory,
            storage_url=options.storage,
            prefix=options.prefix,
            storage_prefix=options.storage_prefix,
            lease_ttl=options.lease_ttl,
            idle_timeout_secs=options.idle_timeout,
        )
        if options.gc_young is None:
            tune_gc()  # a worker runs many sessions: fewer full collections
        elif options.gc_young:
            tune_gc(options.gc_young)
    except (ValueError, TypeError) as exc:
        return _error(str(exc))
    rlog.configure(json=options.log_json, level=options.log_level, file=sys.stderr)

    async def serve() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                print(
                    f"worker {worker.worker_id} serving {options.pipeline} "
                    f"on {mask_url(options.redis)}",
                    flush=True,
                )

                async for _ in signals:
                    worker.stop()  # the nursery waits for the worker to end
                    break

    try:
        trio.run(serve)
    except _REPORTED as exc:
        return _error(str(exc))
    except BaseExceptionGroup as group:  # raised by the worker's start, inside the nursery
        reported, rest = group.split(_REPORTED)
        if reported is None or rest is not None:
            raise
        return _error(str(_first_leaf(reported)))
    return 0


#: The failures ``trouper worker`` reports as one ``error:`` line (exit status 2).
_REPORTED = (ClusterError, StorageError, ValueError)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _status_text(status: ClusterStatus) -> str:
    count = len(status.workers)
    lines = [f"{count} live worker(s)" if count else "no live worker"]
    now = time.time()
    for w in status.workers:
        lines.append(
            f"{w.worker_id}  load {w.load}  conversations {len(w.keys)}  "
            f"pid {w.pid}  up {max(now - w.started_at, 0):.0f} s"
        )
        lines.extend(f"  {key}  (placement {epoch})" for key, epoch in w.keys.items())
    if status.orphans:
        lines.append("placed on dead workers (expiring):")
        lines.extend(f"  {key}  ({where})" for key, where in status.orphans.items())
    return "\n".join(lines)


def run_status(redis: str, prefix: str, *, as_json: bool) -> int:
    """``trouper cluster status``: the live workers, their load and their conversations."""
    try:
        status = trio.run(lambda: cluster_status(redis, prefix=prefix))
    except (ClusterError, ValueError) as exc:
        return _error(str(exc))
    if as_json:
        print(json.dumps(status.as_dict(), indent=2))
    else:
        print(_status_text(status))
    return 0
