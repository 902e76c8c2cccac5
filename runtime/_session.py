"""Sessions: the nursery that owns a group of actors, their links, turns and supervision.

A session is the unit of structured lifetime: every actor task lives in the session's
nursery, so when the session's ``async with`` block (or :meth:`PipelineTask.run`) is left,
nothing of it is still running.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import structlog
import trio

from ._actor import Actor, ActorRef, ActorState, _current_actor
from ._errors import RestartIntensityExceeded, SessionStateError
from ._frames import Frame, FrameDirection, InterruptionFrame, InterruptionMarkerFrame, StartFrame
from ._mailbox import Item, MailboxStatistics

__all__ = ["ActorSnapshot", "Session", "SessionSnapshot", "collapse_exception_group"]

_session_ids = itertools.count(1)
_logger = structlog.get_logger("trouper.runtime")


@attrs.frozen
class ActorSnapshot:
    """One actor in a :class:`SessionSnapshot`.

    Args:
        name: The actor's name.
        kind: Its class name.
        state: Lifecycle state.
        mailbox: Mailbox statistics.
        busy_with: Name of the frame its data handler is working on, if any.
        background_tasks: Tasks it started with ``create_task`` that are still running.
        restarts: How often its restart policy restarted it.
        dead_letters: Frames it pushed to neighbours that had stopped.
        downstream: Names of its downstream neighbours.
    """

    name: str
    kind: str
    state: str
    mailbox: MailboxStatistics | None
    busy_with: str | None
    background_tasks: int
    restarts: int
    dead_letters: int
    downstream: tuple[str, ...]


@attrs.frozen
class SessionSnapshot:
    """What a session is doing right now (see :meth:`Session.snapshot`)."""

    name: str
    turn: int
    running: bool
    actors: tuple[ActorSnapshot, ...]
    turn_tasks: int

    def as_dict(self) -> dict[str, Any]:
        """Plain data, ready for a log line or JSON."""
        return attrs.asdict(self)


@attrs.define(eq=False)
class _Delivery:
    """A frame whose sender waits until it has been delivered (``Actor.push_error``):
    ``count`` is the number of lanes it is queued in or being handled from; ``done`` is set
    when that falls to zero (it reached the end of its path, or a stage took it)."""

    count: int = 0
    done: trio.Event = attrs.Factory(trio.Event)


def collapse_exception_group(group: BaseExceptionGroup[Any]) -> BaseException:
    """Return the single real error of ``group`` (ignoring ``Cancelled``), or the group."""
    errors: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif not isinstance(exc, trio.Cancelled):
            errors.append(exc)

    walk(group)
    if len(errors) == 1:
        return errors[0]
    return group


@attrs.define(eq=False)
class Session:
    """A running group of actors. Create one with :meth:`Session.open`.

    Use it to spawn actors, link them into topologies (also while running), interrupt the
    current turn and look inside (:meth:`snapshot`). ``PipelineTask`` builds on it.

    Args:
        name: Used in every log line of the session's actors.
        mailbox_size: Default data-lane capacity of its actors.
        stop_timeout_secs: Bound on each actor's ``on_stop``.
    """

    name: str = attrs.field(factory=lambda: f"session-{next(_session_ids)}")
    mailbox_size: int = 64
    stop_timeout_secs: float = 5.0
    turn: int = attrs.field(default=0, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _actors: dict[str, Actor[Any]] = attrs.field(factory=dict, init=False)
    _turn_scopes: set[trio.CancelScope] = attrs.field(factory=set, init=False)
    _applied: deque[int] = attrs.field(factory=lambda: deque(maxlen=64), init=False)
    _closing: bool = attrs.field(default=False, init=False)
    # Frames whose delivery their sender awaits, by frame id (empty nearly always).
    _in_flight: dict[int, _Delivery] = attrs.field(factory=dict, init=False)
    _log: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {self.mailbox_size}")
        self._log = _logger.bind(session=self.name)

    # ----------------------------------------------------------------- lifetime

    @classmethod
    @asynccontextmanager
    async def open(
        cls, name: str | None = None, *, mailbox_size: int = 64, stop_timeout_secs: float = 5.0
    ) -> AsyncIterator[Session]:
        """Open a session; leaving the block stops every actor it still runs.

        Leaving normally stops the actors gracefully (``on_stop`` each, time-boxed) and
        cancels what is left. If an actor escalated a crash, its own exception is raised here
        (an exception group only when several failed at once).
        """
        if not structlog.is_configured():
            # A library must not flood stderr: warnings only until the app configures logging.
            # (Before the session binds its logger, or that logger keeps the defaults.)
            from .logging import configure

            configure(level="warning")
        kwargs: dict[str, Any] = {
            "mailbox_size": mailbox_size,
            "stop_timeout_secs": stop_timeout_secs,
        }
        if name is not None:
            kwargs["name"] = name
        session = cls(**kwargs)
        error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                session._nursery = nursery
                session._log.debug("session opened")
                try:
                    yield session
                finally:
                    session._closing = True
                    await session._stop_all()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            error = collapse_exception_group(group)
            if error is group:
                raise
        finally:
            session._nursery = None
            session._log.debug("session closed")
        if error is not None:
            # Raised outside the except block, so the error keeps its own __cause__ and
            # __context__ (RestartIntensityExceeded's cause is the crash).
            raise error

    async def _stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for actor in reversed(list(self._actors.values())):
                if actor._state in (ActorState.RUNNING, ActorState.STARTING, ActorState.CREATED):
                    await actor._stop()

    @property
    def running(self) -> bool:
        """Whether the session can still spawn actors."""
        return self._nursery is not None and not self._closing

    # ----------------------------------------------------------------- actors and links

    def spawn(self, actor: Actor[Any], *, start: bool = True) -> ActorRef[Any]:
        """Start ``actor`` in this session and return its reference.

        Args:
            actor: A new actor (an actor runs in one session only).
            start: Deliver a ``StartFrame`` straight to it (not forwarded to neighbours). A
                ``PipelineTask`` passes ``False`` and sends one ``StartFrame`` through the
                whole topology instead.
        """
        if self._nursery is None or self._closing:
            raise SessionStateError(f"session {self.name!r} is not running; cannot spawn")
        if actor._state is not ActorState.CREATED or actor._session is not None:
            # (_session is set at the first spawn, before the actor has even started.)
            raise SessionStateError(f"actor {actor.name!r} was already started once")
        if actor.name in self._actors and self._actors[actor.name] is not actor:
            raise ValueError(f"session {self.name!r} already has an actor named {actor.name!r}")
        actor._attach(self)
        self._actors[actor.name] = actor
        self._nursery.start_soon(self._supervise, actor, name=f"actor:{actor.name}")
        if start:
            frame = StartFrame()
            assert actor._mailbox is not None
            actor._mailbox.put_system((frame, None, self.turn, None))
        return actor.ref

    def link(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Make ``downstream`` the receiver of ``upstream``'s downstream frames and vice versa.

        Allowed while the session runs; several links out of one actor fan frames out to all
        of them. Mind cycles: only upstream edges are non-blocking.
        """
        a, b = _unref(upstream), _unref(downstream)
        if b not in a._downstream:
            a._downstream.append(b)
        if a not in b._upstream:
            b._upstream.append(a)

    def unlink(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Remove a link made by :meth:`link` (no error if there is none)."""
        a, b = _unref(upstream), _unref(downstream)
        if b in a._downstream:
            a._downstream.remove(b)
        if a in b._upstream:
            b._upstream.remove(a)

    def insert_between(
        self,
        actor: Actor[Any],
        upstream: Actor[Any] | ActorRef[Any],
        downstream: Actor[Any] | ActorRef[Any],
    ) -> ActorRef[Any]:
        """Spawn ``actor`` and splice it into the link ``upstream → downstream`` at run time."""
        ref = self.spawn(actor)
        self.unlink(upstream, downstream)
        self.link(upstream, actor)
        self.link(actor, downstream)
        return ref

    async def remove(self, actor: Actor[Any] | ActorRef[Any]) -> None:
        """Splice an actor out of its topology (its neighbours are linked to each other), then
        stop it gracefully. Frames still queued in it are dropped."""
        target = _unref(actor)
        ups, downs = list(target._upstream), list(target._downstream)
        for up in ups:
            self.unlink(up, target)
        for down in downs:
            self.unlink(target, down)
        for up in ups:
            for down in downs:
                self.link(up, down)
        await target._stop()

    def actors(self) -> list[ActorRef[Any]]:
        """References to every actor of the session, in spawn order."""
        return [a.ref for a in self._actors.values()]

    def get(self, name: str) -> ActorRef[Any]:
        """The actor called ``name``.

        Raises:
            KeyError: no such actor (the message lists the names there are).
        """
        try:
            return self._actors[name].ref
        except KeyError:
            raise KeyError(
                f"no actor {name!r} in session {self.name!r}; have: {sorted(self._actors)}"
            ) from None

    # ----------------------------------------------------------------- supervision

    async def _supervise(self, actor: Actor[Any]) -> None:
        policy = actor.restart_policy
        recent: deque[float] = deque()
        while True:
            try:
                _current_actor.set(actor)
                mailbox = actor._mailbox
                assert mailbox is not None
                try:
                    async with trio.open_nursery() as nursery:
                        actor._scope = nursery.cancel_scope
                        actor._nursery = nursery
                        # System frames get a task of their own when they arrive (it ends
                        # when the lane is empty); the data loop runs in this task.
                        mailbox.server = actor
                        mailbox.start_system_service()
                        await actor._data_loop()
                finally:
                    mailbox.server = None
                    mailbox._system_serving = False
                    actor._nursery = None
                if actor._state not in (ActorState.STOPPED, ActorState.CRASHED):
                    actor._finish(crashed=False)
                return
            except BaseExceptionGroup as group:
                exc = collapse_exception_group(group)
            except Exception as single:  # pragma: no cover - nursery always groups
                exc = single
            if not isinstance(exc, Exception):
                raise exc
            actor._crash = exc
            now = trio.current_time()
            if policy is not None:
                while recent and now - recent[0] > policy.within_secs:
                    recent.popleft()
                if len(recent) < policy.max_restarts:
                    delay = policy.backoff(len(recent))
                    recent.append(now)
                    actor._restarts += 1
                    self._log.warning(
                        "actor restarting",
                        actor=actor.name,
                        error=f"{type(exc).__name__}: {exc}",
                        restart=actor._restarts,
                        backoff_secs=delay,
                    )
                    await trio.sleep(delay)
                    if actor._state in (ActorState.STOPPED, ActorState.CRASHED):
                        return  # stopped (removed) while waiting to restart
                    actor._busy = None
                    actor._started = trio.Event()
                    actor._state = ActorState.CREATED
                    if actor._mailbox is not None:
                        actor._mailbox.put_system(
                            (
                                StartFrame(
                                    enable_metrics=actor.metrics_enabled,
                                    enable_usage_metrics=actor.usage_metrics_enabled,
                                    report_only_initial_ttfb=actor.report_only_initial_ttfb,
                                ),
                                None,
                                self.turn,
                                None,
                            )
                        )
                    continue
                self._log.error(
                    "actor restart intensity exceeded",
                    actor=actor.name,
                    max_restarts=policy.max_restarts,
                    within_secs=policy.within_secs,
                )
                actor._finish(crashed=True)
                raise RestartIntensityExceeded(
                    f"actor {actor.name!r} crashed more than {policy.max_restarts} times within "
                    f"{policy.within_secs} s; last error: {type(exc).__name__}: {exc}"
                ) from exc
            self._log.error("actor crashed", actor=actor.name, error=f"{type(exc).__name__}: {exc}")
            actor._finish(crashed=True)
            raise exc

    # ----------------------------------------------------------------- tracked delivery

    def _track_delivery(self, frame: Frame) -> _Delivery:
        delivery = self._in_flight[frame.id] = _Delivery()
        return delivery

    def _untrack_delivery(self, frame: Frame) -> None:
        self._in_flight.pop(frame.id, None)

    def _delivery_step(self, frame: Frame) -> None:
        """One lane is done with a tracked frame (handled, passed on, or dropped)."""
        delivery = self._in_flight.get(frame.id)
        if delivery is not None:
            delivery.count -= 1
            if delivery.count <= 0:
                delivery.done.set()

    # ----------------------------------------------------------------- turns

    def interrupt(self, reason: str | None = None) -> InterruptionFrame:
        """Start a new turn: cancel the current turn's work everywhere, drop its queued frames.

        Returns the :class:`InterruptionFrame` that was applied; deliver it to the topology's
        head so stages can react (``PipelineTask.interrupt`` does both).
        """
        frame = InterruptionFrame()
        self._apply_interruption(frame, reason=reason)
        return frame

    def _apply_interruption(self, frame: Frame, *, reason: str | None = None) -> None:
        if frame.id in self._applied:
            return
        self._applied.append(frame.id)
        old = self.turn
        self.turn = new = old + 1
        actors = list(self._actors.values())
        # The handlers this interruption cancels: those busy with an interruptible frame.
        busy = [
            actor
            for actor in actors
            if actor._busy is not None
            and actor._busy.interruptible
            and actor._work_scope is not None
        ]
        # First their hooks (closing a stream's socket, say): they run before anything else
        # and, as nothing can run between them and the cancellation below, the handlers
        # never see their effect, only the cancellation.
        for actor in busy:
            if actor._interrupt_hooks:
                actor._run_interrupt_hooks()
        cancelled = 0
        for scope in list(self._turn_scopes):
            scope.cancel()
            cancelled += 1
        self._turn_scopes.clear()
        dropped = 0

        def stale(item: Item) -> bool:
            return item[0].interruptible and item[2] < new and item[3] is None

        for actor in busy:
            assert actor._work_scope is not None
            actor._work_scope.cancel()
            actor._work_cancelled = True
            cancelled += 1
        # Only once every handler is cancelled (and its hooks have released what it held):
        # dropping a long backlog must not delay closing an in-flight stream's socket.
        for actor in actors:
            if actor._mailbox is not None:
                dropped += len(actor._mailbox.purge(stale))
        self._mark_interruption(actors, new)
        self._log.info(
            "interruption",
            turn=new,
            previous_turn=old,
            cancelled=cancelled,
            dropped_frames=dropped,
            reason=reason,
        )

    def _mark_interruption(self, actors: list[Actor[Any]], turn: int) -> None:
        """Queue the interruption's marker where it belongs (see InterruptionMarkerFrame):
        behind what each marking actor pushed downstream so far, and for an actor that asks
        for markers with no marking actor upstream, behind what it has queued."""
        marker: InterruptionMarkerFrame | None = None
        for actor in actors:
            if actor.marks_interruptions:
                targets = actor._downstream
            elif actor._accepts_type(InterruptionMarkerFrame) and not _marked_upstream(actor):
                targets = [actor]
            else:
                continue
            if marker is None:
                marker = InterruptionMarkerFrame(turn=turn)
            for target in targets:
                mailbox = target._mailbox
                if mailbox is not None and not mailbox.closed:
                    mailbox.put_data_unbounded((marker, FrameDirection.DOWNSTREAM, turn, None))

    # ----------------------------------------------------------------- introspection

    def snapshot(self) -> SessionSnapshot:
        """Every actor with its state, mailbox statistics and in-flight work."""
        actors = tuple(
            ActorSnapshot(
                name=a.name,
                kind=type(a).__name__,
                state=a._state.value,
                mailbox=a._statistics(),
                busy_with=a._busy.name if a._busy is not None else None,
                background_tasks=len(a._background),
                restarts=a._restarts,
                dead_letters=a._dead_letters,
                downstream=tuple(d.name for d in a._downstream),
            )
            for a in self._actors.values()
        )
        return SessionSnapshot(
            name=self.name,
            turn=self.turn,
            running=self.running,
            actors=actors,
            turn_tasks=len(self._turn_scopes),
        )

    def log_snapshot(self) -> SessionSnapshot:
        """Take a :meth:`snapshot` and log it (event ``"session snapshot"``)."""
        snap = self.snapshot()
        self._log.info("session snapshot", snapshot=snap.as_dict())
        return snap


def _marked_upstream(actor: Actor[Any]) -> bool:
    """Whether every path upstream of ``actor`` passes an actor that marks interruptions."""
    stack = list(actor._upstream)
    if not stack:
        return False
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen or current.marks_interruptions:
            continue
        seen.add(id(current))
        if not current._upstream:
            return False
        stack.extend(current._upstream)
    return True


def _unref(x: Actor[Any] | ActorRef[Any]) -> Actor[Any]:
    return x.actor if isinstance(x, ActorRef) else x


def deliver_external(actor: Actor[Any], frame: Frame, direction: Any, session: Session) -> Item:
    """Build the mailbox item for a frame entering the session from outside."""
    turn = frame.turn if frame.turn is not None else session.turn
    if type(frame) is InterruptionFrame:
        session._apply_interruption(frame)
        turn = session.turn  # the interruption opens the new turn
    return (frame, direction, turn, None)
