"""A worker process of the cluster tests: ``python -m tests.cluster.run_worker URL PREFIX
STORAGE_PREFIX LEASE_TTL``. It runs a :class:`~actors.cluster.ConversationWorker` on
:func:`tests.cluster.conversation_app.factory`, prints ``ready WORKER_ID`` once it has
announced itself, and stops gracefully on SIGTERM."""

from __future__ import annotations

import signal
import sys

import trio

from actors.cluster import ConversationWorker

from .conversation_app import factory


async def main(url: str, prefix: str, storage_prefix: str, lease_ttl: float) -> None:
    worker = ConversationWorker(
        url, factory, prefix=prefix, storage_prefix=storage_prefix, lease_ttl=lease_ttl
    )
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            print("ready", worker.worker_id, flush=True)
            async for _ in signals:
                worker.stop()
                break


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
