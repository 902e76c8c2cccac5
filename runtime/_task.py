"""Running a topology: :class:`PipelineTask` (one session) and :class:`PipelineRunner`."""

from __future__ import annotations

import gc
import signal
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Sequence,
)
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import attrs
import structlog
import trio

from ._actor import CURRENT_ACTOR, Actor, port_of, push_gate_of, set_push_gate
from ._cell import Cell, register_cell_class
from ._errors import SessionStateError
from ._frames import (
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    InterruptionMarkerFrame,
    StartFrame,
)
from ._lifecycle import RUNNING
from ._mailbox import DemandMailbox, Envelope, Mailbox
from ._params import PipelineParams
from ._park import make_trap, park, settle, wake
from ._pipeline import ParallelPipeline, Pipeline, Stage, build
from ._session import Session
from ._snapshot import SessionSnapshot
from ._supervision import collapse_exception_group

__all__ = ["FrameListener", "PipelineRunner", "PipelineTask"]

#: Called with every frame that reaches an end of the topology.
FrameListener = Callable[[Frame, FrameDirection], Awaitable[None] | None]

_logger = structlog.get_logger("trouper.runtime")

#: An event that is set: what a task's own events become once set (nothing can clear one).
_SET = trio.Event()
_SET.set()

#: The parameters of a task given none (frozen: one instance serves every such task).
_DEFAULT_PARAMS = PipelineParams()

DOWNSTREAM = FrameDirection.DOWNSTREAM


class _Done:
    """Whether a task is done (or cancelling), and the one wait for it: its :meth:`run`'s.

    A ``trio.Event`` awaited for a session's whole life costs seven objects (the event, its
    set of waiters, the wait's coroutine and its abort closure) for the garbage collector to
    scan; this costs one. The run parks itself (:meth:`park`, then ``runtime._park.park`` on a
    trap whose abort function is the object itself) and :meth:`set` wakes it.
    """

    __slots__ = ("_waiter", "is_set")

    def __init__(self) -> None:
        self.is_set = False
        self._waiter: trio.lowlevel.Task | None = None

    def set(self) -> None:
        """Mark it done and wake the waiting run, if it waits."""
        self.is_set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            wake(waiter)

    def park(self) -> None:
        """The current task is about to wait (``runtime._park.park(make_trap(self))``)."""
        assert self._waiter is None, "a task's run is its only waiter"
        self._waiter = trio.lowlevel.current_task()

    def __call__(self, _: object) -> trio.lowlevel.Abort:
        """The abort function of the parked run (it is cancelled): it waits no more."""
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED


async def _wait_done(done: _Done) -> None:
    """Wait until ``done`` is set (a checkpoint if it is already)."""
    if done.is_set:
        await trio.lowlevel.checkpoint()
        return
    done.park()
    settle(await park(make_trap(done)))


class _Edge(Actor[Frame]):
    """The task's own first (source) and last (sink) actors; their cell is an
    :class:`_EdgeCell`."""

    accepts = ()

    def __init__(self, task: PipelineTask, *, sink: bool) -> None:
        super().__init__(name=f"{task.name}:{'sink' if sink else 'source'}")
        #: The task whose end this is (frames reaching it go to ``task._reached_end``, and
        #: at the sink a downstream data frame to ``task._reached_end_now``: the task, not
        #: bound methods, is kept, fewer objects per edge).
        self.task = task
        self.sink = sink
        #: The cell running the edge, once spawned.
        self.cell: _EdgeCell | None = None

    def running_cell(self) -> _EdgeCell:
        """The edge's cell (the task is running)."""
        assert self.cell is not None
        return self.cell


@attrs.define(eq=False)
class _EdgeMailbox(DemandMailbox):
    """The mailbox of a task's end: its cell is passive (no task of its own), so a data frame
    queued here asks the cell to start a task serving the lane (its ``server``)."""

    cell: _EdgeCell | None = None


@attrs.define(eq=False)
class _SinkMailbox(_EdgeMailbox):
    """The sink's mailbox: downstream data frames skip the queue and the sink's task, and are
    handed to the task's listeners in the task of the stage that pushed them (one task switch
    less per frame at the output end, where nothing is left to wait for).

    Everything else is queued as usual: system frames (their own task, as before), the
    ``EndFrame`` (it stops the sink), and anything arriving before the sink has started or
    while it stops (and, so that order is kept, while such a frame is still queued).

    A frame handed over inline is handed over by :meth:`try_put_data` itself, so the sender
    needs no coroutine for it (one per frame per stage: ``deliver``, ``put_data`` and the
    task's ``_reached_end`` were three): the listeners are called there. Only when one of
    them returns an awaitable does the sender's ``put_data`` await the rest; a sender that
    cannot wait (a synchronous handler: ``try_put_data(..., nowait=True)``) leaves the rest
    to the sink's own task instead.
    """

    # The envelope being handed over and what is left of it to await (see try_put_data).
    _rest: tuple[Envelope, Coroutine[Any, Any, None]] | None = None

    def try_put_data(self, envelope: Envelope, nowait: bool = False) -> bool:
        """Hand a downstream data frame to the listeners at once (see the class docs), else
        queue it as :class:`Mailbox` does. When a listener returns an awaitable: the rest of
        the handing over is left to the sender's ``put_data`` (``False``), or with ``nowait``
        (the sender cannot wait), the envelope is queued with it for the sink's own task (the
        frames after it queue behind it), and ``True``."""
        rest = self._rest
        if rest is not None and rest[0] is envelope:
            return False  # handed over already: the sender's put_data awaits the rest
        cell = self.cell
        frame = envelope.frame
        if (
            cell is None
            or envelope.direction is not DOWNSTREAM
            or type(frame) is EndFrame
            or cell.lifecycle.state is not RUNNING
            or self.closed
            or self._data  # never overtake a frame still queued from before the start
        ):
            return super().try_put_data(envelope)
        if envelope.turn < cell.core.turn and frame.interruptible and not envelope.uninterruptible:
            self._dropped_stale += 1  # pushed by a stage the interruption has not reached yet
            return True
        self._delivered += 1
        left = cell.task._reached_end_now(frame)
        if left is None:
            return True
        if not nowait:
            self._rest = (envelope, left)
            return False
        # Queued for the sink's task (the lane was empty), marked uninterruptible: what the
        # listeners began is finished, not dropped as stale.
        queued = Envelope(frame, envelope.direction, envelope.turn, None, True)
        self._rest = (queued, left)
        super().put_data_unbounded(queued)
        return True

    async def put_data(self, envelope: Envelope) -> None:
        rest = self._rest
        if rest is not None and rest[0] is envelope:
            self._rest = None
            await rest[1]
            return
        await super().put_data(envelope)

    def take_rest(self, envelope: Envelope) -> Coroutine[Any, Any, None] | None:
        """What is left to await of the handing over of ``envelope`` (queued by
        :meth:`try_put_data` with ``nowait``), if anything."""
        rest = self._rest
        if rest is None or rest[0] is not envelope:
            return None
        self._rest = None
        return rest[1]

    def close(self) -> list[Envelope]:
        """As :meth:`Mailbox.close`; an envelope queued by ``try_put_data(..., nowait=True)``
        has what was left of its handing over closed (abandoned, as a sender's await of it
        would be)."""
        left = super().close()
        rest = self._rest
        if rest is not None and any(envelope is rest[0] for envelope in left):
            self._rest = None
            rest[1].close()
        return left


class _EdgeCell(Cell):
    """Runs an :class:`_Edge`: frames reaching the end of the topology go to the task. It is
    passive: no task of its own, each of its lanes served by a task while frames are queued
    (most of the sink's data frames are handed over without being queued, and the source
    sees frames only at the start, the end and when one travels upstream to the end)."""

    __slots__ = ("task",)
    passive = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        actor = self.actor
        assert isinstance(actor, _Edge)
        self.task = actor.task
        actor.cell = self

    @property
    def sink(self) -> bool:
        """Whether this is the task's output end."""
        actor = self.actor
        assert isinstance(actor, _Edge)
        return actor.sink

    def make_mailbox(self, capacity: int) -> Mailbox:
        if not self.sink:
            return _EdgeMailbox(capacity, self.name, server=self, cell=self)
        return _SinkMailbox(capacity, self.name, server=self, cell=self)

    async def forward(self, envelope: Envelope) -> bool:
        direction = envelope.direction
        if direction is not None and (direction is DOWNSTREAM) == self.sink:
            frame = envelope.frame
            mailbox = self.mailbox
            rest = mailbox.take_rest(envelope) if isinstance(mailbox, _SinkMailbox) else None
            if rest is not None:
                await rest  # handed over already (try_put_data with nowait): the rest of it
                return False
            await self.task._reached_end(frame, direction)
            return type(frame) is EndFrame
        ended = await super().forward(envelope)
        # The source stays up after passing the EndFrame on, until the session closes:
        # frames still travelling upstream while the pipeline drains (errors) must reach the
        # task.
        return ended and self.sink


register_cell_class(_Edge, _EdgeCell)


class PipelineTask:
    """Runs one topology as one session.

    ``await task.run()`` returns when the session is over (after :meth:`end`, :meth:`cancel`,
    an idle timeout or a fatal error) and guarantees that nothing of it is still running.
    For embedding, ``async with task:`` runs it in the background of the block and ends it
    gracefully when the block is left (cancels it if the block raised). Errors come out as
    from ``run()``: the block's own exception or the actor's escalated crash, as itself.

    Input given before the task has started is never lost: frames queued with
    :meth:`queue_frame` and frames pushed into one of its stages from outside (a transport's
    ``send_text``, say) are held and delivered once every stage has started, in the order
    they were given, each from where it was given; :meth:`wait_started` waits for that
    moment. Pushing into a stage of a task that has finished raises
    :class:`~runtime.SessionStateError`.

    Args:
        pipeline: The topology (a single actor is accepted too).
        params: How to run it.
        name: Session name for the logs.
        on_downstream: Called with every frame that leaves the output end. Data frames are
            handed over in the task of the last stage that pushed them (no extra hop): keep
            the listener quick; an exception from it is raised in that stage.
        on_upstream: Called with every frame that reaches the input end going upstream
            (errors, for instance).
    """

    def __init__(
        self,
        pipeline: Stage,
        params: PipelineParams | None = None,
        *,
        name: str | None = None,
        on_downstream: FrameListener | None = None,
        on_upstream: FrameListener | None = None,
    ) -> None:
        if not isinstance(pipeline, Actor | Pipeline | ParallelPipeline):
            raise TypeError(
                "PipelineTask runs a Pipeline, a ParallelPipeline or a single Actor; got "
                f"{type(pipeline).__name__} (wrap a list of stages in Pipeline([...]))"
            )
        self.pipeline = pipeline if not isinstance(pipeline, Actor) else Pipeline([pipeline])
        self.params = params or _DEFAULT_PARAMS
        self.name = name or f"task-{id(self):x}"
        # Tuples (the empty one is shared), not a dict of lists: three objects fewer per
        # session for the garbage collector to scan.
        self._on_downstream: tuple[FrameListener, ...] = (on_downstream,) if on_downstream else ()
        self._on_upstream: tuple[FrameListener, ...] = (on_upstream,) if on_upstream else ()
        self._session: Session | None = None
        self._source = _Edge(self, sink=False)
        self._sink = _Edge(self, sink=True)
        # Input given before the task was ready: (frame, direction, stage it was pushed from,
        # or None for queue_frame), in the order it was given.
        self._pending: list[tuple[Frame, FrameDirection, Actor[Any] | None]] = []
        # What the task's own waits wait for, each set at the latest when the task is done
        # (one event per wait, not a nursery racing two events: fewer tasks per start). Once
        # set, an event gives way to the shared ``_SET`` (two objects fewer each, for the
        # whole life of a running session); the CancelFrame's is made when it is awaited.
        self._started = trio.Event()  # the StartFrame reached the sink (or the task is done)
        # ... and the input held until then has been delivered (or the task is done)
        self._ready_or_done = trio.Event()
        self._ready = False
        self._done = _Done()
        self._cancel_reached: trio.Event | None = None  # a CancelFrame reached the sink
        self._cancelling = False
        self._cancel_reason: str | None = None
        self._ran = False
        self._finished = False
        self._last_activity = 0.0
        # Only an idle timeout needs the clock read on every frame at the ends.
        self._idle = self.params.idle_timeout_secs is not None
        self.errors: list[ErrorFrame] = []
        # Pushes into the stages from outside wait for the start (see _gate_push).
        self._stages: tuple[Actor[Any], ...] = self.pipeline.segment().actors
        for actor in self._stages:
            if port_of(actor) is None:
                set_push_gate(actor, self._gate_push)

    # ----------------------------------------------------------------- listeners

    def add_listener(self, listener: FrameListener, direction: FrameDirection) -> None:
        """Call ``listener`` for every frame that reaches the end of ``direction``."""
        if direction is FrameDirection.DOWNSTREAM:
            self._on_downstream = (*self._on_downstream, listener)
        else:
            self._on_upstream = (*self._on_upstream, listener)

    # ----------------------------------------------------------------- state

    @property
    def session(self) -> Session:
        """The running session (graph API: spawn, link, remove, snapshot)."""
        if self._session is None:
            raise SessionStateError(f"task {self.name!r} is not running")
        return self._session

    def has_finished(self) -> bool:
        """Whether :meth:`run` has completed."""
        return self._finished

    def has_started(self) -> bool:
        """Whether the task has started (see :meth:`wait_started`)."""
        return self._ready

    def was_cancelled(self) -> bool:
        """Whether the task was cancelled before it finished (:meth:`cancel`, called by the
        application, a fatal error or the idle timeout): true from that call on, while the
        topology is torn down and after."""
        return self._cancelling

    async def wait_started(self) -> None:
        """Wait until the task has started: every stage has handled the ``StartFrame`` and
        the input given before (:meth:`queue_frame`, frames pushed into a stage) has been
        sent on, in order. Returns at once if it has started (even if it has finished since).

        Input may be given before that (it is held, see the class docs); wait for this to
        know that the session is up, e.g. before reading :attr:`session`.

        Raises:
            SessionStateError: the task ended before it started (cancelled first, a start
                that timed out, a crash while starting).
        """
        if not self._ready and not self._finished:
            await self._ready_or_done.wait()
        else:
            await trio.lowlevel.checkpoint()
        if not self._ready:
            reason = f" ({self._cancel_reason})" if self._cancel_reason else ""
            raise SessionStateError(
                f"task {self.name!r} ended before it started{reason}: it took no input; "
                "create a new PipelineTask and run it"
            )

    def _gate_push(self, actor: Actor[Any], frame: Frame, direction: FrameDirection) -> bool:
        """Installed on the stages until the task is ready (and again once it has finished):
        ``True`` when a push into ``actor`` from outside the session was held for the start."""
        if self._finished:
            raise SessionStateError(
                f"task {self.name!r} has finished; its stage {actor.name!r} takes no more "
                "frames (create a new PipelineTask with new stages)"
            )
        if self._ready or CURRENT_ACTOR.get() is actor:
            return False  # ready, or the actor's own handler (on_start): nothing to hold
        if not isinstance(frame, Frame):
            raise TypeError(f"push_frame takes a Frame, got {type(frame).__name__}")
        self._pending.append((frame, direction, actor))
        return True

    def snapshot(self) -> SessionSnapshot:
        """Live actors, mailbox depths and in-flight work (see :meth:`Session.snapshot`)."""
        return self.session.snapshot()

    # ----------------------------------------------------------------- control

    async def queue_frame(
        self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM
    ) -> None:
        """Feed ``frame`` into the topology (downstream at the input end, upstream at the output
        end). Before the session has started, frames are kept and sent once it has.

        Waits while the first stage's data lane is full (backpressure).
        """
        if not isinstance(frame, Frame):
            raise TypeError(f"queue_frame takes a Frame, got {type(frame).__name__}")
        if self._finished:
            raise SessionStateError(f"task {self.name!r} has finished; it takes no more frames")
        if not self._ready:
            self._pending.append((frame, direction, None))
            return
        await self._inject(frame, direction)

    async def queue_frames(self, frames: Iterable[Frame] | AsyncIterable[Frame]) -> None:
        """Queue several frames, in order (downstream)."""
        if isinstance(frames, AsyncIterable):
            async for frame in frames:
                await self.queue_frame(frame)
        else:
            for frame in frames:
                await self.queue_frame(frame)

    async def _inject(self, frame: Frame, direction: FrameDirection) -> None:
        if self._idle:
            self._last_activity = trio.current_time()
        cell = (self._source if direction is FrameDirection.DOWNSTREAM else self._sink).cell
        assert cell is not None
        envelope = cell.try_push(frame, direction)  # stamps the turn; applies an interruption
        if envelope is not None:
            await cell.deliver(envelope)

    async def end(self, reason: str | None = None) -> None:
        """Finish gracefully: an ``EndFrame`` follows the queued frames, then everything stops."""
        await self.queue_frame(EndFrame(reason))

    stop_when_done = end

    def cancel(self, reason: str | None = None) -> None:
        """Stop now: a ``CancelFrame`` overtakes queued data; what is left after
        ``cancel_timeout_secs`` is torn down. Safe to call at any time, more than once."""
        if self._finished or self._cancelling:
            return
        self._cancelling = True
        self._cancel_reason = reason
        self._mark_done()

    def _mark_done(self) -> None:
        """The task is done (or cancelling): wake every wait of its own."""
        self._done.set()
        self._started.set()
        self._ready_or_done.set()
        self._started = self._ready_or_done = _SET

    @property
    def _log(self) -> Any:
        """The session's logger while it runs (bound with the task's name: one logger per
        session, not two), else one bound here."""
        session = self._session
        return session.log if session is not None else _logger.bind(session=self.name)

    def interrupt(self, reason: str | None = None) -> InterruptionFrame:
        """Interrupt the current turn at once, across all actors, and send an
        ``InterruptionFrame`` through the topology so stages can react."""
        session = self.session
        frame = session.interrupt(reason)
        if self._pending:
            # Input held for the start belongs to the interrupted turn, like input queued in a
            # mailbox: the interruption drops what is interruptible of it.
            self._pending[:] = [item for item in self._pending if not item[0].interruptible]
        cell = self._source.cell
        if cell is not None and not cell.mailbox.closed:
            cell.mailbox.put_system(Envelope(frame, FrameDirection.DOWNSTREAM, session.turn))
        return frame

    # ----------------------------------------------------------------- ends

    def _reached_end_now(self, frame: Frame) -> Coroutine[Any, Any, None] | None:
        """:meth:`_reached_end` for a downstream data frame that the sink hands over inline
        (never a lifecycle frame), without a coroutine: the listeners are called here, and
        if one returns an awaitable, that and the listeners after it are returned to be
        awaited."""
        if type(frame) is InterruptionMarkerFrame:
            return None  # the runtime's bookkeeping, not the application's
        if self._idle:
            self._last_activity = trio.current_time()
        listeners = self._on_downstream
        for i, listener in enumerate(listeners):
            result = listener(frame, DOWNSTREAM)
            if result is not None:
                return self._rest_of_listeners(result, frame, listeners[i + 1 :])
        return None

    @staticmethod
    async def _rest_of_listeners(
        first: Awaitable[None], frame: Frame, listeners: Sequence[FrameListener]
    ) -> None:
        await first
        for listener in listeners:
            result = listener(frame, DOWNSTREAM)
            if result is not None:
                await result

    async def _reached_end(self, frame: Frame, direction: FrameDirection) -> None:
        cls = type(frame)
        if cls is InterruptionMarkerFrame:
            return  # the runtime's bookkeeping, not the application's
        if self._idle:
            self._last_activity = trio.current_time()
        if direction is FrameDirection.DOWNSTREAM:
            if cls is StartFrame:
                self._started.set()
            elif cls is EndFrame:
                self._mark_done()
            elif cls is CancelFrame:
                if self._cancel_reached is None:
                    self._cancel_reached = _SET
                else:
                    self._cancel_reached.set()
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame)
            self._log.warning(
                "pipeline error",
                error=frame.error,
                category=str(frame.category),
                fatal=frame.fatal,
                source=frame.source,
            )
            if frame.fatal:
                self.cancel("fatal error")
        listeners = self._on_downstream if direction is DOWNSTREAM else self._on_upstream
        for listener in listeners:
            result = listener(frame, direction)
            if result is not None:
                await result

    # ----------------------------------------------------------------- running

    async def run(self) -> None:
        """Run the session until it ends; re-raises an actor's escalated crash.

        Raises:
            SessionStateError: the task was run before (a task runs once).
            trio.TooSlowError: the ``StartFrame`` did not cross the topology within
                ``start_timeout_secs``.
            RestartIntensityExceeded: an actor crashed more often than its policy allows
                (``__cause__`` is the last crash).
            Exception: an actor's crash without a restart policy, as itself.

        Cancellation: tears the session down (each ``on_stop`` still runs, time-boxed) and
        returns only when nothing of it is left.
        """
        if self._ran:
            raise SessionStateError(f"task {self.name!r} already ran; create a new PipelineTask")
        self._ran = True
        p = self.params
        try:
            async with Session.open(
                self.name,
                mailbox_size=p.mailbox_size,
                stop_timeout_secs=p.stop_timeout_secs,
                params=p,
            ) as session:
                self._session = session
                self._build(session)
                source = self._source.running_cell()
                source.mailbox.put_system(Envelope(StartFrame(params=p), DOWNSTREAM, 0))
                self._log.info("pipeline started", actors=len(self._stages))
                with trio.fail_after(p.start_timeout_secs):
                    await self._started.wait()  # (set too if the task is done first)
                self._started = _SET
                if not self._cancelling:
                    self._last_activity = trio.current_time()
                    await self._deliver_pending(session)
                    if p.idle_timeout_secs is None:
                        # No watcher, no nursery: a running session keeps no objects for
                        # a timeout it does not have (and no coroutine for this wait).
                        done = self._done
                        if not done.is_set:
                            done.park()
                            settle(await park(make_trap(done)))
                    else:
                        async with trio.open_nursery() as watchers:
                            watchers.start_soon(self._idle_monitor, p.idle_timeout_secs)
                            await _wait_done(self._done)
                            watchers.cancel_scope.cancel()
                if self._cancelling:
                    if not source.mailbox.closed:
                        frame = CancelFrame(self._cancel_reason)
                        source.mailbox.put_system(Envelope(frame, DOWNSTREAM, session.turn))
                    if self._cancel_reached is None:
                        self._cancel_reached = trio.Event()
                    with trio.move_on_after(p.cancel_timeout_secs):
                        await self._cancel_reached.wait()
                self._log.info("pipeline finished", cancelled=self._cancelling)
        finally:
            self._finished = True
            self._mark_done()
            for actor in self._stages:
                if push_gate_of(actor) is None:
                    set_push_gate(actor, self._gate_push)  # refuses pushes from now on
            if self._pending:
                # Never silently: the input given before a start that did not happen.
                _logger.warning(
                    "input dropped: the task ended before it started",
                    session=self.name,
                    frames=len(self._pending),
                    kinds=sorted({type(f).__name__ for f, _, _ in self._pending}),
                )
                self._pending.clear()

    def _build(self, session: Session) -> None:
        """Spawn and link the topology between the task's two ends. (Not in :meth:`run`: the
        segment would live as long as the session, in its frame.)"""
        session.spawn(self._source, start=False)
        seg = build(session, self.pipeline, start=False)
        session.spawn(self._sink, start=False)
        for head in seg.heads or (self._sink,):
            session.link(self._source, head)
        for tail in seg.tails:
            session.link(tail, self._sink)

    async def _deliver_pending(self, session: Session) -> None:
        """Deliver the input held until the start, in order; input given meanwhile joins the
        queue. Then the task is ready: the stages stop holding pushes."""
        pending = self._pending
        while pending:
            frame, direction, actor = pending.pop(0)
            if actor is None:
                await self._inject(frame, direction)
                continue
            # Pushed into a stage from outside: sent on from it, as push_frame would.
            cell = port_of(actor)
            assert cell is not None
            envelope = cell.try_push(frame, direction)
            if envelope is not None:
                await cell.deliver(envelope)
        self._ready = True
        self._ready_or_done.set()
        self._ready_or_done = _SET
        for stage in self._stages:
            if push_gate_of(stage) == self._gate_push:
                set_push_gate(stage, None)

    async def _idle_monitor(self, idle_secs: float) -> None:
        while True:
            deadline = self._last_activity + idle_secs
            now = trio.current_time()
            if now >= deadline:
                self._log.info("idle timeout", idle_timeout_secs=idle_secs)
                self.cancel("idle timeout")
                return
            await trio.sleep(deadline - now)

    # ----------------------------------------------------------------- embedding

    @asynccontextmanager
    async def _background(self) -> AsyncIterator[PipelineTask]:
        error: BaseException | None = None
        raised: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.run)
                await self._ready_or_done.wait()
                try:
                    yield self
                except BaseException as exc:
                    raised = exc
                    self.cancel("block raised")
                    raise
                else:
                    if not self._finished and not self._cancelling:
                        await self.end()
        except BaseExceptionGroup as group:
            # Like run(): the block's or the actor's own exception, not a group of one; a
            # cancellation from outside goes on as the block's own Cancelled.
            error = collapse_exception_group(group, raised)
            raised = None
            if error is group:
                error = None
                raise
        if error is not None:
            try:
                raise error
            finally:  # no cycle through this frame (the traceback holds it)
                error = None

    async def __aenter__(self) -> PipelineTask:
        self._cm = self._background()
        return await self._cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._cm.__aexit__(exc_type, exc, tb)


async def _freeze_when_started(tasks: tuple[PipelineTask, ...]) -> bool:
    """``gc.freeze()`` once every task has started (after a collection, so that no garbage
    is frozen); whether it froze (not when a task ended before starting)."""
    for task in tasks:
        try:
            await task.wait_started()
        except SessionStateError:
            return False
    gc.collect()
    gc.freeze()
    return True


@attrs.define
class PipelineRunner:
    """Runs tasks; optionally turns SIGINT/SIGTERM into a cancel of every task it runs.

    Args:
        handle_sigint: Cancel the tasks on Ctrl-C (main thread only).
        handle_sigterm: Cancel the tasks on SIGTERM.
        freeze_gc_after_start: Pause the cyclic garbage collector while the tasks start;
            once every task has started, collect the garbage and ``gc.freeze()`` what is
            alive (the sessions' actors, cells, mailboxes and trio tasks), then
            ``gc.unfreeze()`` when the tasks have finished. The collector then neither
            rescans the growing heap while thousands of sessions start (about half of the
            CPU of starting 2,000 quick-start sessions) nor rescans those objects at each of
            its full collections while the sessions run (about half of the framework's CPU
            over bare httpx in a 500-session turn; ``docs/benchmarks.md``). It is a
            process-wide switch: everything alive at that moment is frozen, other libraries'
            objects too, and cyclic garbage among them is only reclaimed after the unfreeze
            (reference counting still frees the rest). Meant for a batch of long-lived
            sessions started together in a process that runs little else.
    """

    handle_sigint: bool = False
    handle_sigterm: bool = False
    freeze_gc_after_start: bool = False

    async def run(self, *tasks: PipelineTask) -> None:
        """Run ``tasks`` concurrently until all have finished.

        Raises:
            Exception: a task's escalated crash, as itself (an exception group when several
                tasks crashed); the other tasks are cancelled.

        Cancellation: cancels every task (each tears its session down) and waits for them.
        """
        signals = [
            s
            for s, on in (
                (signal.SIGINT, self.handle_sigint),
                (signal.SIGTERM, self.handle_sigterm),
            )
            if on
        ]
        error: BaseException | None = None
        frozen = False
        paused = self.freeze_gc_after_start and gc.isenabled()
        if paused:
            gc.disable()
        try:
            async with trio.open_nursery() as nursery:
                if signals:
                    nursery.start_soon(self._signals, signals, tasks)
                async with trio.open_nursery() as inner:
                    for task in tasks:
                        inner.start_soon(task.run)
                    if self.freeze_gc_after_start:
                        try:
                            frozen = await _freeze_when_started(tasks)
                        finally:
                            if paused:
                                paused = False
                                gc.enable()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A task's escalated crash is raised as itself (a group only for several).
            error = collapse_exception_group(group)
            if error is group:
                raise
        finally:
            if paused:
                gc.enable()
            if frozen:
                gc.unfreeze()
        if error is not None:
            raise error

    async def _signals(
        self, signals: list[signal.Signals], tasks: tuple[PipelineTask, ...]
    ) -> None:
        with trio.open_signal_receiver(*signals) as received:
            async for _ in received:
                for task in tasks:
                    task.cancel("signal")
