"""The user-facing actor API: :class:`Actor` (what a stage subclasses) and :class:`ActorRef`.

An ``Actor`` holds the stage's own state and code: what it accepts, its handlers and hooks,
and the calls it makes (push, create tasks, watch, companions). The machinery that runs it
lives in the *cell* the session makes when the actor is spawned (:mod:`runtime._cell`): its
mailbox, links, loops, cancel scopes and restart state. The actor reaches its cell only
through :class:`ActorPort` and its session only through :class:`SessionView`, two protocols
defined here, so this module imports neither (dependencies run session → cell → actor).

``Actor`` is deliberately a plain class rather than an attrs class: applications subclass it
the way Pipecat users subclass ``FrameProcessor`` (``__init__`` calling ``super().__init__()``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Final, Generic, Protocol, final

import attrs
import structlog
import trio
from typing_extensions import TypeVar

from ._errors import (
    ActorDeadError,
    AskTimeoutError,
    FrameTypeError,
    SelfAskError,
    SessionStateError,
)
from ._frames import (
    ActorStoppedFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    InterruptionFrame,
    InterruptionMarkerFrame,
    StartFrame,
    SystemFrame,
)
from ._lifecycle import TERMINAL, ActorState, Lifecycle
from ._mailbox import Envelope, Mailbox, MailboxStatistics, Reply
from ._params import PipelineParams
from ._scrub import scrub, scrub_exception
from ._snapshot import SessionSnapshot
from ._supervision import RestartPolicy
from ._turn import CURRENT_TURN

__all__ = [
    "CURRENT_ACTOR",
    "NOT_NOW",
    "Actor",
    "ActorPort",
    "ActorRef",
    "PushGate",
    "SessionView",
    "accept_cache_for",
    "accepts_type",
    "bind",
    "companions_of",
    "lifecycle_of",
    "notify_watchers",
    "port_of",
    "push_gate_of",
    "set_push_gate",
]

T = TypeVar("T", bound=Frame, default=Frame)

DOWNSTREAM = FrameDirection.DOWNSTREAM
UPSTREAM = FrameDirection.UPSTREAM

_names = itertools.count(1)

#: The actor whose loop the running task serves (``None`` in its background tasks and outside
#: any actor). Set by the cell; read to refuse self-asks and by the task's push gate.
CURRENT_ACTOR: ContextVar[Actor[Any] | None] = ContextVar("trouper_current_actor", default=None)


@final
class _NotNow:
    """The type of :data:`NOT_NOW` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_NOW"

    def __reduce__(self) -> str:
        return "NOT_NOW"


#: What :meth:`Actor.on_ask_nowait` returns for a request it cannot answer without waiting:
#: the ask is then queued and answered by :meth:`Actor.on_ask`, as any other.
NOT_NOW: Final[Any] = _NotNow()

_logger = structlog.get_logger("trouper.runtime")

#: Installed by the :class:`~runtime.PipelineTask` that will run an actor, until the task is
#: ready: decides whether a push from outside the session is held for the start (``True``),
#: goes through now (``False``), or is refused (raises).
PushGate = Callable[["Actor[Any]", Frame, FrameDirection], bool]


class SessionView(Protocol):
    """The session as its actors see it: what :class:`runtime.Session` offers them.

    :attr:`Actor.session` is typed with this protocol (the session module depends on this
    one, not the reverse); the object is the running :class:`runtime.Session`.
    """

    @property
    def name(self) -> str:
        """The session's name."""

    @property
    def turn(self) -> int:
        """The current turn (raised by every interruption)."""

    @property
    def running(self) -> bool:
        """Whether the session can still spawn actors."""

    @property
    def params(self) -> PipelineParams:
        """The settings its ``StartFrame`` carries."""

    @property
    def mailbox_size(self) -> int:
        """Default data-lane capacity of its actors."""

    @property
    def stop_timeout_secs(self) -> float:
        """Bound on each actor's ``on_stop``."""

    def spawn(self, actor: Actor[Any], *, start: bool = True) -> ActorRef[Any]:
        """Start ``actor`` in the session."""

    def link(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Link two actors."""

    def unlink(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Remove a link."""

    def insert_between(
        self,
        actor: Actor[Any],
        upstream: Actor[Any] | ActorRef[Any],
        downstream: Actor[Any] | ActorRef[Any],
    ) -> ActorRef[Any]:
        """Spawn ``actor`` into a link."""

    async def remove(self, actor: Actor[Any] | ActorRef[Any]) -> None:
        """Splice an actor out and stop it."""

    def actors(self) -> list[ActorRef[Any]]:
        """Every actor of the session."""

    def get(self, name: str) -> ActorRef[Any]:
        """The actor called ``name``."""

    def interrupt(self, reason: str | None = None) -> InterruptionFrame:
        """Start a new turn."""

    def snapshot(self) -> SessionSnapshot:
        """What the session is doing."""

    def log_snapshot(self) -> SessionSnapshot:
        """Take a snapshot and log it."""


class ActorPort(Protocol):
    """What an actor needs from the cell that runs it (implemented by ``runtime._cell.Cell``)."""

    @property
    def session(self) -> SessionView:
        """The session the cell belongs to."""

    @property
    def mailbox(self) -> Mailbox:
        """The actor's mailbox."""

    @property
    def start_frame(self) -> StartFrame | None:
        """The ``StartFrame`` the actor started with."""

    @property
    def crash(self) -> BaseException | None:
        """The actor's last crash, if any."""

    @property
    def answers_nowait(self) -> bool:
        """Whether the actor's class overrides :meth:`Actor.on_ask_nowait`."""

    def try_push(
        self, frame: Frame, direction: FrameDirection, uninterruptible: bool = False
    ) -> Envelope | None:
        """Send without waiting if possible; else the envelope to :meth:`deliver`
        (``uninterruptible``: no interruption drops it)."""

    def push_now(self, frame: Frame, direction: FrameDirection, uninterruptible: bool) -> bool:
        """Queue a data frame with the single neighbour in ``direction`` if that needs no
        waiting; whether it did (``False``: nothing was done)."""

    async def deliver(self, envelope: Envelope) -> None:
        """Send ``envelope`` to the neighbours in its direction (may wait for room)."""

    def envelope(self, frame: Frame, reply: Reply | None) -> Envelope:
        """An envelope for a frame sent straight to the actor (stamped with the turn)."""

    def tracking(self, frame: Frame) -> AbstractAsyncContextManager[None]:
        """Within the block, count where ``frame`` is queued; leaving it normally waits
        until it has been delivered."""

    def create_task(
        self,
        fn: Callable[..., Awaitable[object]],
        args: tuple[object, ...],
        name: str,
        interruptible: bool,
    ) -> trio.CancelScope | None:
        """Start a background task of the actor (``None`` if its loops do not run)."""

    @property
    def handles_nowait(self) -> bool:
        """Whether the actor's class overrides :meth:`Actor.process_frame_nowait`."""

    def handle_nowait(self, envelope: Envelope) -> bool:
        """Whether the actor, idle, handled the data frame of ``envelope`` at once
        (:meth:`Actor.process_frame_nowait`)."""

    def answer_nowait(self, frame: Frame) -> object:
        """The actor's answer to ``frame`` given at once by :meth:`Actor.on_ask_nowait`, if
        the actor is idle on the request's lane (nothing queued in it, none of its frames
        being handled); else :data:`NOT_NOW`."""

    def add_interrupt_hook(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when an interruption cancels the running handler."""

    def discard_interrupt_hook(self, callback: Callable[[], object]) -> None:
        """Forget a callback given to :meth:`add_interrupt_hook`."""

    def turn_scope(self, turn: int | None) -> AbstractContextManager[trio.CancelScope]:
        """A cancel scope that the interruption of ``turn`` cancels."""

    def notify(self, frame: ActorStoppedFrame) -> None:
        """Queue a notice on the actor's system lane (dropped if it has stopped)."""

    def add_companion(self, actor: Actor[Any], stop_with_owner: bool) -> None:
        """Spawn ``actor`` now as a companion of this one."""


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

    Example (a frame of your own, and an actor that changes it)::

        @attrs.frozen(slots=True)
        class Word(DataFrame):
            text: str

        class Upper(Actor[Word]):
            accepts = (Word,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Word)
                await self.push_frame(Word(frame.text.upper()), direction)
    """

    #: Frame types delivered to :meth:`process_frame`; anything else passes through.
    #: (An :class:`~runtime.InterruptionMarkerFrame` only reaches actors that name it.)
    accepts: ClassVar[tuple[type[Frame], ...]] = (Frame,)

    #: Mark this actor's output at interruptions: each interruption queues an
    #: :class:`~runtime.InterruptionMarkerFrame` to its downstream neighbours, behind what it
    #: pushed before, ahead of what it pushes after (an output stage sets it).
    marks_interruptions: ClassVar[bool] = False

    #: Serve the mailbox on demand: the actor has no task of its own while its mailbox is
    #: empty; a task starts when frames arrive and ends once it has handled them all (the
    #: semantics are the same: order, asks, interruptions, restarts). For an actor that sees
    #: a few frames now and then (a companion answering a few asks per turn), it saves a
    #: task that would wait most of the time (fewer objects for the garbage collector, a
    #: quicker start), at the price of starting a task per burst of frames. Leave it off
    #: for a stage that frames stream through.
    serve_on_demand: ClassVar[bool] = False

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
        self._life = Lifecycle(self._name)
        # The cell running the actor, once it is spawned (see bind()).
        self._cell: ActorPort | None = None
        self._gate: PushGate | None = None
        # Its companions, (actor, stop_with_owner), in the order given; the one it belongs to.
        # Tuples (the empty one is shared): most actors have no companion and no watcher.
        self._companions: tuple[tuple[Actor[Any], bool], ...] = ()
        self._owner: Actor[Any] | None = None
        self._watchers: tuple[Actor[Any], ...] = ()

    # ------------------------------------------------------------------ identity

    @property
    def name(self) -> str:
        """The actor's name (unique within its session)."""
        return self._name

    @property
    def state(self) -> ActorState:
        """The actor's lifecycle state."""
        return self._life.state

    @property
    def ref(self) -> ActorRef[T]:
        """A typed reference for direct sends and asks."""
        return ActorRef(self)

    @property
    def mailbox_size(self) -> int | None:
        """The data-lane capacity asked for at construction (``None``: the session's)."""
        return self._mailbox_size

    @property
    def session(self) -> SessionView:
        """The session running this actor (a :class:`runtime.Session`).

        Raises:
            SessionStateError: the actor has not been added to a running session.
        """
        return self._port().session

    @property
    def start_frame(self) -> StartFrame | None:
        """The ``StartFrame`` the actor started with (``None`` until it has started).

        Its ``params`` are the session's settings (the task's :class:`~runtime.PipelineParams`,
        possibly a subclass). A restarted actor receives this same frame again.
        """
        cell = self._cell
        return cell.start_frame if cell is not None else None

    @property
    def log(self) -> Any:
        """A structlog logger bound to this actor's session, name and turn: the handled
        frame's (:func:`runtime.current_turn`), else the session's current turn."""
        cell = self._cell
        turn = CURRENT_TURN.get()
        if cell is None:
            return _logger.bind(session=None, actor=self._name, turn=turn)
        session = cell.session
        return _logger.bind(
            session=session.name, actor=self._name, turn=session.turn if turn is None else turn
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self._life.state.value}>"

    def _port(self) -> ActorPort:
        cell = self._cell
        if cell is None:
            raise self._not_running()
        return cell

    def _not_running(self) -> SessionStateError:
        return SessionStateError(
            f"actor {self._name!r} is not running in a session: put it in a Pipeline run by a "
            "PipelineTask, or spawn it with Session.spawn()"
        )

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

    def on_ask_nowait(self, frame: Frame) -> object:
        """Answer a request at once, without waiting, or return :data:`NOT_NOW` (the default).

        An actor whose answers rarely need to wait overrides it next to :meth:`on_ask`. When
        an ask finds the actor idle on the lane the request travels in (running, nothing
        queued in that lane, no frame of it being handled), :meth:`ActorRef.ask` calls this
        in the asker's own task: no task is started or woken and no reply slot is made, and
        the ask is answered exactly where it would have been (nothing queued before it,
        nothing of its lane handled meanwhile). It runs as the actor:
        :func:`runtime.current_turn`, its ``log`` and the log fields are the actor's while it
        runs. What it returns is the reply; what it raises is raised to the asker, and the
        actor lives on (as with ``on_ask``). It must not change anything before it returns
        :data:`NOT_NOW`: the request is then queued and :meth:`on_ask` answers it, as when
        the actor is busy.
        """
        return NOT_NOW

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        """A synchronous handler tried before :meth:`process_frame`: handle ``frame`` at once
        and return ``True``, or return ``False`` (the default) to have :meth:`process_frame`
        handle it. It must change nothing before it returns ``False``.

        Override it next to :meth:`process_frame` for the frames whose handling never waits
        (the text of a stream passing a stage, a measurement folded into totals): those then
        cost no coroutine. It is called for every accepted data frame but an ``EndFrame``,
        where :meth:`process_frame` would be: in the actor's data loop, as the actor (its
        turn, log and log fields; an interruption cannot cut it short, as it awaits
        nothing); and for a frame sent straight with :meth:`ActorRef.send_nowait` or
        :meth:`ActorRef.tell` that finds the actor idle on its data lane (running, nothing
        queued, no frame being handled), in the sender's task, so that frame is handled
        where it would have been had it been queued (a frame of an interrupted turn is
        dropped as stale, as in the mailbox). To pass frames on, use
        :meth:`push_frame_nowait` or :meth:`push_uninterruptible_nowait`, and return
        ``False`` when they cannot push: then nothing was pushed. An exception it raises is
        the actor's crash, as one from :meth:`process_frame` (for a frame sent straight,
        raised again in a task of the actor's, where its restart policy applies; the sender
        is not told).
        """
        return False

    # ------------------------------------------------------------------ typing

    def accepts_frame(self, frame: Frame) -> bool:
        """Whether ``frame`` reaches :meth:`process_frame` (its type is in :attr:`accepts`)."""
        cls = type(frame)
        cache = accept_cache_for(self.accepts)
        ok = cache.get(cls)
        if ok is None:
            ok = cache[cls] = accepts_type(self.accepts, cls)
        return ok

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
        cell = self._cell
        if cell is None:
            raise self._not_running()
        envelope = cell.try_push(frame, direction)
        if envelope is not None:
            await cell.deliver(envelope)

    async def push_uninterruptible(
        self, frame: Frame, direction: FrameDirection = DOWNSTREAM
    ) -> None:
        """:meth:`push_frame`, but no interruption drops ``frame`` on its way from here, as if
        it were uninterruptible, and without copying it (the frame itself is unchanged: its
        ``interruptible`` still says what it says). The mark travels with the frame for as
        long as the stages after this one pass it on as it came (unaccepted, or pushed on
        from their handler); a stage that makes a new frame, or pushes this one later from
        another task, sends it unmarked. An output stage uses it for what it has shown, so
        that an interruption cannot keep that from the stage that records it.
        """
        gate = self._gate
        if gate is not None:
            # Held until the start, a frame can still be dropped by an interruption: it is
            # held as an uninterruptible copy (a rare case: a push from outside the session).
            held = attrs.evolve(frame, interruptible=False) if frame.interruptible else frame
            if gate(self, held, direction):
                return
        cell = self._cell
        if cell is None:
            raise self._not_running()
        envelope = cell.try_push(frame, direction, True)
        if envelope is not None:
            await cell.deliver(envelope)

    def push_frame_nowait(self, frame: Frame, direction: FrameDirection = DOWNSTREAM) -> bool:
        """:meth:`push_frame` without waiting, for :meth:`process_frame_nowait` (or any code
        that would rather not wait): queue the data frame ``frame`` with the neighbour in
        ``direction`` and return ``True`` if that needs no waiting; else return ``False``
        having done nothing: push it with :meth:`push_frame` then. ``False`` when the
        neighbour's data lane is full or closed, for a system frame or an ``EndFrame`` (their
        pushes do more than queue), with several neighbours in that direction, and when the
        actor is not running. (In a task that has not started yet, the frame is held until
        the start, as :meth:`push_frame` holds it: ``True``.) Never a schedule point.
        """
        gate = self._gate
        if gate is not None and gate(self, frame, direction):
            return True  # held by the task that will run this actor, delivered once it has started
        cell = self._cell
        return cell is not None and cell.push_now(frame, direction, False)

    def push_uninterruptible_nowait(
        self, frame: Frame, direction: FrameDirection = DOWNSTREAM
    ) -> bool:
        """:meth:`push_uninterruptible` without waiting: as :meth:`push_frame_nowait`, with
        the frame marked as :meth:`push_uninterruptible` marks it."""
        gate = self._gate
        if gate is not None:
            held = attrs.evolve(frame, interruptible=False) if frame.interruptible else frame
            if gate(self, held, direction):
                return True
        cell = self._cell
        return cell is not None and cell.push_now(frame, direction, True)

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
        cell = self._port()
        error = scrub(error)
        if exception is not None:
            exception = scrub_exception(exception)
        frame = ErrorFrame(
            error, fatal=fatal, exception=exception, category=category, source=self._name
        )
        self.log.warning("error", error=error, category=frame.category, fatal=fatal)
        async with cell.tracking(frame):
            await self.push_frame(frame, UPSTREAM)

    # ------------------------------------------------------------------ background work

    def create_task(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: object,
        name: str | None = None,
        interruptible: bool = False,
    ) -> trio.CancelScope:
        """Run ``fn(*args)`` in the actor's nursery; returns the task's cancel scope.

        With ``interruptible=True`` the task belongs to the current turn (the handled frame's,
        else the session's): the next interruption cancels it, at once, wherever it is
        waiting; if that turn was already interrupted, it is cancelled from the start. The
        task ends, at the latest, when the actor stops. An exception from ``fn`` is handled
        like one from a handler (restart policy or escalation).
        """
        task_name = name or f"{self._name}:{getattr(fn, '__name__', 'task')}"
        scope = self._port().create_task(fn, args, task_name, interruptible)
        if scope is None:
            raise self._not_running()
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
        cell = self._port()
        cell.add_interrupt_hook(callback)
        try:
            yield
        finally:
            # The interruption may have run it (and forgotten it) already.
            cell.discard_interrupt_hook(callback)

    def turn_scope(self, turn: int | None = None) -> AbstractContextManager[trio.CancelScope]:
        """A cancel scope tied to a turn: the next interruption of that turn cancels it.

        Use it for work that belongs to a turn but does not run inside a handler (a job
        started by a handler that outlives it, a stream consumed by a background task). Code
        after the ``with`` block is no longer cancelled, so it can still report what happened.

        Args:
            turn: The turn the work belongs to (default: the turn of the frame being
                handled, else the session's current turn). If that turn was already
                interrupted, the scope is cancelled at once.
        """
        return self._port().turn_scope(turn)

    # ------------------------------------------------------------------ watching

    def watch(self, other: Actor[Any] | ActorRef[Any]) -> None:
        """Get an :class:`ActorStoppedFrame` (system lane) when ``other`` stops.

        Idempotent; if ``other`` has already stopped the frame is delivered at once. Accept
        ``ActorStoppedFrame`` in :attr:`accepts` to see it.
        """
        target = other.actor if isinstance(other, ActorRef) else other
        if target._life.state in TERMINAL:
            cell = self._cell
            if cell is not None:
                cell.notify(_stopped_frame(target))
        elif self not in target._watchers:
            target._watchers = (*target._watchers, self)

    # ------------------------------------------------------------------ companions

    def add_companion(self, actor: Actor[Any], *, stop_with_owner: bool = True) -> None:
        """Make ``actor`` a companion of this one: a helper that runs beside it.

        A companion is spawned in this actor's session when this actor is spawned (or at once
        if it already runs), starts with this actor's ``StartFrame``, and has no links of its
        own: what it pushes goes to this actor's neighbours of the moment (downstream to its
        downstream neighbours, upstream to its upstream ones, following any relinking). It
        stops when this actor stops, after it (with ``stop_with_owner=False``: when the
        session closes). Interruptions treat it like any actor; snapshots list it with
        ``companion_of``. Call it in ``__init__`` (usual) or later.

        Raises:
            ValueError: ``actor`` is this actor, or already belongs to another one.
            SessionStateError: ``actor`` was already spawned, or this actor has stopped.
        """
        if actor is self:
            raise ValueError(f"actor {self._name!r} cannot be its own companion")
        if actor._owner is self:
            return
        if actor._owner is not None:
            raise ValueError(
                f"actor {actor.name!r} is a companion of {actor._owner.name!r} already"
            )
        if actor._cell is not None or actor._life.state is not ActorState.CREATED:
            raise SessionStateError(
                f"actor {actor.name!r} was already spawned; a companion is spawned by its owner"
            )
        cell = self._cell
        if cell is not None and self._life.state in TERMINAL:
            raise SessionStateError(
                f"actor {self._name!r} has stopped; it takes no companion {actor.name!r}"
            )
        actor._owner = self
        self._companions = (*self._companions, (actor, stop_with_owner))
        if cell is not None:
            cell.add_companion(actor, stop_with_owner)


def _stopped_frame(dead: Actor[Any]) -> ActorStoppedFrame:
    cell = port_of(dead)
    error = cell.crash if cell is not None else None
    return ActorStoppedFrame(
        dead.name,
        "crashed" if dead.state is ActorState.CRASHED else "stopped",
        f"{type(error).__name__}: {error}" if error is not None else None,
    )


def _check_accepts(actor: Actor[Any], frame: Frame) -> None:
    """Refuse a frame sent straight to ``actor`` that its handler does not take."""
    if not isinstance(frame, Frame):
        raise FrameTypeError(f"actor {actor.name!r} only takes frames; got {type(frame).__name__}")
    if not actor.accepts_frame(frame):
        wanted = ", ".join(c.__name__ for c in actor.accepts)
        raise FrameTypeError(
            f"actor {actor.name!r} ({type(actor).__name__}) does not accept "
            f"{type(frame).__name__}; its mailbox takes: {wanted}"
        )


#: What :func:`accepts_type` answered, by ``accepts`` tuple then frame type: one dict per kind
#: of stage, shared by all its actors (not one per actor for the garbage collector to scan).
_ACCEPT_CACHES: dict[tuple[type[Frame], ...], dict[type[Frame], bool]] = {}


def accept_cache_for(accepts: tuple[type[Frame], ...]) -> dict[type[Frame], bool]:
    """The cache of :func:`accepts_type` for handlers that list ``accepts`` (frame type →
    whether it reaches the handler), shared by every actor listing the same types; fill it
    with :func:`accepts_type`."""
    cache = _ACCEPT_CACHES.get(accepts)
    if cache is None:
        cache = _ACCEPT_CACHES[accepts] = {}
    return cache


def accepts_type(accepts: tuple[type[Frame], ...], cls: type[Frame]) -> bool:
    """Whether a frame of type ``cls`` reaches a handler that lists ``accepts``.

    An :class:`~runtime.InterruptionMarkerFrame` (the runtime's own bookkeeping) only reaches
    handlers that name it (or a subclass) explicitly.
    """
    ok = issubclass(cls, accepts)
    if ok and issubclass(cls, InterruptionMarkerFrame):
        ok = any(issubclass(a, InterruptionMarkerFrame) for a in accepts)
    return ok


# ---------------------------------------------------------------------- the runtime's way in
#
# The cell, the session and the task reach an actor only through these functions (and the
# actor's public API): they are the one place that knows the actor's runtime attributes.


def bind(actor: Actor[Any], port: ActorPort) -> Lifecycle:
    """Attach ``actor`` to the cell that runs it; returns the actor's lifecycle for the cell
    to drive.

    Raises:
        SessionStateError: the actor was spawned before (an actor runs in one session, once).
    """
    if actor._cell is not None or actor._life.state is not ActorState.CREATED:
        raise SessionStateError(f"actor {actor.name!r} was already started once")
    actor._cell = port
    return actor._life


def lifecycle_of(actor: Actor[Any]) -> Lifecycle:
    """The state machine of ``actor`` (made with it; moved only by the cell that runs it)."""
    return actor._life


def port_of(actor: Actor[Any]) -> ActorPort | None:
    """The cell running ``actor``, if it was spawned."""
    return actor._cell


def set_push_gate(actor: Actor[Any], gate: PushGate | None) -> None:
    """Install (or remove) the gate :meth:`Actor.push_frame` consults first."""
    actor._gate = gate


def push_gate_of(actor: Actor[Any]) -> PushGate | None:
    """The gate installed on ``actor``, if any."""
    return actor._gate


def companions_of(actor: Actor[Any]) -> list[tuple[Actor[Any], bool]]:
    """The companions given to ``actor`` with :meth:`Actor.add_companion`, with their
    ``stop_with_owner``."""
    return list(actor._companions)


def notify_watchers(actor: Actor[Any]) -> None:
    """Tell the actors watching ``actor`` (which has just stopped or crashed for good) with
    an :class:`ActorStoppedFrame`."""
    frame = _stopped_frame(actor)
    for watcher in actor._watchers:
        cell = watcher._cell
        if cell is not None:
            cell.notify(frame)


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
        cell = port_of(self._actor)
        return cell is not None and not cell.mailbox.closed

    def __repr__(self) -> str:
        return f"ActorRef({self._actor.name!r})"

    def _envelope(self, frame: Frame, reply: Reply | None) -> tuple[ActorPort, Envelope]:
        actor = self._actor
        _check_accepts(actor, frame)
        cell = port_of(actor)
        if cell is None or cell.mailbox.closed:
            raise ActorDeadError(f"actor {actor.name!r} is not running")
        return cell, cell.envelope(frame, reply)

    async def send(self, frame: T) -> None:
        """Send ``frame`` straight to the actor (not through its links).

        Waits while the actor's data lane is full; system frames never wait.

        Raises:
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        cell, envelope = self._envelope(frame, None)
        mailbox = cell.mailbox
        if isinstance(frame, SystemFrame):
            mailbox.put_system(envelope)
        elif not mailbox.try_put_data(envelope):
            await mailbox.put_data(envelope)
        await trio.lowlevel.checkpoint()

    def send_nowait(self, frame: T) -> None:
        """Send without waiting.

        Raises:
            trio.WouldBlock: the data lane is full.
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        cell, envelope = self._envelope(frame, None)
        if isinstance(frame, SystemFrame):
            cell.mailbox.put_system(envelope)
        elif not (cell.handles_nowait and cell.handle_nowait(envelope)) and (
            not cell.mailbox.try_put_data(envelope)
        ):
            raise trio.WouldBlock

    def tell(self, frame: T) -> None:
        """Send without ever waiting, even past the data lane's bound.

        Use it for the one edge that closes a cycle of actors (a reply path), where a
        blocking send could deadlock. The frame is queued in order with the other data.

        Raises:
            FrameTypeError: the actor does not accept this frame type.
            ActorDeadError: the actor has stopped.
        """
        cell, envelope = self._envelope(frame, None)
        if isinstance(frame, SystemFrame):
            cell.mailbox.put_system(envelope)
        elif not (cell.handles_nowait and cell.handle_nowait(envelope)):
            cell.mailbox.put_data_unbounded(envelope)

    async def ask(self, frame: T, *, timeout: float | None = 5.0) -> Any:  # noqa: ASYNC109
        """Send ``frame`` and wait for the actor's :meth:`Actor.on_ask` reply.

        Each ask has its own reply slot, and the deadline is enforced here, never by the
        callee. Cancelling the caller abandons the reply. An actor that overrides
        :meth:`Actor.on_ask_nowait` may answer at once, in this task, when the ask finds it
        idle.

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
        if CURRENT_ACTOR.get() is self._actor:
            raise SelfAskError(
                f"actor {self._actor.name!r} asked itself; it would wait on its own mailbox "
                "forever (call the method directly, or use create_task)"
            )
        cell = port_of(self._actor)
        if cell is not None and cell.answers_nowait:
            # Idle, the actor may answer at once in this task (Actor.on_ask_nowait): a
            # cancellation point, no schedule point (as a push that finds room).
            _check_accepts(self._actor, frame)
            await trio.lowlevel.checkpoint_if_cancelled()
            answer = cell.answer_nowait(frame)
            if answer is not NOT_NOW:
                return answer
        reply = Reply()
        cell, envelope = self._envelope(frame, reply)
        mailbox = cell.mailbox
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        with trio.move_on_at(deadline):
            # The deadline also bounds the wait for room in a full data lane.
            if isinstance(frame, SystemFrame):
                mailbox.put_system(envelope)
            elif not mailbox.try_put_data(envelope):
                await mailbox.put_data(envelope)
            await reply.wait()
        if reply.result is None:
            raise AskTimeoutError(
                f"actor {self._actor.name!r} did not answer {type(frame).__name__} "
                f"within {timeout} s"
            )
        return reply.result.unwrap()

    def statistics(self) -> MailboxStatistics:
        """The actor's mailbox statistics."""
        cell = port_of(self._actor)
        if cell is None:
            raise ActorDeadError(f"actor {self._actor.name!r} has no mailbox yet")
        return cell.mailbox.statistics()

    async def wait_stopped(self) -> None:
        """Wait until the actor has stopped (or crashed for good)."""
        await lifecycle_of(self._actor).wait_for(TERMINAL)
