"""What the cluster looks like now: its live workers, their load and the keys they own."""

from __future__ import annotations

from typing import Any

import attrs

from ._wire import Connection, Placement, connect, text, translating

__all__ = ["ClusterStatus", "WorkerStatus", "cluster_status", "read_status"]


@attrs.frozen(slots=True)
class WorkerStatus:
    """One live worker.

    Attributes:
        worker_id: Its id.
        load: The sessions it hosts (as of its last heartbeat, plus the placements since).
        host: Its host name.
        pid: Its process id.
        started_at: Unix time it started.
        expires_in: Seconds until it counts as dead unless its heartbeat comes.
        keys: The keys placed on it, with their placement's epoch.
    """

    worker_id: str
    load: int
    host: str
    pid: int
    started_at: float
    expires_in: float
    keys: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return attrs.asdict(self)


@attrs.frozen(slots=True)
class ClusterStatus:
    """The cluster now.

    Attributes:
        workers: The live workers, by id.
        orphans: Keys placed on a worker that is no longer alive (their placement has not
            expired yet), with their placement.
    """

    workers: tuple[WorkerStatus, ...]
    orphans: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        return {"workers": [w.as_dict() for w in self.workers], "orphans": dict(self.orphans)}


async def read_status(conn: Connection) -> ClusterStatus:
    """The status, read through an open connection."""
    keys, client = conn.keys, conn.client
    with translating(conn.url):
        ids = sorted(text(i) for i in await client.smembers(keys.workers))
        workers: dict[str, dict[str, str]] = {}
        ttls: dict[str, int] = {}
        for worker_id in ids:
            fields = await client.hgetall(keys.worker(worker_id))
            if fields:
                workers[worker_id] = {text(k): text(v) for k, v in fields.items()}
                ttls[worker_id] = await client.pttl(keys.worker(worker_id))
        owned: dict[str, dict[str, int]] = {w: {} for w in workers}
        orphans: dict[str, str] = {}
        prefix = keys.owner("")
        pattern = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?") + "*"
        names = [name async for name in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(names), 1000):
            batch = names[start : start + 1000]
            for name, value in zip(batch, await client.mget(batch), strict=True):
                if value is None:
                    continue
                key = text(name)[len(prefix) :]
                placement = Placement.parse(value)
                if placement.worker in owned:
                    owned[placement.worker][key] = placement.epoch
                else:
                    orphans[key] = str(placement)
    return ClusterStatus(
        tuple(
            WorkerStatus(
                worker_id,
                int(fields.get("load", "0") or 0),
                fields.get("host", ""),
                int(fields.get("pid", "0") or 0),
                float(fields.get("started", "0") or 0),
                max(ttls.get(worker_id, 0), 0) / 1000,
                dict(sorted(owned[worker_id].items())),
            )
            for worker_id, fields in workers.items()
        ),
        dict(sorted(orphans.items())),
    )


async def cluster_status(url: str, *, prefix: str | None = None) -> ClusterStatus:
    """The status of the cluster on ``url`` (connects for the call).

    Raises:
        ClusterUnavailableError: Redis cannot be reached.
    """
    from ._wire import DEFAULT_PREFIX

    async with connect(url, DEFAULT_PREFIX if prefix is None else prefix) as conn:
        return await read_status(conn)
