"""A worker of the cluster: hosts the sessions of the keys placed on it.

The worker announces itself and its load (a heartbeat that also renews its placements),
reads its inbox stream, starts a key's session on the first command of a placement, feeds it
the frames sent to the key, interrupts it on request, writes its output to the key's output
stream (fenced by the placement: a worker whose placement expired cannot write), and stops
it after an idle timeout, giving the placement up.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio

from .. import serialization
from .._errors import SessionStateError
from .._frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    StartFrame,
)
from .._task import PipelineTask
from ..logging import get_logger
from ._wire import (
    DEFAULT_PREFIX,
    ClusterUnavailableError,
    Connection,
    Placement,
    connect,
    new_worker_id,
    text,
    url_repr,
)

__all__ = ["ClusterWorker", "SessionFactory", "forward_by_default"]

#: Builds the session of a key: an (unstarted) task; the worker runs it.
SessionFactory = Callable[[str], Awaitable[PipelineTask]]

_log = get_logger("trouper.runtime.cluster")


def forward_by_default(frame: Frame, direction: FrameDirection) -> bool:
    """Which output reaches the key's subscribers by default: every frame leaving the
    output end except the lifecycle frames (start, end, cancel, interruption: an
    interruption is acknowledged instead), and the errors reaching the input end."""
    if direction is FrameDirection.UPSTREAM:
        return isinstance(frame, ErrorFrame)
    return not isinstance(frame, StartFrame | EndFrame | CancelFrame | InterruptionFrame)


def _turn(task: PipelineTask) -> int | None:
    """The session's current turn (``None`` before it runs or after it ended)."""
    try:
        return task.session.turn
    except SessionStateError:
        return None


@attrs.define(eq=False)
class _Entry:
    kind: str
    generation: int
    seq: int
    request: str = ""
    data: str = ""


@attrs.define(eq=False)
class _Hosted:
    """One key served by this worker."""

    key: str
    placement: Placement
    send: trio.MemorySendChannel[tuple[str, dict[str, str]]]
    receive: trio.MemoryReceiveChannel[tuple[str, dict[str, str]]]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    last_active: float = 0.0
    generation: int = 0
    seq: int = 0
    pending: deque[_Entry] = attrs.Factory(deque)
    wake: trio.Event = attrs.Factory(trio.Event)
    closing: bool = False
    fenced: bool = False
    session: str = ""

    def enqueue(self, kind: str, *, request: str = "", data: str = "") -> None:
        self.seq += 1
        self.pending.append(_Entry(kind, self.generation, self.seq, request, data))
        self.wake.set()


@attrs.define(eq=False)
class ClusterWorker:
    """A process's share of the cluster: it hosts the sessions of the keys placed on it.

    Run it in a nursery (``await nursery.start(worker.run)``: returns once the worker has
    announced itself) or with ``async with worker:``; :meth:`stop` ends it gracefully (each
    session gets an ``EndFrame``, its placement is given up, the worker signs off). A worker
    that dies without that loses its placements when their lease expires (``lease_ttl``):
    the next command for each of its keys places it on a live worker.

    Args:
        url: The Redis server (``redis://host:port/db``, ``rediss://``, ``unix://``).
        factory: ``await factory(key)`` builds the key's session (a ``PipelineTask`` not yet
            run), on the first command of a placement.
        prefix: Prepended to every Redis key (the clients must use the same).
        worker_id: This worker's id (default: host, process id and a random part).
        lease_ttl: Seconds a placement (and the worker's liveness) lasts unless the
            heartbeat renews it (every third of it): how long a dead worker's keys wait.
        idle_timeout_secs: A session with no command and no output for this long is stopped.
        stop_timeout_secs: How long a session may take to end before it is cancelled.
        forward: Which frames reach the subscribers (default :func:`forward_by_default`).
        key_field: The name of the key in log lines (a layer names its entities).
        output_maxlen: Entries kept per output stream (approximate).
        output_ttl_secs: An output stream with no new entry for this long is deleted.
    """

    url: str = attrs.field(repr=url_repr)  # never the password in a repr
    factory: SessionFactory
    prefix: str = DEFAULT_PREFIX
    worker_id: str = attrs.field(factory=new_worker_id)
    lease_ttl: float = 10.0
    idle_timeout_secs: float = 300.0
    stop_timeout_secs: float = 10.0
    forward: Callable[[Frame, FrameDirection], bool] = forward_by_default
    key_field: str = "entity"
    output_maxlen: int = 10_000
    output_ttl_secs: float = 3600.0
    _sessions: dict[str, _Hosted] = attrs.field(factory=dict, init=False)
    _stopping: trio.Event = attrs.field(factory=trio.Event, init=False)
    _conn: Connection | None = attrs.field(default=None, init=False)
    _started_at: float = attrs.field(default=0.0, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _background: trio.Nursery | None = attrs.field(default=None, init=False)
    _drained: trio.Event = attrs.field(factory=trio.Event, init=False)
    _cm: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        for name in ("lease_ttl", "idle_timeout_secs", "stop_timeout_secs", "output_ttl_secs"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")

    # ----------------------------------------------------------------- public

    @property
    def keys(self) -> dict[str, int]:
        """The keys this worker serves now, with their placement's epoch."""
        return {key: hosted.placement.epoch for key, hosted in self._sessions.items()}

    def stop(self) -> None:
        """End the worker gracefully (see the class documentation). Idempotent."""
        self._stopping.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop` (or cancellation: then the placements expire by
        themselves).

        Raises:
            ClusterUnavailableError: Redis cannot be reached at the start.
        """
        self._started_at = time.time()
        log = _log.bind(worker=self.worker_id)
        async with connect(self.url, self.prefix, max_connections=64) as conn:
            self._conn = conn
            try:
                await self._heartbeat()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._heartbeat_loop)
                    nursery.start_soon(self._idle_loop)
                    async with trio.open_nursery() as reader:
                        reader.start_soon(self._inbox_loop)
                        log.info("worker started", lease_ttl=self.lease_ttl)
                        task_status.started()
                        await self._stopping.wait()
                        reader.cancel_scope.cancel()
                    for hosted in list(self._sessions.values()):
                        hosted.send.send_nowait(("stop", {}))
                    if self._sessions:
                        with trio.move_on_after(self.stop_timeout_secs + 1):
                            await self._drained.wait()
                    nursery.cancel_scope.cancel()
                with trio.move_on_after(2, shield=True):
                    await conn.script(
                        "SIGN_OFF", [conn.keys.workers], [self.prefix, self.worker_id]
                    )
                log.info("worker stopped")
            finally:
                self._conn = None
                self._nursery = None

    async def __aenter__(self) -> ClusterWorker:
        """Run the worker in the background of the block (it has announced itself)."""
        self._cm = trio.open_nursery()
        nursery = await self._cm.__aenter__()
        self._background = nursery
        await nursery.start(self.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Stop the worker gracefully and wait for it."""
        self.stop()
        await self._cm.__aexit__(*exc_info)

    # ----------------------------------------------------------------- heartbeat

    async def _heartbeat(self) -> None:
        conn = self._conn
        assert conn is not None
        pairs: list[str] = []
        for key, hosted in self._sessions.items():
            pairs += [key, str(hosted.placement)]
        lost = await conn.script(
            "HEARTBEAT",
            [conn.keys.workers],
            [
                self.prefix,
                self.worker_id,
                max(1, math.ceil(self.lease_ttl * 1000)),
                len(self._sessions),
                socket.gethostname(),
                os.getpid(),
                f"{self._started_at:.3f}",
                *pairs,
            ],
        )
        for key in lost or ():
            gone = self._sessions.get(text(key))
            if gone is not None:
                _log.warning(
                    "placement lost; the session is stopped",
                    worker=self.worker_id,
                    **{self.key_field: gone.key},
                    epoch=gone.placement.epoch,
                )
                gone.fenced = True
                gone.scope.cancel()

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.lease_ttl / 3)
            try:
                await self._heartbeat()
            except ClusterUnavailableError as exc:
                _log.warning("heartbeat failed; retrying", worker=self.worker_id, error=str(exc))

    async def _idle_loop(self) -> None:
        period = min(self.idle_timeout_secs / 4, 1.0)
        while True:
            await trio.sleep(period)
            now = trio.current_time()
            for hosted in list(self._sessions.values()):
                if now - hosted.last_active >= self.idle_timeout_secs and not hosted.pending:
                    hosted.last_active = math.inf  # asked once
                    hosted.send.send_nowait(("stop", {}))

    # ----------------------------------------------------------------- inbox

    async def _inbox_loop(self) -> None:
        conn = self._conn
        assert conn is not None
        inbox = conn.keys.inbox(self.worker_id)
        last = "0-0"
        while True:
            try:
                reply = await conn.client.xread({inbox: last}, count=256, block=1000)
            except Exception as exc:  # the driver's errors: retry after a pause
                _log.warning("reading the inbox failed", worker=self.worker_id, error=str(exc))
                await trio.sleep(0.5)
                continue
            done: list[str] = []
            for entries in (reply or {}).values():
                for entry in entries:
                    last = text(entry.identifier)
                    done.append(last)
                    fields = {text(k): text(v) for k, v in entry.field_values.items()}
                    self._dispatch(fields)
            if done:  # handled: the inbox keeps only what is still to be read
                try:
                    await conn.client.xdel(inbox, done)
                except Exception as exc:  # the driver's errors: the trim is only tidiness
                    _log.info("trimming the inbox failed", worker=self.worker_id, error=str(exc))

    def _dispatch(self, fields: dict[str, str]) -> None:
        key, kind = fields.get("key", ""), fields.get("kind", "")
        try:
            epoch = int(fields.get("epoch", ""))
        except ValueError:
            _log.warning("malformed command dropped", worker=self.worker_id, command=kind)
            return
        current = self._sessions.get(key)
        if current is not None and epoch < current.placement.epoch:
            return  # for an older placement of the key: its sender re-places it
        if current is not None and epoch == current.placement.epoch:
            hosted = current
        else:
            if current is not None:
                current.fenced = True
                current.scope.cancel()
            assert self._nursery is not None
            send, receive = trio.open_memory_channel[tuple[str, dict[str, str]]](math.inf)
            hosted = _Hosted(key, Placement(epoch, self.worker_id), send, receive)
            hosted.last_active = trio.current_time()
            self._sessions[key] = hosted
            self._nursery.start_soon(self._serve, hosted)
        hosted.last_active = trio.current_time()
        hosted.send.send_nowait((kind, fields))

    # ----------------------------------------------------------------- one session

    async def _serve(self, hosted: _Hosted) -> None:
        conn = self._conn
        assert conn is not None
        bound = {
            self.key_field: hosted.key,
            "worker": self.worker_id,
            "epoch": hosted.placement.epoch,
        }
        ending = "stopped"
        with structlog.contextvars.bound_contextvars(**bound):
            try:
                with hosted.scope:
                    owner = await conn.client.get(conn.keys.owner(hosted.key))
                    if owner is None or text(owner) != str(hosted.placement):
                        _log.info("command for a placement that is not ours dropped")
                        hosted.fenced = True
                        return
                    ending = await self._run_session(hosted)
            except Exception as exc:
                ending = f"lost: {type(exc).__name__}: {exc}"
                _log.error("session crashed", error=ending)
            finally:
                if self._sessions.get(hosted.key) is hosted:
                    del self._sessions[hosted.key]
                    if not self._sessions and self._stopping.is_set():
                        self._drained.set()
                hosted.send.close()
                hosted.receive.close()
                # A worker cancelled from outside (not stopped) leaves its placements to
                # expire, as a dead one would: nothing can be written from a cancelled scope.
                if not hosted.fenced and trio.current_effective_deadline() != -math.inf:
                    with trio.move_on_after(2, shield=True):
                        await self._finish(hosted, ending)

    async def _run_session(self, hosted: _Hosted) -> str:
        task = await self.factory(hosted.key)
        hosted.session = task.name
        log = _log.bind(session=task.name)

        def listener(direction: FrameDirection) -> Callable[[Frame, FrameDirection], None]:
            def on_frame(frame: Frame, _: FrameDirection) -> None:
                if not self.forward(frame, direction):
                    return
                try:
                    data = serialization.dumps(frame)
                except serialization.SerializationError as exc:
                    log.warning("output frame not serializable; dropped", error=str(exc))
                    return
                hosted.last_active = trio.current_time()
                hosted.enqueue("frame", data=data)

            return on_frame

        task.add_listener(listener(FrameDirection.DOWNSTREAM), FrameDirection.DOWNSTREAM)
        task.add_listener(listener(FrameDirection.UPSTREAM), FrameDirection.UPSTREAM)
        outcome = "stopped"
        task_done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, hosted)

            async def run_task() -> None:
                nonlocal outcome
                try:
                    await task.run()
                except Exception as exc:
                    outcome = f"lost: the session crashed: {type(exc).__name__}: {exc}"
                    log.error("session crashed", error=str(exc))
                finally:
                    task_done.set()
                with contextlib.suppress(trio.ClosedResourceError):
                    hosted.send.send_nowait(("ended", {}))

            nursery.start_soon(run_task)
            log.info("session started")
            async for kind, fields in hosted.receive:
                if kind == "frames":
                    try:
                        frames = [
                            serialization.frame_from_dict(d) for d in json.loads(fields["data"])
                        ]
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("undecodable frames dropped", error=str(exc))
                        continue
                    for frame in frames:
                        await task.queue_frame(frame)
                    log.debug("frames queued", count=len(frames), turn=_turn(task))
                elif kind == "interrupt":
                    if task.has_started() and not task.has_finished():
                        task.interrupt("interrupted by a remote handle")
                    hosted.generation += 1
                    # What the interrupted turn left unsent is dropped: nothing stale after
                    # the acknowledgement.
                    hosted.pending = deque(
                        e
                        for e in hosted.pending
                        if e.kind != "frame" or e.generation >= hosted.generation
                    )
                    hosted.enqueue("ack", request=fields.get("request", ""))
                    log.info("interrupted", turn=_turn(task), generation=hosted.generation)
                elif kind in ("stop", "ended"):
                    break
            if not task.has_finished():
                with trio.move_on_after(self.stop_timeout_secs) as timer:
                    try:
                        await task.end("the session is idle or the worker stops")
                    except Exception as exc:  # it finished meanwhile
                        log.debug("ending the session", error=str(exc))
                    await task_done.wait()
                if timer.cancelled_caught:
                    task.cancel("it did not end in time")
            await task_done.wait()
            # The writer flushes what is left, then ends.
            hosted.closing = True
            hosted.wake.set()
        log.info("session stopped", outcome=outcome)
        return outcome

    async def _writer(self, hosted: _Hosted) -> None:
        while True:
            await hosted.wake.wait()
            hosted.wake = trio.Event()
            while hosted.pending:
                batch = list(hosted.pending)[:128]
                if not await self._emit(hosted, batch):
                    return
                # Entries may have been purged meanwhile: drop exactly what was written.
                written = {id(e) for e in batch}
                hosted.pending = deque(e for e in hosted.pending if id(e) not in written)
            if hosted.closing:
                return

    async def _emit(self, hosted: _Hosted, batch: list[_Entry]) -> bool:
        """Write ``batch`` (retrying while Redis is unreachable); ``False`` when fenced."""
        conn = self._conn
        assert conn is not None
        args: list[Any] = [
            str(hosted.placement),
            self.output_maxlen,
            max(1, math.ceil(self.output_ttl_secs * 1000)),
        ]
        for e in batch:
            args += [e.kind, hosted.placement.epoch, e.seq, e.generation, e.request, e.data]
        keys = [conn.keys.owner(hosted.key), conn.keys.out(hosted.key)]
        while True:
            try:
                done = await conn.script("EMIT", keys, args)
                break
            except ClusterUnavailableError as exc:
                _log.warning("writing output failed; retrying", error=str(exc))
                await trio.sleep(0.2)
        if not done:
            _log.warning("placement lost; the session is stopped")
            hosted.fenced = True
            hosted.scope.cancel()
            return False
        return True

    async def _finish(self, hosted: _Hosted, ending: str) -> None:
        """Mark the end in the output stream, then give the placement up."""
        conn = self._conn
        assert conn is not None
        hosted.seq += 1
        kind, _, reason = ending.partition(": ")
        entry = _Entry(kind if kind == "lost" else "stopped", hosted.generation, hosted.seq)
        entry.data = reason
        try:
            await self._emit(hosted, [entry])
            await conn.script("RELEASE", [conn.keys.owner(hosted.key)], [str(hosted.placement)])
        except ClusterUnavailableError as exc:
            _log.warning("giving the placement up failed", error=str(exc))
