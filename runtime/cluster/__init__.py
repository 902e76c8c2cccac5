"""Sessions across processes and hosts, on Redis: address a session by its key, from any
process; the cluster finds or places the worker that owns it.

- :class:`ClusterWorker` hosts the sessions of the keys placed on it, built by a factory;
  it heartbeats its load and renews its placements.
- :class:`ClusterClient` opens a :class:`RemoteSession` on a key: ``send`` frames (the key
  is placed on the least-loaded live worker on first use), ``interrupt()`` its turn, and
  iterate its output, each frame once and in order.
- :func:`cluster_status` lists the live workers, their load and the keys they own.

Frames cross processes through :mod:`runtime.serialization`. See ``docs/scale-out.md``.
"""

from ._client import ClusterClient, InterruptTimeoutError, RemoteSession
from ._frames import OwnerLostFrame, RemoteInterruptedFrame
from ._status import ClusterStatus, WorkerStatus, cluster_status
from ._wire import (
    DEFAULT_PREFIX,
    ClusterError,
    ClusterUnavailableError,
    NoWorkerError,
    Placement,
    new_worker_id,
)
from ._worker import ClusterWorker, SessionFactory, forward_by_default

__all__ = [
    "DEFAULT_PREFIX",
    "ClusterClient",
    "ClusterError",
    "ClusterStatus",
    "ClusterUnavailableError",
    "ClusterWorker",
    "InterruptTimeoutError",
    "NoWorkerError",
    "OwnerLostFrame",
    "Placement",
    "RemoteInterruptedFrame",
    "RemoteSession",
    "SessionFactory",
    "WorkerStatus",
    "cluster_status",
    "forward_by_default",
    "new_worker_id",
]
