"""Actors and references to them.

An :class:`Actor` is a stage: it owns its state, receives frames through a typed two-lane
mailbox and sends frames to its neighbours with :meth:`Actor.push_frame`. Its supervisor task
(in the session's nursery, see :mod:`runtime._session`) runs the data loop inside a nursery of
the actor's own; system frames are served by a task started in that nursery when they arrive,
which ends when the system lane is empty.

``Actor`` is deliberately a plain class rather than an attrs class: applications subclass it
the way Pipecat users subclass ``FrameProcessor`` (``__init__`` calling ``super().__init__()``).
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Generic, final

import attrs
import outcome
import structlog
import trio
from typing_extensions import TypeVar

from ._errors import ActorDeadError, AskTimeoutError, FrameTypeError, SelfAskError
from ._frames import (
    ActorStoppedFrame,
    CancelFrame,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    InterruptionMarkerFrame,
    StartFrame,
    SystemFrame,
    current_turn,
)
from ._mailbox import Item, Mailbox, MailboxStatistics, _Reply
from ._scrub import scrub, scrub_exception

if TYPE_CHECKING:
    from ._session import Session
    from ._supervision import RestartPolicy

__all__ = ["Actor", "ActorRef", "ActorState"]

T = TypeVar("T", bound=Frame, default=Frame)
R = TypeVar("R")

DOWNSTREAM = FrameDirection.DOWNSTREAM
UPSTREAM = FrameDirection.UPSTREAM

_names = itertools.count(1)
_current_actor: ContextVar[Actor[Any] | None] = ContextVar("trouper_current_actor", default=None)

#: Frames whose forwarding the runtime guarantees (they pass every actor exactly once).
_LIFECYCLE = (StartFrame, EndFrame, CancelFrame, InterruptionFrame)

_logger = structlog.get_logger("trouper.runtime")

#: Set by the :class:`~runtime.PipelineTask` that will run an actor, until the task is ready:
#: decides whether a push from outside the session is held for the start (``True``), goes
#: through now (``False``), or is refused (raises).
PushGate = Callable[["Actor[Any]", Frame, FrameDirection], bool]

#: How many frames an actor handles back to back before letting other tasks run.
_FAIRNESS_BATCH = 64


class ActorState(enum.Enum):
    """Where an actor is in its life."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


class Actor(Generic[T]):
    """Base class of every stage.

    Subclass it, list the frame types your handler wants in :attr:`accepts`, override
    :meth:`process_frame`, and call :meth:`push_frame` to send frames on. Frames of other types
    pass through the actor in order without reaching your code, so nothing is ever forgotten.
    ``StartFrame``, ``EndFrame``, ``CancelFrame`` and ``InterruptionFrame`` are always forwarded
    by the runtime (after your handler if you accept them): never push those on yourself.

    Args:
        name: Name used in logs and snapshots (default ``ClassName#n``).
        mailbox_size: Capacity of the data lane (default: the session's).
        restart_policy: Restart instead of escalating when a handler raises.

    Example::

        class Upper(Actor[TextFrame]):
            accepts = (TextFrame,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, TextFrame)
                await self.push_frame(TextFrame(frame.text.upper()), direction)
    """

    #: Frame types delivered to :meth:`process_frame`; anything else passes through.
    #: (An :class:`~runtime.InterruptionMarkerFrame` only reaches actors that name it.)
    accepts: ClassVar[tuple[type[Frame], ...]] = (Frame,)

    #: Mark this actor's output at interruptions: each interruption queues an
    #: :class:`~runtime.InterruptionMarkerFrame` to its downstream neighbours, behind what it
    #: pushed before, ahead of what it pushes after (an output stage sets it).
    marks_interruptions: ClassVar[bool] = False

    def __init__(
        self,
        *,
        name: str | None = None,
        mailbox_size: int | None = None,
        restart_policy: RestartPolicy | None = None,
    ) -> None:
        self._name = name or f"{type(self).__name__}#{next(_names)}"
        self._mailbox_size = mailbox_size
        self.restart_policy = restart_policy
        self._mailbox: Mailbox | None = None
        self._session: Session | None = None
        self._downstream: list[Actor[Any]] = []
        self._upstream: list[Actor[Any]] = []
        self._state = ActorState.CREATED
        self._accept_cache: dict[type[Frame], bool] = {}
        self._started = trio.Event()
        # Made by the first wait_stopped() (few actors are waited for); set by _finish().
        self._stopped: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._work_scope: trio.CancelScope | None = None
        self._work_cancelled = False
        self._busy: Frame | None = None
        self._interrupt_hooks: list[Callable[[], object]] = []
        self._lifecycle: Frame | None = None
        self._sys_lifecycle: Frame | None = None
        self._end_forwarded = False
        self._relaying = False
        self._gate: PushGate | None = None
        self._watchers: list[Actor[Any]] = []
        self._background: set[trio.CancelScope] = set()
        self._restarts = 0
        self._dead_letters = 0
        self._crash: BaseException | None = None
        self.metrics_enabled = False
        self.usage_metrics_enabled = False
        self.report_only_initial_ttfb = False

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        """The actor's name (unique within its session)."""
        return self._name

    @property
    def state(self) -> ActorState:
        """The actor's lifecycle state."""
        return self._state

    @property
    def ref(self) -> ActorRef[T]:
        """A typed reference for direct sends and asks."""
        return ActorRef(self)

    @property
    def session(self) -> Session:
        """The session running this actor.

        Raises:
            SessionStateError: the actor has not been added to a running session.
        """
        if self._session is None:
            from ._errors import SessionStateError

            raise SessionStateError(
                f"actor {self._name!r} is not running in a session: put it in a Pipeline run "
                "by a PipelineTask, or spawn it with Session.spawn()"
            )
        return self._session

    @property
    def log(self) -> Any:
        """A structlog logger bound to this actor's session, name and current turn."""
        session = self._session.name if self._session is not None else None
        return _logger.bind(session=session, actor=self._name, turn=current_turn.get())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._state.value}>"

    # ------------------------------------------------------------------ hooks

    async def on_start(self) -> None:
        """Called once the ``StartFrame`` reaches the actor (and again after a restart)."""

    async def on_stop(self) -> None:
        """Called when the actor stops (end, cancel, removal). Time-boxed and shielded."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Handle one accepted frame. The base implementation does nothing.

        Runs in the actor's data task for ordered frames and in its system task for system
        frames. Cancelled by an interruption when the frame is interruptible.
        """

    async def on_ask(self, frame: Frame) -> object:
        """Answer a request sent with :meth:`ActorRef.ask`; the return value is the reply."""
        raise NotImplementedError(f"actor {self._name!r} does not answer asks (override on_ask)")

    # ------------------------------------------------------------------ typing

    def accepts_frame(self, frame: Frame) -> bool:
        """Whether ``frame`` reaches :meth:`process_frame` (its type is in :attr:`accepts`)."""
        return self._accepts_type(type(frame))

    def _accepts_type(self, cls: type[Frame]) -> bool:
        try:
            return self._accept_cache[cls]
        except KeyError:
            ok = issubclass(cls, self.accepts)
            if ok and issubclass(cls, InterruptionMarkerFrame):
                # The runtime's own bookkeeping: only for actors that ask for it by name.
                ok = any(issubclass(a, InterruptionMarkerFrame) for a in self.accepts)
            self._accept_cache[cls] = ok
            return ok

    def _check_accepts(self, frame: Frame) -> None:
        if not isinstance(frame, Frame):
            raise FrameTypeError(
                f"actor {self._name!r} only takes frames; got {type(frame).__name__}"
            )
        if not self._accepts_type(type(frame)):
            wanted = ", ".join(c.__name__ for c in self.accepts)
            raise FrameTypeError(
                f"actor {self._name!r} ({type(self).__name__}) does not accept "
                f"{type(frame).__name__}; its mailbox takes: {wanted}"
            )

    # ------------------------------------------------------------------ sending

    async def push_frame(self, frame: Frame, direction: FrameDirection = DOWNSTREAM) -> None:
        """Send ``frame`` to the neighbours in ``direction``.

        Downstream data waits while a neighbour's data lane is full (backpressure); system
        frames and upstream frames never wait. An upstream frame passes a neighbour that has
        stopped (ended) on to that neighbour's own upstream neighbours, so errors reported
        while a pipeline drains still reach its input end; other frames to a stopped
        neighbour are counted as dead letters. An :class:`InterruptionFrame` takes effect
        (cancels the turn) the moment it is pushed; stages handle it in the new turn.

        Cancellation: a frame is either queued with a neighbour or not; when several
        neighbours are linked, the ones before the cancelled wait have it.
        """
        gate = self._gate
        if gate is not None and gate(self, frame, direction):
            return  # held by the task that will run this actor, delivered once it has started
        session = self._session
        if session is None:
            raise self._not_running()
        if frame is self._lifecycle or frame is self._sys_lifecycle:
            # A Pipecat habit: forwarding the lifecycle frame being handled. The runtime
            # forwards it itself, so this push would duplicate it.
            return
        turn = frame.turn
        if type(frame) is InterruptionFrame:
            session._apply_interruption(frame)
            # The interruption opens the new turn: stages handle it (and push) in that turn.
            turn = session.turn
        elif turn is None:
            turn = session.turn
        item = (frame, direction, turn, None)
        targets = self._upstream if direction is UPSTREAM else self._downstream
        if len(targets) == 1 and not isinstance(frame, SystemFrame):
            mailbox = targets[0]._mailbox
            if mailbox is not None and not mailbox.closed and mailbox.try_put_data(item):
                return
        await self._deliver(item)

    async def push_error(
        self,
        error: str,
        *,
        exception: BaseException | None = None,
        category: str = "unknown",
        fatal: bool = False,
    ) -> None:
        """Report an error upstream as an :class:`ErrorFrame` and log it.

        Returns once the error has been delivered: it has reached the input end of the
        topology (a ``PipelineTask`` has it in ``task.errors`` and has called its
        ``on_upstream`` listeners) or a stage that handles ``ErrorFrame`` has taken it. So
        whatever the actor pushes after ``push_error`` (the end of a failed answer, say)
        reaches the output only after the error has reached the task.

        ``category`` is an open tag (see :class:`ErrorFrame`). The text and the exception pass
        through the registered scrubbers first (:func:`runtime.add_scrubber`; with ``actors``
        imported, no secret registered in the process, and nothing shaped like a credential,
        travels in the frame).
        """
        session = self._session
        if session is None:
            raise self._not_running()
        error = scrub(error)
        if exception is not None:
            exception = scrub_exception(exception)
        self.log.warning("error", error=error, category=str(category), fatal=fatal)
        frame = ErrorFrame(
            error, fatal=fatal, exception=exception, category=category, source=self._name
        )
        delivery = session._track_delivery(frame)
        try:
            await self.push_frame(frame, UPSTREAM)
            if delivery.count:
                await delivery.done.wait()
        finally:
            session._untrack_delivery(frame)

    async def _deliver(self, item: Item) -> None:
        upstream = item[1] is UPSTREAM
        targets = self._upstream if upstream else self._downstream
        system = isinstance(item[0], SystemFrame)
        # A frame whose delivery its sender awaits (push_error) counts the lanes it is queued in.
        tracked = None
        if system:
            session = self._session
            if session is not None and session._in_flight:
                tracked = session._in_flight.get(item[0].id)
        for target in targets:
            mailbox = target._mailbox
            if mailbox is None or mailbox.closed:
                if upstream and target._state is ActorState.STOPPED and not target._relaying:
                    # A stage that has ended passes frames still travelling upstream on as
                    # if they went through it: an error reported while the pipeline drains
                    # after an EndFrame must still reach the input end.
                    target._relaying = True
                    try:
                        await target._forward(item)
                    finally:
                        target._relaying = False
                else:
                    self._dead_letters += 1
                continue
            if system:
                mailbox.put_system(item)
                if tracked is not None:
                    tracked.count += 1
            elif not mailbox.try_put_data(item):
                try:
                    await mailbox.put_data(item)
                except ActorDeadError:
                    self._dead_letters += 1

    async def _forward(self, item: Item) -> None:
        """Pass an item on unchanged (pass-through and lifecycle frames)."""
        if type(item[0]) is EndFrame:
            self._end_forwarded = True
        direction = item[1]
        if direction is None:
            return
        targets = self._upstream if direction is UPSTREAM else self._downstream
        if len(targets) == 1 and not isinstance(item[0], SystemFrame):
            mailbox = targets[0]._mailbox
            if mailbox is not None and not mailbox.closed and mailbox.try_put_data(item):
                return
        await self._deliver(item)

    def _not_running(self) -> Exception:
        from ._errors import SessionStateError

        return SessionStateError(
            f"actor {self._name!r} is not running in a session: put it in a Pipeline run by a "
            "PipelineTask, or spawn it with Session.spawn()"
        )

    # ------------------------------------------------------------------ background work

    def create_task(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: object,
        name: str | None = None,
        interruptible: bool = False,
    ) -> trio.CancelScope:
        """Run ``fn(*args)`` in the actor's nursery; returns the task's cancel scope.

        With ``interruptible=True`` the task belongs to the current turn: the next
        interruption cancels it, at once, wherever it is waiting. The task ends, at the latest,
        when the actor stops. An exception from ``fn`` is handled like one from a handler
        (restart policy or escalation).
        """
        if self._nursery is None:
            raise self._not_running()
        scope = trio.CancelScope()
        session = self.session
        self._background.add(scope)
        if interruptible:
            session._turn_scopes.add(scope)

        async def runner() -> None:
            _current_actor.set(None)
            try:
                with scope:
                    await fn(*args)
            finally:
                self._background.discard(scope)
                session._turn_scopes.discard(scope)

        self._nursery.start_soon(
            runner, name=name or f"{self._name}:{getattr(fn, '__name__', 'task')}"
        )
        return scope

    @contextmanager
    def on_interruption(self, callback: Callable[[], object]) -> Iterator[None]:
        """Call ``callback()`` the moment an interruption cancels the handler running this block.

        Use it inside :meth:`process_frame` to release what the cancelled work holds at once,
        synchronously, inside :meth:`~runtime.PipelineTask.interrupt` itself, before any task
        runs again: shutting a socket down so the server stops generating, for instance.
        Callbacks run first in the interruption, then the handlers are cancelled, with no
        checkpoint in between: the handler's code never runs between the two, its next
        checkpoint raises ``trio.Cancelled`` and its cleanup runs as usual. The callback runs
        at most once; it is forgotten when the block is left. An exception from it is logged,
        never raised.

        Outside a handler of an interruptible frame the callback is never called (nothing
        there is cancelled by an interruption).
        """
        hooks = self._interrupt_hooks
        hooks.append(callback)
        try:
            yield
        finally:
            # The interruption may have run it (and replaced the list) already.
            if callback in self._interrupt_hooks:
                self._interrupt_hooks.remove(callback)

    def _run_interrupt_hooks(self) -> None:
        hooks, self._interrupt_hooks = self._interrupt_hooks, []
        for hook in hooks:
            try:
                hook()
            except Exception as exc:
                _logger.warning(
                    "on_interruption callback raised",
                    actor=self._name,
                    error=f"{type(exc).__name__}: {exc}",
                )

    @contextmanager
    def turn_scope(self, turn: int | None = None) -> Iterator[trio.CancelScope]:
        """A cancel scope tied to a turn: the next interruption of that turn cancels it.

        Use it for work that belongs to a turn but does not run inside a handler (a tool call,
        a stream consumed by a background task). Code after the ``with`` block is no longer
        cancelled, so it can still report what happened.

        Args:
            turn: The turn the work belongs to (default: the turn of the frame being
                handled, else the session's current turn). If that turn was already
                interrupted, the scope is cancelled at once.
        """
        session = self.session
        if turn is None:
            turn = current_turn.get()
            if turn is None:
                turn = session.turn
        scope = trio.CancelScope()
        if turn < session.turn:
            scope.cancel()
        else:
            session._turn_scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            session._turn_scopes.discard(scope)

    # ------------------------------------------------------------------ watching

    def watch(self, other: Actor[Any] | ActorRef[Any]) -> None:
        """Get an :class:`ActorStoppedFrame` (system lane) when ``other`` stops.

        Idempotent; if ``other`` has already stopped the frame is delivered at once. Accept
        ``ActorStoppedFrame`` in :attr:`accepts` to see it.
        """
        target = other._actor if isinstance(other, ActorRef) else other
        if target._state in (ActorState.STOPPED, ActorState.CRASHED):
            self._notify_stopped(target)
        elif self not in target._watchers:
            target._watchers.append(self)

    def _notify_stopped(self, dead: Actor[Any]) -> None:
        mailbox = self._mailbox
        if mailbox is None or mailbox.closed:
            return
        crashed = dead._state is ActorState.CRASHED
        error = dead._crash
        frame = ActorStoppedFrame(
            dead._name,
            "crashed" if crashed else "stopped",
            f"{type(error).__name__}: {error}" if error is not None else None,
        )
        mailbox.put_system((frame, None, frame.turn or 0, None))

    # ------------------------------------------------------------------ loops (runtime)

    def _attach(self, session: Session) -> None:
        if self._session is not None and self._session is not session:
            raise ValueError(
                f"actor {self._name!r} already belongs to session {self._session.name!r}"
            )
        self._session = session
        if self._mailbox is None:
            self._mailbox = self._make_mailbox(self._mailbox_size or session.mailbox_size)

    def _make_mailbox(self, capacity: int) -> Mailbox:
        return Mailbox(capacity, self._name)

    def _serve_system_soon(self) -> bool:
        """Start the task that serves the system lane; ``False`` if the actor's nursery does
        not take tasks now (the frame then waits for the next one)."""
        nursery = self._nursery
        if nursery is None:
            return False
        try:
            nursery.start_soon(self._serve_system, name=f"{self._name}:system")
        except RuntimeError:  # the nursery is closing
            return False
        return True

    async def _serve_system(self) -> None:
        """Serve the system lane until it is empty, then end: system frames are rare, so the
        task exists only while there are some (it runs beside the data loop, as before)."""
        mailbox = self._mailbox
        session = self._session
        assert mailbox is not None
        assert session is not None
        _current_actor.set(self)
        try:
            while mailbox._system:
                item = mailbox.get_system_nowait()
                try:
                    frame = item[0]
                    if item[3] is not None:
                        await self._answer(item)
                        continue
                    cls = type(frame)
                    if cls is StartFrame:
                        await self._start(frame)  # type: ignore[arg-type]
                    accepted = self._accepts_type(cls)
                    if accepted:
                        reset_token = current_turn.set(item[2])
                        self._sys_lifecycle = frame if cls in _LIFECYCLE else None
                        try:
                            await self.process_frame(frame, item[1] or DOWNSTREAM)
                        finally:
                            self._sys_lifecycle = None
                            current_turn.reset(reset_token)
                    if not accepted or cls in _LIFECYCLE:
                        await self._forward(item)
                    if cls is CancelFrame:
                        await self._stop()
                        return
                finally:
                    if session._in_flight and item[1] is not None:
                        # Handled here: passed on (counted again there), or taken.
                        session._delivery_step(item[0])
        finally:
            # No checkpoint between the last emptiness check and this: a frame put after it
            # starts a new task.
            mailbox._system_serving = False

    async def _data_loop(self) -> None:
        mailbox = self._mailbox
        session = self._session
        assert mailbox is not None
        assert session is not None
        await self._started.wait()
        accept_cache = self._accept_cache
        data = mailbox._data
        batch = 0
        last_turn: int | None = None
        while True:
            with trio.CancelScope() as scope:
                self._work_scope = scope
                self._work_cancelled = False
                while True:
                    if self._work_cancelled:
                        # An interruption landed after the last handler's last checkpoint:
                        # serve the next frame in a fresh scope, or its handler would be
                        # cancelled in its place.
                        break
                    if batch >= _FAIRNESS_BATCH:
                        batch = 0
                        await trio.lowlevel.checkpoint()
                    if data:
                        item = data.popleft()
                        mailbox.delivered += 1
                        if mailbox._send_waiting:
                            mailbox._wake_sender()
                        batch += 1
                    else:
                        item = await mailbox.get_data()
                        batch = 0
                    frame = item[0]
                    if item[3] is not None:
                        await self._answer(item)
                        continue
                    if frame.interruptible and item[2] < session.turn:
                        mailbox.count_stale()
                        continue
                    cls = type(frame)
                    ok = accept_cache.get(cls)
                    if ok is None:
                        ok = self._accepts_type(cls)
                    if not ok:
                        await self._forward(item)
                    else:
                        turn = item[2] if frame.interruptible else session.turn
                        if turn != last_turn:
                            # This task's own context variables: no reset between frames.
                            current_turn.set(turn)
                            last_turn = turn
                        self._busy = frame
                        if cls is EndFrame:
                            self._lifecycle = frame
                        try:
                            await self.process_frame(frame, item[1] or DOWNSTREAM)
                        finally:
                            self._busy = None
                            self._lifecycle = None
                        if cls is EndFrame:
                            await self._forward(item)
                    if cls is EndFrame and self._end_forwarded:
                        current_turn.set(None)
                        await self._stop()
                        return
            if scope.cancelled_caught:
                # Interrupted mid-handler: the frame is abandoned, serve the next one.
                self._work_scope = None

    async def _answer(self, item: Item) -> None:
        reply = item[3]
        assert reply is not None
        reset_token = current_turn.set(item[2])
        try:
            value = await self.on_ask(item[0])
        except Exception as exc:
            reply.set(outcome.Error(exc))
        except BaseException:
            # Cancelled: the actor stops (or crashed) before it could answer. Tell the asker
            # now rather than let it wait for a reply that cannot come.
            reply.set(
                outcome.Error(
                    ActorDeadError(
                        f"actor {self._name!r} stopped before it answered {type(item[0]).__name__}"
                    )
                )
            )
            raise
        else:
            reply.set(outcome.Value(value))
        finally:
            current_turn.reset(reset_token)

    async def _start(self, frame: StartFrame) -> None:
        if self._started.is_set():
            return
        self.metrics_enabled = frame.enable_metrics
        self.usage_metrics_enabled = frame.enable_usage_metrics
        self.report_only_initial_ttfb = frame.report_only_initial_ttfb
        self._state = ActorState.STARTING
        await self.on_start()
        self._state = ActorState.RUNNING
        self._started.set()
        self.session._log.debug("actor started", actor=self._name)

    async def _stop(self, *, crashed: bool = False) -> None:
        """Stop for good: ``on_stop`` (shielded, time-boxed), close the mailbox, end the loops."""
        if self._state in (ActorState.STOPPING, ActorState.STOPPED, ActorState.CRASHED):
            return
        self._state = ActorState.STOPPING
        session = self._session
        timeout = session.stop_timeout_secs if session is not None else 5.0
        with trio.move_on_after(timeout, shield=True) as cs:
            try:
                await self.on_stop()
            except Exception as exc:
                _logger.warning(
                    "on_stop raised", actor=self._name, error=f"{type(exc).__name__}: {exc}"
                )
        if cs.cancelled_caught:
            _logger.warning("on_stop timed out", actor=self._name, timeout_secs=timeout)
        upstream = self._finish(crashed=crashed, keep_upstream=True)
        if upstream:
            # Frames travelling upstream (errors) that were queued here when the actor stopped
            # are passed on, as a stopped actor passes on those that arrive later: an error
            # reported while the pipeline drains still reaches the input end.
            with trio.move_on_after(timeout, shield=True):
                self._relaying = True
                try:
                    for item in upstream:
                        try:
                            await self._forward(item)
                        finally:
                            if session is not None and session._in_flight:
                                session._delivery_step(item[0])
                finally:
                    self._relaying = False

    def _finish(self, *, crashed: bool, keep_upstream: bool = False) -> list[Item]:
        """Mark the actor stopped, close its mailbox, end its loops. With ``keep_upstream``,
        the frames travelling upstream still queued are returned (to be passed on) instead
        of dropped."""
        self._state = ActorState.CRASHED if crashed else ActorState.STOPPED
        mailbox = self._mailbox
        left = mailbox.close() if mailbox is not None else []
        session = self._session
        upstream: list[Item] = []
        for item in left:
            if item[3] is not None:
                item[3].set(outcome.Error(ActorDeadError(f"actor {self._name!r} has stopped")))
            elif keep_upstream and item[1] is UPSTREAM:
                upstream.append(item)
            elif session is not None and session._in_flight and item[1] is not None:
                session._delivery_step(item[0])  # it goes no further
        if self._scope is not None:
            self._scope.cancel()
        if self._stopped is not None:
            self._stopped.set()
        for watcher in self._watchers:
            watcher._notify_stopped(self)
        if self._session is not None:
            self._session._log.debug(
                "actor stopped",
                actor=self._name,
                state=self._state.value,
                unprocessed=len(left) - len(upstream),
            )
        return upstream

    def _statistics(self) -> MailboxStatistics | None:
        return self._mailbox.statistics() if self._mailbox is not None else None


@final
@attrs.frozen(repr=False)
class ActorRef(Generic[T]):
    """A typed handle on an actor: direct sends and request/reply.

    ``ActorRef[T]`` only takes frames of type ``T`` (checked statically by mypy and at run
    time: anything else raises :class:`~runtime.FrameTypeError` at the send).
    """

    _actor: Actor[Any]

    @property
    def name(self) -> str:
        """The actor's name."""
        return self._actor.name

    @property
    def actor(self) -> Actor[Any]:
        """The actor itself (for inspection; talk to it through the ref)."""
        return self._actor

    def is_alive(self) -> bool:
        """Whether the actor still takes frames."""
        mailbox = self._actor._mailbox
        return mailbox is not None and not mailbox.closed and self._actor._session is not None

    def __repr__(self) -> str:
        return f"ActorRef({self._actor.name!r})"

    def _item(self, frame: Frame, reply: _Reply | None) -> tuple[Mailbox, Item]:
        actor = self._actor
        actor._check_accepts(frame)
        mailbox = actor._mailbox
        session = actor._session
        if mailbox is None or session is None or mailbox.closed:
            raise ActorDeadError(f"actor {actor.name!r} is not running")
        turn = frame.turn if frame.turn is not None else session.turn
        return mailbox, (frame, None, turn, reply)

    async def send(self, frame: T) -> None:
        """Send ``frame`` straight to the actor (not through its links).

        Waits while the actor's data lane is full; system frames never wait.

        Raises:
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        mailbox, item = self._item(frame, None)
        if isinstance(frame, SystemFrame):
            mailbox.put_system(item)
        elif not mailbox.try_put_data(item):
            await mailbox.put_data(item)
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frame: T) -> None:
        """Send without waiting.

        Raises:
            trio.WouldBlock: the data lane is full.
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        mailbox, item = self._item(frame, None)
        if isinstance(frame, SystemFrame):
            mailbox.put_system(item)
        elif not mailbox.try_put_data(item):
            raise trio.WouldBlock

    def tell(self, frame: T) -> None:
        """Send without ever waiting, even past the data lane's bound.

        Use it for the one edge that closes a cycle of actors (a reply path), where a
        blocking send could deadlock. The frame is queued in order with the other data.

        Raises:
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        mailbox, item = self._item(frame, None)
        if isinstance(frame, SystemFrame):
            mailbox.put_system(item)
        else:
            mailbox.put_data_unbounded(item)

    async def ask(self, frame: T, *, timeout: float | None = 5.0) -> Any:  # noqa: ASYNC109
        """Send ``frame`` and wait for the actor's :meth:`Actor.on_ask` reply.

        Each ask has its own reply slot, and the deadline is enforced here, never by the
        callee. Cancelling the caller abandons the reply.

        Args:
            frame: The request.
            timeout: Seconds to wait for the reply (``None``: no limit).

        Raises:
            SelfAskError: an actor asked itself (that would deadlock).
            AskTimeoutError: no reply within ``timeout`` (which also bounds the wait for
                room in a full data lane).
            ActorDeadError: the actor has stopped (or stops before replying).
            FrameTypeError: the actor does not accept this frame type.
            Exception: whatever ``on_ask`` raised.
        """
        if _current_actor.get() is self._actor:
            raise SelfAskError(
                f"actor {self._actor.name!r} asked itself; it would wait on its own mailbox "
                "forever (call the method directly, or use create_task)"
            )
        reply = _Reply()
        mailbox, item = self._item(frame, reply)
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        with trio.move_on_at(deadline):
            # The deadline also bounds the wait for room in a full data lane.
            if isinstance(frame, SystemFrame):
                mailbox.put_system(item)
            elif not mailbox.try_put_data(item):
                await mailbox.put_data(item)
            await reply.event.wait()
        if reply.result is None:
            raise AskTimeoutError(
                f"actor {self._actor.name!r} did not answer {type(frame).__name__} "
                f"within {timeout} s"
            )
        return reply.result.unwrap()

    def statistics(self) -> MailboxStatistics:
        """The actor's mailbox statistics."""
        stats = self._actor._statistics()
        if stats is None:
            raise ActorDeadError(f"actor {self._actor.name!r} has no mailbox yet")
        return stats

    async def wait_stopped(self) -> None:
        """Wait until the actor has stopped (or crashed for good)."""
        actor = self._actor
        if actor._state in (ActorState.STOPPED, ActorState.CRASHED):
            await trio.lowlevel.checkpoint()
            return
        if actor._stopped is None:
            actor._stopped = trio.Event()
        await actor._stopped.wait()


def iter_actors(actors: Iterable[Actor[Any]]) -> list[Actor[Any]]:
    """Deduplicated list, order kept."""
    seen: dict[int, Actor[Any]] = {}
    for actor in actors:
        seen.setdefault(id(actor), actor)
    return list(seen.values())
