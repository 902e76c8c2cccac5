"""The cell: what runs one actor inside a session.

A session makes a :class:`Cell` for every actor it spawns. The cell owns what the actor's
user code never touches: its mailbox, its links to the neighbouring cells, the loops that
serve the two lanes, its cancel scopes and tasks, its state machine
(:class:`~runtime._lifecycle.Lifecycle`) and its restart bookkeeping; it calls the actor's
hooks (``on_start``, ``process_frame``, ``on_ask``, ``on_stop``). The actor reaches it through
:class:`~runtime._actor.ActorPort`; the session and the supervisor call its public methods.

Loops: the data loop runs in the actor's own task (the one the session spawns for it), under
the cell's work scope; no nursery of its own. Until the actor has started, that task also
serves the system lane (the ``StartFrame``); after, system frames are served by a task started
in the session's nursery when they arrive, which ends when the system lane is empty. That task
and the actor's background tasks run under cancel scopes the cell keeps: its stop cancels
them, and its loops wait for them before they end.

Companions (:meth:`~runtime.Actor.add_companion`) are cells with an ``owner``: they share the
owner's link lists (so their pushes follow any relinking of the owner) and have no links of
their own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import outcome
import trio
from trio.lowlevel import wait_task_rescheduled

from ._actor import (
    CURRENT_ACTOR,
    NOT_NOW,
    Actor,
    SessionView,
    accept_cache_for,
    accepts_type,
    bind,
    notify_watchers,
)
from ._core import SessionCore
from ._errors import ActorDeadError
from ._frames import (
    ActorStoppedFrame,
    CancelFrame,
    EndFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    StartFrame,
    SystemFrame,
)
from ._lifecycle import (
    CRASHED,
    CREATED,
    LIVE,
    RESTARTING,
    RUNNING,
    SERVING,
    STARTING,
    STOPPED,
    STOPPING,
    TERMINAL,
    ActorState,
)
from ._mailbox import DemandMailbox, Envelope, Mailbox, Reply
from ._park import WOKEN, Trap, make_trap, park
from ._snapshot import ActorSnapshot
from ._supervision import collapse_exception_group
from ._supervisor import after_crash
from ._turn import CURRENT_TURN

__all__ = ["CURRENT_CELL", "Cell", "DemandCell", "cell_class_for", "register_cell_class"]

DOWNSTREAM = FrameDirection.DOWNSTREAM
UPSTREAM = FrameDirection.UPSTREAM

#: Frames whose forwarding the runtime guarantees (they pass every actor exactly once).
_LIFECYCLE = (StartFrame, EndFrame, CancelFrame, InterruptionFrame)

#: How many frames an actor handles back to back before letting other tasks run.
_FAIRNESS_BATCH = 64

#: What a task of an actor's does (see Cell._task): background work, or serving a lane.
_BACKGROUND, _SYSTEM, _DATA = 0, 1, 2

#: The cell whose actor the running task works for: set by its loops, inherited by the tasks
#: its actor starts. Read by :func:`runtime.logging.add_actor_fields` (``session``,
#: ``actor`` and ``turn`` on every line logged meanwhile); nothing else reads it.
CURRENT_CELL: ContextVar[Cell | None] = ContextVar("trouper_current_cell", default=None)


class Cell:
    """Runs one actor in a session (see the module docs).

    Args:
        actor: The actor (bound to this cell for good).
        core: What the session's cells share.
        capacity: Capacity of the data lane.
        owner: For a companion, the cell of the actor it belongs to.
        stop_with_owner: For a companion, whether its owner's stop stops it.
    """

    #: A passive cell has no task of its own: the session starts none for it, and its data
    #: lane is served like its system lane, by a task started when frames arrive (the
    #: task's two ends, which only pass frames on to the task, are passive).
    passive: ClassVar[bool] = False

    # Slots: a cell has some thirty attributes, past what CPython keeps without a dict per
    # instance (one more object per actor for the garbage collector to scan).
    __slots__ = (
        "accept_cache",
        "actor",
        "answers_nowait",
        "background",
        "busy",
        "companions",
        "core",
        "crash",
        "data_scope",
        "dead_letters",
        "downstream",
        "handles_nowait",
        "interrupt_hooks",
        "lifecycle",
        "mailbox",
        "name",
        "owner",
        "relaying",
        "restart_times",
        "restarts",
        "spawner",
        "start_frame",
        "starting",
        "stop_with_owner",
        "system_busy",
        "system_scope",
        "system_waiter",
        "task_count",
        "task_failure",
        "tasks_ended",
        "trap",
        "upstream",
        "work_cancelled",
        "work_scope",
    )

    def __init__(
        self,
        actor: Actor[Any],
        core: SessionCore,
        capacity: int,
        *,
        owner: Cell | None = None,
        stop_with_owner: bool = True,
    ) -> None:
        self.actor = actor
        self.name = actor.name
        self.core = core
        self.mailbox = self.make_mailbox(capacity)
        #: What the data loop parks on while it waits for a frame (made by its first wait;
        #: the cell is its abort function, see __call__).
        self.trap: Trap | None = None
        self.lifecycle = bind(actor, self)
        #: For a companion, its owner; its link lists are the owner's (the same objects).
        self.owner = owner
        self.stop_with_owner = stop_with_owner
        self.downstream: list[Cell] = owner.downstream if owner is not None else []
        self.upstream: list[Cell] = owner.upstream if owner is not None else []
        # Tuples, not lists: most cells have neither, and the empty tuple is shared (two
        # objects fewer per actor for the garbage collector to scan).
        self.companions: tuple[Cell, ...] = ()
        #: The StartFrame the actor first started with (sent again at each restart).
        self.start_frame: StartFrame | None = None
        #: The data-lane envelope whose handler runs (interruptions cancel that handler).
        self.busy: Envelope | None = None
        #: The lifecycle frame a system-lane handler is handling (the runtime forwards it).
        self.system_busy: Envelope | None = None
        #: The cancel scope of the data loop and its handler: an interruption cancels it
        #: (the loop goes on in a new one), and so does the actor's stop (the loop ends).
        self.work_scope: trio.CancelScope | None = None
        self.work_cancelled = False
        #: Where the actor's tasks start (the session's nursery) while its loops run.
        self.spawner: trio.Nursery | None = None
        self.interrupt_hooks: tuple[Callable[[], object], ...] = ()
        #: The cancel scopes of the actor's running background tasks (made by the first).
        self.background: set[trio.CancelScope] | None = None
        #: The cancel scope of the task serving the system lane, while there is one.
        self.system_scope: trio.CancelScope | None = None
        #: The same for the data lane of a passive cell (see :attr:`passive`).
        self.data_scope: trio.CancelScope | None = None
        #: The actor's running tasks (background and system lane), the first exception one
        #: of them raised (it crashes the actor, as its loops' own would) and what the loops
        #: wait on at their end until none runs.
        self.task_count = 0
        self.task_failure: Exception | None = None
        self.tasks_ended: trio.Event | None = None
        self.restarts = 0
        #: When the actor's recent restarts happened (made by its first crash).
        self.restart_times: deque[float] | None = None
        self.dead_letters = 0
        self.crash: BaseException | None = None
        self.relaying = False
        # Until the actor serves data, its system frames (the StartFrame) are served by the
        # cell's own task, not by a task started for them: ``starting`` says so, and
        # ``system_waiter`` is that task while it waits for the next one.
        self.starting = False
        self.system_waiter: trio.lowlevel.Task | None = None
        # Shared by the actors that accept the same types (see accept_cache_for).
        self.accept_cache = accept_cache_for(actor.accepts)
        #: Whether the actor may answer an ask at once (it overrides on_ask_nowait).
        self.answers_nowait = type(actor).on_ask_nowait is not Actor.on_ask_nowait
        #: Whether it has a synchronous handler (it overrides process_frame_nowait).
        self.handles_nowait = type(actor).process_frame_nowait is not Actor.process_frame_nowait

    def make_mailbox(self, capacity: int) -> Mailbox:
        """The actor's mailbox (a subclass may give it another kind)."""
        return Mailbox(capacity, self.name)

    @property
    def session(self) -> SessionView:
        """The session the cell belongs to."""
        return self.core.session

    @property
    def state(self) -> ActorState:
        """The actor's state."""
        return self.lifecycle.state

    def accepts_type(self, cls: type[Frame]) -> bool:
        """Whether frames of type ``cls`` reach the actor's handler (cached)."""
        ok = self.accept_cache.get(cls)
        if ok is None:
            ok = self.accept_cache[cls] = accepts_type(self.actor.accepts, cls)
        return ok

    def __repr__(self) -> str:
        return f"<Cell {self.name!r} {self.lifecycle.state.value}>"

    def __call__(self, raise_cancel: object) -> trio.lowlevel.Abort:
        """The abort function of the data loop's wait for a frame
        (:meth:`Mailbox.abort_data_wait`). The cell itself is given to trio, not a bound
        method: that would be one more object per waiting actor for the collector to scan."""
        return self.mailbox.abort_data_wait(raise_cancel)

    # ------------------------------------------------------------------ sending

    def try_push(
        self, frame: Frame, direction: FrameDirection, uninterruptible: bool = False
    ) -> Envelope | None:
        """The start of :meth:`Actor.push_frame`: queue ``frame`` with a single neighbour if
        that needs no waiting; else return the envelope for :meth:`deliver`. ``None`` when
        nothing is left to do (queued, or a lifecycle frame the runtime forwards itself).
        With ``uninterruptible``, an interruption drops neither it nor its envelope
        (:meth:`Actor.push_uninterruptible`)."""
        busy = self.busy
        reuse = None
        if busy is not None and busy.frame is frame:
            if type(frame) is EndFrame:
                # A Pipecat habit: forwarding the lifecycle frame being handled. The runtime
                # forwards it itself, so this push would duplicate it.
                return None
            reuse = busy
        else:
            held = self.system_busy
            if held is not None and held.frame is frame:
                return None  # the same habit, on the system lane
        turn = frame.turn
        if type(frame) is InterruptionFrame:
            self.core.interrupt(frame)
            # The interruption opens the new turn: stages handle it (and push) in that turn.
            turn = self.core.turn
        elif turn is None:
            turn = self.core.turn
        keep = uninterruptible and frame.interruptible
        if (
            reuse is not None
            and reuse.direction is direction
            and reuse.turn == turn
            and (reuse.uninterruptible or not keep)
        ):
            envelope = reuse  # the frame being handled, passed on as it came
        else:
            envelope = Envelope(frame, direction, turn, None, keep)
        targets = self.upstream if direction is UPSTREAM else self.downstream
        if len(targets) == 1 and not isinstance(frame, SystemFrame):
            mailbox = targets[0].mailbox
            if not mailbox.closed and mailbox.try_put_data(envelope):
                return None
        return envelope

    def push_now(self, frame: Frame, direction: FrameDirection, uninterruptible: bool) -> bool:
        """:meth:`try_push` for a sender that cannot wait (:meth:`Actor.push_frame_nowait`):
        queue a data frame with the single neighbour in ``direction`` if it has room; else
        do nothing and return ``False`` (also for system frames and ``EndFrame``, whose
        pushes do more, and with several neighbours)."""
        if isinstance(frame, SystemFrame) or type(frame) is EndFrame:
            return False
        targets = self.upstream if direction is UPSTREAM else self.downstream
        if len(targets) != 1:
            return False
        mailbox = targets[0].mailbox
        if mailbox.closed:
            return False
        turn = frame.turn
        if turn is None:
            turn = self.core.turn
        keep = uninterruptible and frame.interruptible
        # The envelope as try_push makes it, written out again: both are on the path of
        # every frame a stage passes on.
        reuse = self.busy
        if (
            reuse is not None
            and reuse.frame is frame
            and reuse.direction is direction
            and reuse.turn == turn
            and (reuse.uninterruptible or not keep)
        ):
            envelope = reuse
        else:
            envelope = Envelope(frame, direction, turn, None, keep)
        return mailbox.try_put_data(envelope, True)

    async def deliver(self, envelope: Envelope) -> None:
        """Queue ``envelope`` with every neighbour in its direction (waiting for room)."""
        upstream = envelope.direction is UPSTREAM
        targets = self.upstream if upstream else self.downstream
        frame = envelope.frame
        system = isinstance(frame, SystemFrame)
        core = self.core
        # A frame whose delivery its sender awaits (push_error) counts the lanes it is queued in.
        tracked = system and bool(core.in_flight) and frame.id in core.in_flight
        for target in targets:
            mailbox = target.mailbox
            if mailbox.closed:
                if upstream and target.lifecycle.state is STOPPED and not target.relaying:
                    # A stage that has ended passes frames still travelling upstream on as
                    # if they went through it: an error reported while the pipeline drains
                    # after an EndFrame must still reach the input end.
                    target.relaying = True
                    try:
                        await target.forward(envelope)
                    finally:
                        target.relaying = False
                else:
                    self.dead_letters += 1
                continue
            if system:
                mailbox.put_system(envelope)
                if tracked:
                    core.queued(frame)
            elif not mailbox.try_put_data(envelope):
                try:
                    await mailbox.put_data(envelope)
                except ActorDeadError:
                    self.dead_letters += 1

    async def forward(self, envelope: Envelope) -> bool:
        """Pass an envelope on unchanged (pass-through and lifecycle frames). Returns whether
        the actor is done: an ``EndFrame`` has passed it."""
        frame = envelope.frame
        ended = type(frame) is EndFrame
        direction = envelope.direction
        if direction is None:
            return ended
        targets = self.upstream if direction is UPSTREAM else self.downstream
        if len(targets) == 1 and not isinstance(frame, SystemFrame):
            mailbox = targets[0].mailbox
            if not mailbox.closed and mailbox.try_put_data(envelope):
                return ended
        await self.deliver(envelope)
        return ended

    def envelope(self, frame: Frame, reply: Reply | None) -> Envelope:
        """An envelope for a frame sent straight to the actor, stamped with the turn."""
        turn = frame.turn
        return Envelope(frame, None, self.core.turn if turn is None else turn, reply)

    def tracking(self, frame: Frame) -> AbstractAsyncContextManager[None]:
        """See :meth:`SessionCore.tracking`."""
        return self.core.tracking(frame)

    def notify(self, frame: ActorStoppedFrame) -> None:
        """Queue a notice on the system lane (dropped if the actor has stopped)."""
        mailbox = self.mailbox
        if not mailbox.closed:
            mailbox.put_system(Envelope(frame, None, frame.turn or 0))

    # ------------------------------------------------------------------ work of the actor

    def create_task(
        self,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        name: str,
        interruptible: bool,
    ) -> trio.CancelScope | None:
        """Run ``fn(*args)`` in a task of the actor's (``None`` if the loops do not run)."""
        nursery = self.spawner
        if nursery is None:
            return None
        scope = trio.CancelScope()
        background = self.background
        if background is None:
            background = self.background = set()
        background.add(scope)
        if interruptible:
            # It belongs to the handled frame's turn (else the current one), as turn_scope:
            # that turn over already, the task is cancelled at once.
            turn = CURRENT_TURN.get()
            if turn is not None and turn < self.core.turn:
                scope.cancel()
            else:
                self.core.turn_scopes[scope] = self.name
        self.task_count += 1
        nursery.start_soon(self._task, scope, fn, args, _BACKGROUND, name=name)
        return scope

    async def _task(
        self,
        scope: trio.CancelScope,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        kind: int,
    ) -> None:
        """One of the actor's tasks, in the session's nursery under its own cancel scope:
        what the actor's stop cancels and its loops wait for. An exception it raises crashes
        the actor (its loops end and re-raise it; a passive cell, which has no loops, applies
        its policy here), not the session."""
        if kind == _BACKGROUND:
            CURRENT_ACTOR.set(None)
        try:
            with scope:
                await fn(*args)
        except Exception as exc:
            if self.passive:
                # No loops to end: the actor's other tasks are cancelled, as an active cell's
                # are when its loops end, and the policy applies here (a restart queues the
                # StartFrame for the next system task; an escalation raises into the session).
                self.busy = None
                self._cancel_tasks()
                await after_crash(self, exc)
            else:
                self._task_failed(exc)
        finally:
            if kind == _SYSTEM:
                if self.system_scope is scope:
                    self.system_scope = None
            elif kind == _DATA:
                if self.data_scope is scope:
                    self.data_scope = None
                    if self.work_cancelled and self.mailbox.data_depth:
                        # Ended by an interruption (the task's scope is its handler's): the
                        # frames left get a new task (data_arrived checks the actor still
                        # serves data). Not after any other cancellation (the session's).
                        self.data_arrived()
            else:
                if self.background is not None:
                    self.background.discard(scope)
                self.core.turn_scopes.pop(scope, None)
            self.task_count -= 1
            if not self.task_count and self.tasks_ended is not None:
                self.tasks_ended.set()

    def _task_failed(self, exc: Exception) -> None:
        """A task of the actor raised: keep the first exception and end the loops (and
        the other tasks), which then raise it."""
        if self.task_failure is None:
            self.task_failure = exc
        if self.work_scope is not None:
            self.work_scope.cancel()
        self._cancel_tasks()

    def _cancel_tasks(self) -> None:
        if self.system_scope is not None:
            self.system_scope.cancel()
        if self.data_scope is not None:
            self.data_scope.cancel()
        if self.background:
            for scope in self.background:
                scope.cancel()

    async def _wait_tasks(self) -> None:
        """Wait (shielded) until none of the actor's tasks runs."""
        with trio.CancelScope(shield=True):
            while self.task_count:
                ended = self.tasks_ended = trio.Event()
                await ended.wait()
            self.tasks_ended = None

    def add_interrupt_hook(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when an interruption cancels the running handler."""
        self.interrupt_hooks = (*self.interrupt_hooks, callback)

    def discard_interrupt_hook(self, callback: Callable[[], object]) -> None:
        """Forget ``callback`` (no error if it ran already)."""
        hooks = self.interrupt_hooks
        if callback in hooks:
            at = hooks.index(callback)
            self.interrupt_hooks = hooks[:at] + hooks[at + 1 :]

    @contextmanager
    def turn_scope(self, turn: int | None) -> Iterator[trio.CancelScope]:
        """A cancel scope that the interruption of ``turn`` (default: the handled frame's,
        else the current one) cancels; cancelled at once if that turn is over."""
        core = self.core
        if turn is None:
            turn = CURRENT_TURN.get()
            if turn is None:
                turn = core.turn
        scope = trio.CancelScope()
        if turn < core.turn:
            scope.cancel()
        else:
            core.turn_scopes[scope] = self.name
        try:
            with scope:
                yield scope
        finally:
            core.turn_scopes.pop(scope, None)

    def add_companion(self, actor: Actor[Any], stop_with_owner: bool) -> None:
        """Spawn ``actor`` now as a companion of this cell's actor."""
        self.core.spawn_companion(self.name, actor, stop_with_owner)

    def offer_start(self, frame: StartFrame) -> None:
        """Give a companion its owner's ``StartFrame`` (if it has not started)."""
        if self.lifecycle.state is CREATED and not self.mailbox.closed:
            self.mailbox.put_system(Envelope(frame, None, self.core.turn))

    # ------------------------------------------------------------------ interruptions

    def has_interruptible_work(self) -> bool:
        """Whether a handler runs that an interruption cancels (an interruptible frame's)."""
        busy = self.busy
        return (
            busy is not None
            and busy.frame.interruptible
            and not busy.uninterruptible
            and self.work_scope is not None
        )

    def run_interrupt_hooks(self) -> None:
        """Run (and forget) the callbacks given with ``Actor.on_interruption``."""
        hooks, self.interrupt_hooks = self.interrupt_hooks, ()
        for hook in hooks:
            try:
                hook()
            except Exception as exc:
                self.core.log.warning(
                    "on_interruption callback raised",
                    actor=self.name,
                    turn=self.core.turn,
                    error=f"{type(exc).__name__}: {exc}",
                )

    def cancel_work(self) -> None:
        """Cancel the running handler; the data loop goes on with the next frame."""
        scope = self.work_scope
        assert scope is not None
        scope.cancel()
        self.work_cancelled = True

    def purge_stale(self, turn: int) -> int:
        """Drop the queued interruptible data older than ``turn``; returns how many."""

        def stale(envelope: Envelope) -> bool:
            return (
                envelope.turn < turn
                and envelope.frame.interruptible
                and not envelope.uninterruptible
                and envelope.reply is None
            )

        return len(self.mailbox.purge(stale))

    # ------------------------------------------------------------------ loops

    async def run(self) -> None:
        """The actor's task: run its loops until it stops; after a crash, restart them as its
        policy allows (:func:`~runtime._supervisor.after_crash`), else raise the crash
        (escalation). The data loop runs in this task, under :attr:`work_scope` (no
        nursery of its own: the few tasks an actor starts, system-lane service and
        background work, run in the session's nursery under cancel scopes the cell keeps,
        and the loop waits for them at its end). One function, not three: every wake-up of
        the data loop resumes each coroutine frame of its stack.
        """
        CURRENT_ACTOR.set(self.actor)
        CURRENT_CELL.set(self)
        mailbox = self.mailbox
        core = self.core
        life = self.lifecycle
        while True:  # until the actor stops; again after each crash its policy restarts
            self.spawner = core.nursery
            failing = False
            done = False
            try:
                try:
                    # Methods are called through their objects, not kept bound in locals: a bound
                    # method lives as long as the loop, one more object per actor for the garbage
                    # collector to scan (and the call costs the same).
                    actor = self.actor
                    accept_cache = self.accept_cache
                    handles_nowait = self.handles_nowait
                    batch = 0
                    last_turn: int | None = None
                    starting = life.state not in SERVING
                    while not done and life.state not in TERMINAL and self.task_failure is None:
                        with trio.CancelScope() as scope:
                            self.work_scope = scope
                            self.work_cancelled = False
                            if starting:
                                starting = False
                                if await self._serve_start():
                                    done = True  # stopped (a CancelFrame) before it started
                                    break
                                mailbox.serve_system_with(self)
                            while True:
                                if self.work_cancelled:
                                    # An interruption landed after the last handler's last
                                    # checkpoint: serve the next frame in a fresh scope, or its
                                    # handler would be cancelled in its place.
                                    break
                                if batch >= _FAIRNESS_BATCH:
                                    batch = 0
                                    await trio.lowlevel.checkpoint()
                                envelope = mailbox.take_data()
                                if envelope is None:
                                    # Mailbox.get_data, inline: no coroutine more to keep (and
                                    # resume at each wake-up). The frame that ends a wait starts
                                    # a new batch (counting it shifts the fairness checkpoints
                                    # and slows a burst through a chain by a quarter).
                                    mailbox.expect_data()
                                    trap = self.trap
                                    if trap is None:
                                        trap = self.trap = make_trap(self)
                                    woken = await park(trap)
                                    if woken is not WOKEN:  # _park.settle, inlined
                                        woken.unwrap()  # cancelled
                                    envelope = mailbox.take_data()
                                    if envelope is None:
                                        continue  # a close (or a purge) came first: wait again
                                    batch = 0
                                else:
                                    batch += 1
                                if envelope.reply is not None:
                                    await self._answer(envelope)
                                    continue
                                frame = envelope.frame
                                if (
                                    envelope.turn < core.turn
                                    and frame.interruptible
                                    and not envelope.uninterruptible
                                ):
                                    mailbox.count_stale()
                                    continue
                                cls = type(frame)
                                ok = accept_cache.get(cls)
                                if ok is None:
                                    ok = self.accepts_type(cls)
                                if not ok:
                                    ended = await self.forward(envelope)
                                else:
                                    turn = (
                                        envelope.turn
                                        if frame.interruptible and not envelope.uninterruptible
                                        else core.turn
                                    )
                                    if turn != last_turn:
                                        # This task's own context variables: no reset between
                                        # frames.
                                        CURRENT_TURN.set(turn)
                                        last_turn = turn
                                    self.busy = envelope
                                    try:
                                        # The synchronous handler first (no coroutine for
                                        # what it takes), then the handler.
                                        if not (
                                            handles_nowait
                                            and cls is not EndFrame
                                            and actor.process_frame_nowait(
                                                frame, envelope.direction or DOWNSTREAM
                                            )
                                        ):
                                            await actor.process_frame(
                                                frame, envelope.direction or DOWNSTREAM
                                            )
                                    finally:
                                        self.busy = None
                                    ended = cls is EndFrame and await self.forward(envelope)
                                if ended:
                                    CURRENT_TURN.set(None)
                                    await self.stop()
                                    done = True
                                    break
                        # Interrupted mid-handler (the frame is abandoned: serve the next), stopped
                        # from elsewhere, or a task of the actor failed.
                        self.work_scope = None
                except BaseException:
                    failing = True
                    self._cancel_tasks()
                    raise
                finally:
                    self.work_scope = None
                    mailbox.serve_system_with(None)
                    self.spawner = None
                    if self.task_count:
                        await self._wait_tasks()
                    failure, self.task_failure = self.task_failure, None
                    if failure is not None:
                        if not failing:
                            raise failure
                        # The loop's own exception is the crash; this one is not lost.
                        core.log.error(
                            "actor task failed",
                            actor=self.name,
                            turn=core.turn,
                            error=f"{type(failure).__name__}: {failure}",
                        )
            except BaseExceptionGroup as group:
                crash = collapse_exception_group(group)
            except Exception as single:
                crash = single
            else:
                self.finish(crashed=False)  # the loops ended: stopped (if not already)
                return
            if not await after_crash(self, crash):
                return

    async def _serve_start(self) -> bool:
        """Serve the system lane in the cell's own task until the actor serves data (it has
        handled its ``StartFrame``): nothing else can run before, so no task is started for
        those frames (nine actors per session, each a task started and ended for its
        ``StartFrame``). Frames still queued then get a task as usual. Returns whether the
        actor stopped meanwhile (a ``CancelFrame``)."""
        mailbox = self.mailbox
        life = self.lifecycle
        self.starting = True
        try:
            mailbox.serve_system_with(self)
            while life.state not in SERVING:
                envelope = mailbox.take_system()
                if envelope is None:
                    # The next system frame wakes this task (start_system_service).
                    self.system_waiter = trio.lowlevel.current_task()
                    await wait_task_rescheduled(self._abort_system_wait)
                    continue
                if await self._handle_system(envelope):
                    return True
            return False
        finally:
            self.starting = False
            self.system_waiter = None
            mailbox.end_system_service()

    def _abort_system_wait(self, _: object) -> trio.lowlevel.Abort:
        self.system_waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def data_arrived(self) -> None:
        """A passive cell's mailbox got a data frame: start a task serving the data lane if
        none runs and the actor serves data (frames that arrive before the start wait)."""
        nursery = self.spawner
        state = self.lifecycle.state
        if (
            self.data_scope is not None
            or nursery is None
            or (state is not RUNNING and state is not STOPPING)
            or not self.mailbox.data_depth
        ):
            return
        scope = self.data_scope = trio.CancelScope()
        self.task_count += 1
        nursery.start_soon(self._task, scope, self._serve_data, (), _DATA, name=f"{self.name}:data")

    async def _serve_data(self) -> None:
        """A passive cell's data lane, served until it is empty, as the data loop of
        :meth:`run` serves it: asks answered, stale frames dropped, accepted frames handled,
        the others passed on. Then the task ends: the next frame starts a new one.

        The task's cancel scope (:attr:`data_scope`) is also its work scope: an interruption
        cancels the handler by ending the task, and :meth:`_task` starts a new one for the
        frames still queued (one cancel scope per task, not two).

        The steps per frame are those of :meth:`run`'s loop, written out again on purpose:
        that loop inlines them (no helper coroutine per frame on the hot path of a stage
        that frames stream through); change both together."""
        CURRENT_ACTOR.set(self.actor)
        CURRENT_CELL.set(self)
        mailbox = self.mailbox
        core = self.core
        actor = self.actor
        accept_cache = self.accept_cache
        handles_nowait = self.handles_nowait
        batch = 0
        self.work_scope = self.data_scope
        self.work_cancelled = False
        try:
            while not self.work_cancelled:
                if batch >= _FAIRNESS_BATCH:
                    batch = 0
                    await trio.lowlevel.checkpoint()
                envelope = mailbox.take_data()
                if envelope is None:
                    return
                batch += 1
                if envelope.reply is not None:
                    await self._answer(envelope)
                    continue
                frame = envelope.frame
                interruptible = frame.interruptible and not envelope.uninterruptible
                if envelope.turn < core.turn and interruptible:
                    mailbox.count_stale()
                    continue
                cls = type(frame)
                ok = accept_cache.get(cls)
                if ok is None:
                    ok = self.accepts_type(cls)
                if not ok:
                    ended = await self.forward(envelope)
                else:
                    CURRENT_TURN.set(envelope.turn if interruptible else core.turn)
                    self.busy = envelope
                    try:
                        if not (
                            handles_nowait
                            and cls is not EndFrame
                            and actor.process_frame_nowait(frame, envelope.direction or DOWNSTREAM)
                        ):
                            await actor.process_frame(frame, envelope.direction or DOWNSTREAM)
                    finally:
                        self.busy = None
                    ended = cls is EndFrame and await self.forward(envelope)
                if ended:
                    CURRENT_TURN.set(None)
                    await self.stop()
                    return
        finally:
            self.work_scope = None

    def start_system_service(self) -> bool:
        """Start the task that serves the system lane; ``False`` if the nursery does not
        take tasks now (the frame then waits for the next one). Called by the mailbox (the
        cell is its :class:`~runtime._mailbox.SystemServer`). Until the actor has started,
        the cell's own task serves the lane: it is woken instead."""
        if self.starting:
            waiter = self.system_waiter
            if waiter is not None:
                self.system_waiter = None
                trio.lowlevel.reschedule(waiter)
            return True
        nursery = self.spawner
        if nursery is None:
            return False
        scope = trio.CancelScope()
        try:
            nursery.start_soon(
                self._task, scope, self._serve_system, (), _SYSTEM, name=f"{self.name}:system"
            )
        except RuntimeError:  # the nursery is closing
            return False
        self.system_scope = scope
        self.task_count += 1
        return True

    async def _serve_system(self) -> None:
        """Serve the system lane until it is empty, then end: system frames are rare, so the
        task exists only while there are some (it runs beside the data loop)."""
        mailbox = self.mailbox
        CURRENT_ACTOR.set(self.actor)
        CURRENT_CELL.set(self)
        try:
            while (envelope := mailbox.take_system()) is not None:
                if await self._handle_system(envelope):
                    return
        finally:
            mailbox.end_system_service()

    async def _handle_system(self, envelope: Envelope) -> bool:
        """Handle one system-lane envelope; whether the actor stopped (a ``CancelFrame``)."""
        frame = envelope.frame
        core = self.core
        try:
            if envelope.reply is not None:
                await self._answer(envelope)
                return False
            cls = type(frame)
            if cls is StartFrame:
                assert isinstance(frame, StartFrame)
                await self._start(frame)
            accepted = self.accepts_type(cls)
            if accepted:
                reset_token = CURRENT_TURN.set(envelope.turn)
                self.system_busy = envelope if cls in _LIFECYCLE else None
                try:
                    await self.actor.process_frame(frame, envelope.direction or DOWNSTREAM)
                finally:
                    self.system_busy = None
                    CURRENT_TURN.reset(reset_token)
            if not accepted or cls in _LIFECYCLE:
                await self.forward(envelope)
            if cls is CancelFrame:
                await self.stop()
                return True
            return False
        finally:
            if core.in_flight and envelope.direction is not None:
                # Handled here: passed on (counted again there), or taken.
                core.delivery_step(frame)

    def _data_idle(self) -> bool:
        """Whether the actor runs and its data lane is empty with no frame being handled (by
        its handlers or, in another task, by its synchronous one)."""
        if self.lifecycle.state is not RUNNING:
            return False
        mailbox = self.mailbox
        if mailbox.data_depth or self.busy is not None:
            return False
        if self.passive:
            return self.data_scope is None
        return mailbox.consumer_waiting  # the data loop waits for a frame: nothing runs

    def handle_nowait(self, envelope: Envelope) -> bool:
        """Have the actor handle the data frame of ``envelope`` (sent straight to it) at once,
        in the sender's task, with :meth:`~runtime.Actor.process_frame_nowait`, if it is idle
        on its data lane; whether it did (else the frame is to be queued). What the method
        raises crashes the actor, as a handler's exception does (through a task of its own,
        where the restart policy applies)."""
        frame = envelope.frame
        if type(frame) is EndFrame or not self._data_idle():
            return False
        core = self.core
        interruptible = frame.interruptible and not envelope.uninterruptible
        if interruptible and envelope.turn < core.turn:
            self.mailbox.count_stale()  # stamped with an interrupted turn: dropped, as queued
            return True
        if not self.accepts_type(type(frame)):
            return False
        sender = CURRENT_ACTOR.set(self.actor)
        sender_cell = CURRENT_CELL.set(self)
        sender_turn = CURRENT_TURN.set(envelope.turn if interruptible else core.turn)
        self.busy = envelope
        try:
            handled = self.actor.process_frame_nowait(frame, envelope.direction or DOWNSTREAM)
        except Exception as exc:
            if self.create_task(_raise, (exc,), f"{self.name}:crashed", False) is None:
                raise  # (not reached while the actor runs: its loops take tasks)
            handled = True
        finally:
            self.busy = None
            CURRENT_TURN.reset(sender_turn)
            CURRENT_CELL.reset(sender_cell)
            CURRENT_ACTOR.reset(sender)
        if handled:
            self.mailbox.count_delivered()
        return handled

    def answer_nowait(self, frame: Frame) -> object:
        """The actor's :meth:`~runtime.Actor.on_ask_nowait` answer to ``frame``, called in the
        asker's task if the actor is running and idle on the lane the ask would travel in:
        that lane empty and nothing handling a frame from it (the two lanes are served
        concurrently, as always). The ask is then answered where it would have been had it
        been queued. Else :data:`~runtime.NOT_NOW`. The current actor, cell and turn are the
        actor's while it runs."""
        if isinstance(frame, SystemFrame):
            if self.lifecycle.state is not RUNNING or not self.mailbox.system_quiet():
                return NOT_NOW
        elif not self._data_idle():
            return NOT_NOW  # frames wait, or one is being handled
        turn = frame.turn
        asker = CURRENT_ACTOR.set(self.actor)
        asker_cell = CURRENT_CELL.set(self)
        asker_turn = CURRENT_TURN.set(self.core.turn if turn is None else turn)
        try:
            answer = self.actor.on_ask_nowait(frame)
        finally:
            CURRENT_TURN.reset(asker_turn)
            CURRENT_CELL.reset(asker_cell)
            CURRENT_ACTOR.reset(asker)
        if answer is not NOT_NOW:
            self.mailbox.count_delivered()
        return answer

    async def _answer(self, envelope: Envelope) -> None:
        reply = envelope.reply
        assert reply is not None
        reset_token = CURRENT_TURN.set(envelope.turn)
        try:
            value = await self.actor.on_ask(envelope.frame)
        except Exception as exc:
            reply.set(outcome.Error(exc))
        except BaseException:
            # Cancelled: the actor stops (or crashed) before it could answer. Tell the asker
            # now rather than let it wait for a reply that cannot come.
            reply.set(
                outcome.Error(
                    ActorDeadError(
                        f"actor {self.name!r} stopped before it answered "
                        f"{type(envelope.frame).__name__}"
                    )
                )
            )
            raise
        else:
            reply.set(outcome.Value(value))
        finally:
            CURRENT_TURN.reset(reset_token)

    # ------------------------------------------------------------------ life

    async def _start(self, frame: StartFrame) -> None:
        if self._begin_start(frame):
            await self.actor.on_start()
            self._end_start()

    def _begin_start(self, frame: StartFrame) -> bool:
        """The start up to ``on_start``; ``False`` if the actor has started already (a
        StartFrame more is only passed on)."""
        life = self.lifecycle
        if life.state is not CREATED and life.state is not RESTARTING:
            return False
        first = self.start_frame is None
        if first:
            self.start_frame = frame
        life.to(STARTING)
        if first:
            for companion in self.companions:
                companion.offer_start(frame)
        return True

    def _end_start(self) -> None:
        """The start after ``on_start``: the actor runs (unless stopped meanwhile)."""
        life = self.lifecycle
        if life.state is STARTING:
            life.to(RUNNING)
            self.core.log.debug("actor started", actor=self.name, turn=self.core.turn)
            if self.passive:
                self.data_arrived()  # what came before the start

    def restart(self) -> None:
        """After a crash and its backoff: forget the abandoned handler and queue the
        ``StartFrame`` the actor started with (its mailbox and queued frames are kept)."""
        self.busy = None
        self.system_busy = None
        if self.start_frame is not None and not self.mailbox.closed:
            self.mailbox.put_system(Envelope(self.start_frame, None, self.core.turn))

    async def stop(self) -> None:
        """Stop for good: ``on_stop`` (shielded, time-boxed), close the mailbox, end the
        loops, then stop the companions that stop with it. Nothing if it is stopping or has
        stopped."""
        life = self.lifecycle
        if life.state not in LIVE:
            return
        life.to(STOPPING)
        timeout = self.core.stop_timeout_secs
        with trio.move_on_after(timeout, shield=True) as cs:
            try:
                await self.actor.on_stop()
            except Exception as exc:
                self.core.log.warning(
                    "on_stop raised",
                    actor=self.name,
                    turn=self.core.turn,
                    error=f"{type(exc).__name__}: {exc}",
                )
        if cs.cancelled_caught:
            self.core.log.warning(
                "on_stop timed out", actor=self.name, turn=self.core.turn, timeout_secs=timeout
            )
        upstream = self.finish(crashed=False, keep_upstream=True)
        if upstream:
            # Frames travelling upstream (errors) that were queued here when the actor stopped
            # are passed on, as a stopped actor passes on those that arrive later: an error
            # reported while the pipeline drains still reaches the input end.
            core = self.core
            with trio.move_on_after(timeout, shield=True):
                self.relaying = True
                try:
                    for envelope in upstream:
                        try:
                            await self.forward(envelope)
                        finally:
                            if core.in_flight:
                                core.delivery_step(envelope.frame)
                finally:
                    self.relaying = False
        for companion in self.companions:
            if companion.stop_with_owner:
                with trio.CancelScope(shield=True):
                    await companion.stop()

    def finish(self, *, crashed: bool, keep_upstream: bool = False) -> list[Envelope]:
        """Mark the actor stopped (or crashed), close its mailbox, end its loops and tell its
        watchers. With ``keep_upstream``, the frames travelling upstream still queued are
        returned (to be passed on) instead of dropped. Nothing if it has stopped already."""
        life = self.lifecycle
        if life.state in TERMINAL:
            return []
        if crashed:
            life.to(CRASHED)
        else:
            if life.state is not STOPPING:
                life.to(STOPPING)
            life.to(STOPPED)
        left = self.mailbox.close()
        core = self.core
        upstream: list[Envelope] = []
        for envelope in left:
            if envelope.reply is not None:
                envelope.reply.set(
                    outcome.Error(ActorDeadError(f"actor {self.name!r} has stopped"))
                )
            elif keep_upstream and envelope.direction is UPSTREAM:
                upstream.append(envelope)
            elif core.in_flight and envelope.direction is not None:
                core.delivery_step(envelope.frame)  # it goes no further
        if self.work_scope is not None:
            self.work_scope.cancel()
        self._cancel_tasks()
        if self.passive:
            # (An active cell's loops do this when they end.)
            self.spawner = None
            self.mailbox.serve_system_with(None)
        notify_watchers(self.actor)
        core.log.debug(
            "actor stopped",
            actor=self.name,
            turn=core.turn,
            state=life.state.value,
            unprocessed=len(left) - len(upstream),
        )
        return upstream

    def begin_restart(self) -> None:
        """A crash the restart policy answers with a restart (after its backoff)."""
        self.lifecycle.to(RESTARTING)
        self.restarts += 1

    # ------------------------------------------------------------------ introspection

    def snapshot(self) -> ActorSnapshot:
        """The actor's state, mailbox and work in progress."""
        busy = self.busy
        return ActorSnapshot(
            name=self.name,
            kind=type(self.actor).__name__,
            state=self.lifecycle.state.value,
            mailbox=self.mailbox.statistics(),
            busy_with=busy.frame.name if busy is not None else None,
            background_tasks=len(self.background) if self.background is not None else 0,
            restarts=self.restarts,
            dead_letters=self.dead_letters,
            downstream=tuple(c.name for c in self.downstream),
            companion_of=self.owner.name if self.owner is not None else None,
        )


async def _raise(exc: Exception) -> None:
    """Raise ``exc`` in a task of the actor's: what a synchronous handler raised becomes the
    actor's crash (see :meth:`Cell.handle_nowait`)."""
    raise exc


_CELL_CLASSES: dict[type[Actor[Any]], type[Cell]] = {}


def register_cell_class(actor_class: type[Actor[Any]], cell_class: type[Cell]) -> None:
    """Run actors of ``actor_class`` (and its subclasses) in cells of ``cell_class``: the
    runtime's own special stages (a task's ends, a parallel section's merge points) forward
    frames their own way."""
    _CELL_CLASSES[actor_class] = cell_class


class DemandCell(Cell):
    """Runs an actor that serves its mailbox on demand (:attr:`Actor.serve_on_demand`): a
    passive cell, with no task of its own while its mailbox is empty. A task serving the
    data lane starts when a frame arrives and ends once the lane is empty, as the system
    lane's does."""

    __slots__ = ()
    passive = True

    def make_mailbox(self, capacity: int) -> Mailbox:
        return DemandMailbox(capacity, self.name, server=self)

    def start_system_service(self) -> bool:
        """As :meth:`Cell.start_system_service`, but a ``StartFrame`` sent straight to an actor
        with nothing to run for it (no ``on_start`` of its own, ``StartFrame`` not accepted)
        is applied here, without a task (a companion's start, usually)."""
        mailbox = self.mailbox
        envelope = mailbox.peek_system()
        if (
            envelope is not None
            and type(envelope.frame) is StartFrame
            and envelope.direction is None
            and envelope.reply is None
            and type(self.actor).on_start is Actor.on_start
            and not self.accepts_type(StartFrame)
        ):
            mailbox.take_system()
            frame = envelope.frame
            assert isinstance(frame, StartFrame)
            if self._begin_start(frame):
                self._end_start()
            if mailbox.peek_system() is None:
                mailbox.take_system()  # (the lane is empty: this ends its service)
                return False
        return super().start_system_service()


def cell_class_for(actor_class: type[Actor[Any]]) -> type[Cell]:
    """The cell class that runs actors of ``actor_class``."""
    for klass in actor_class.__mro__:
        found = _CELL_CLASSES.get(klass)
        if found is not None:
            return found
    return DemandCell if actor_class.serve_on_demand else Cell
