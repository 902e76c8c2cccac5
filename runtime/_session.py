"""Sessions: the nursery that owns a group of actors, their links, turns and supervision.

A session is the unit of structured lifetime: every actor task lives in the session's
nursery, so when the session's ``async with`` block (or :meth:`PipelineTask.run`) is left,
nothing of it is still running. It runs each actor in a cell (:mod:`runtime._cell`) and
supervises it (its task runs the cell's loops, which ask :mod:`runtime._supervisor` what to
do after a crash).
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

from ._actor import Actor, ActorRef, companions_of, port_of
from ._cell import Cell, cell_class_for
from ._core import SessionCore
from ._errors import SessionStateError
from ._frames import Frame, FrameDirection, InterruptionFrame, InterruptionMarkerFrame, StartFrame
from ._lifecycle import LIVE, ActorState
from ._mailbox import Envelope
from ._params import PipelineParams
from ._snapshot import SessionSnapshot
from ._supervision import collapse_exception_group

__all__ = ["Session"]

_session_ids = itertools.count(1)
_logger = structlog.get_logger("trouper.runtime")


@attrs.define(eq=False)
class Session:
    """A running group of actors. Create one with :meth:`Session.open`.

    Use it to spawn actors, link them into topologies (also while running), interrupt the
    current turn and look inside (:meth:`snapshot`). ``PipelineTask`` builds on it.

    Args:
        name: Used in every log line of the session's actors.
        mailbox_size: Default data-lane capacity of its actors.
        stop_timeout_secs: Bound on each actor's ``on_stop``.
        params: The settings the ``StartFrame`` of an actor spawned with ``start=True``
            carries (a ``PipelineTask`` passes its own).
    """

    name: str = attrs.field(factory=lambda: f"session-{next(_session_ids)}")
    mailbox_size: int = 64
    stop_timeout_secs: float = 5.0
    params: PipelineParams = attrs.field(factory=PipelineParams)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _cells: dict[str, Cell] = attrs.field(factory=dict, init=False)
    # The ids of the last interruptions applied (made by the first one).
    _applied: deque[int] | None = attrs.field(default=None, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _log: Any = attrs.field(init=False)
    _core: SessionCore = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.mailbox_size < 1:
            raise ValueError(f"mailbox_size must be at least 1, got {self.mailbox_size}")
        self._log = _logger.bind(session=self.name)
        self._core = SessionCore(
            session=self,
            log=self._log,
            stop_timeout_secs=self.stop_timeout_secs,
            hooks=self,
        )

    @property
    def log(self) -> Any:
        """The session's structlog logger, bound with ``session=<name>`` (what the runtime
        logs the session's events with; an application may log with it too)."""
        return self._log

    @property
    def turn(self) -> int:
        """The current turn: 0 at the start, one more at every interruption."""
        return self._core.turn

    # ----------------------------------------------------------------- lifetime

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str | None = None,
        *,
        mailbox_size: int = 64,
        stop_timeout_secs: float = 5.0,
        params: PipelineParams | None = None,
    ) -> AsyncIterator[Session]:
        """Open a session; leaving the block stops every actor it still runs.

        Leaving normally stops the actors gracefully (``on_stop`` each, time-boxed) and
        cancels what is left. If an actor escalated a crash, its own exception is raised here
        (an exception group only when several failed at once).
        """
        if not structlog.is_configured():
            # A library must not flood stderr: warnings only until the app configures logging.
            # (Before the session binds its logger, or that logger keeps the defaults.)
            from .logging import _configure_by_default  # the one place a session sets logging up

            _configure_by_default()
        session = cls._make(name, mailbox_size, stop_timeout_secs, params)
        error: BaseException | None = None
        raised: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                session._nursery = nursery
                session._core.nursery = nursery
                session._log.debug("session opened")
                try:
                    yield session
                except BaseException as exc:
                    raised = exc
                    raise
                finally:
                    session._closing = True
                    await session._stop_all()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A cancellation from outside goes on as the block's own Cancelled.
            error = collapse_exception_group(group, raised)
            raised = None
            if error is group:
                error = None
                raise
        finally:
            session._nursery = None
            session._core.nursery = None
            session._log.debug("session closed")
        if error is not None:
            # Raised outside the except block, so the error keeps its own __cause__ and
            # __context__ (RestartIntensityExceeded's cause is the crash).
            try:
                raise error
            finally:  # no cycle through this frame (the traceback holds it)
                error = None

    @classmethod
    def _make(
        cls,
        name: str | None,
        mailbox_size: int,
        stop_timeout_secs: float,
        params: PipelineParams | None,
    ) -> Session:
        # Not in open(): the arguments' dict would live as long as the session, in its frame.
        kwargs: dict[str, Any] = {
            "mailbox_size": mailbox_size,
            "stop_timeout_secs": stop_timeout_secs,
        }
        if name is not None:
            kwargs["name"] = name
        if params is not None:
            kwargs["params"] = params
        return cls(**kwargs)

    async def _stop_all(self) -> None:
        with trio.CancelScope(shield=True):
            for cell in reversed(list(self._cells.values())):
                owner = cell.owner
                if owner is not None and cell.stop_with_owner and owner.state in LIVE:
                    continue  # its owner stops it, after itself
                if cell.state in LIVE:
                    await cell.stop()

    @property
    def running(self) -> bool:
        """Whether the session can still spawn actors."""
        return self._nursery is not None and not self._closing

    # ----------------------------------------------------------------- actors and links

    def spawn(self, actor: Actor[Any], *, start: bool = True) -> ActorRef[Any]:
        """Start ``actor`` in this session and return its reference.

        Its companions (:meth:`Actor.add_companion`) are spawned with it.

        Args:
            actor: A new actor (an actor runs in one session only).
            start: Deliver a ``StartFrame`` (with this session's :attr:`params`) straight to
                it (not forwarded to neighbours). A ``PipelineTask`` passes ``False`` and sends
                one ``StartFrame`` through the whole topology instead.
        """
        cell = self._spawn(actor, None, stop_with_owner=True)
        if start:
            frame = StartFrame(params=self.params)
            cell.mailbox.put_system(Envelope(frame, None, self._core.turn))
        return actor.ref

    def _spawn(self, actor: Actor[Any], owner: Cell | None, *, stop_with_owner: bool) -> Cell:
        nursery = self._nursery
        if nursery is None or self._closing:
            raise SessionStateError(f"session {self.name!r} is not running; cannot spawn")
        if port_of(actor) is not None or actor.state is not ActorState.CREATED:
            raise SessionStateError(f"actor {actor.name!r} was already started once")
        if actor.name in self._cells:
            raise ValueError(f"session {self.name!r} already has an actor named {actor.name!r}")
        cell = cell_class_for(type(actor))(
            actor,
            self._core,
            actor.mailbox_size or self.mailbox_size,
            owner=owner,
            stop_with_owner=stop_with_owner,
        )
        self._cells[actor.name] = cell
        if cell.passive:
            cell.spawner = nursery  # no task of its own: tasks start as frames arrive
            cell.mailbox.serve_system_with(cell)
        else:
            nursery.start_soon(cell.run, name=f"actor:{actor.name}")
        for companion, stop in companions_of(actor):
            self._spawn_companion(cell, companion, stop)
        return cell

    def _spawn_companion(self, owner: Cell, actor: Actor[Any], stop_with_owner: bool) -> None:
        cell = self._spawn(actor, owner, stop_with_owner=stop_with_owner)
        owner.companions = (*owner.companions, cell)
        if owner.start_frame is not None:
            cell.offer_start(owner.start_frame)  # the owner runs already

    def _spawn_companion_of(self, owner: str, actor: Actor[Any], stop_with_owner: bool) -> None:
        self._spawn_companion(self._cells[owner], actor, stop_with_owner)

    def _cell(self, x: Actor[Any] | ActorRef[Any]) -> Cell:
        actor = x.actor if isinstance(x, ActorRef) else x
        cell = self._cells.get(actor.name)
        if cell is None or cell.actor is not actor:
            raise SessionStateError(
                f"actor {actor.name!r} is not in session {self.name!r}; spawn it first"
            )
        return cell

    def _linkable(self, x: Actor[Any] | ActorRef[Any]) -> Cell:
        cell = self._cell(x)
        if cell.owner is not None:
            raise ValueError(
                f"actor {cell.name!r} is a companion of {cell.owner.name!r}: it pushes through "
                "its owner's links and has none of its own"
            )
        return cell

    def link(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Make ``downstream`` the receiver of ``upstream``'s downstream frames and vice versa.

        Allowed while the session runs; several links out of one actor fan frames out to all
        of them. Mind cycles: only upstream edges are non-blocking.

        Raises:
            SessionStateError: an actor is not in this session.
            ValueError: an actor is a companion (it has no links of its own).
        """
        a, b = self._linkable(upstream), self._linkable(downstream)
        if b not in a.downstream:
            a.downstream.append(b)
        if a not in b.upstream:
            b.upstream.append(a)

    def unlink(
        self, upstream: Actor[Any] | ActorRef[Any], downstream: Actor[Any] | ActorRef[Any]
    ) -> None:
        """Remove a link made by :meth:`link` (no error if there is none)."""
        a, b = self._linkable(upstream), self._linkable(downstream)
        if b in a.downstream:
            a.downstream.remove(b)
        if a in b.upstream:
            b.upstream.remove(a)

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
        stop it gracefully (and its companions after it). Frames still queued in it are
        dropped. A companion is just stopped."""
        target = self._cell(actor)
        if target.owner is None:
            ups, downs = list(target.upstream), list(target.downstream)
            for up in ups:
                self.unlink(up.actor, target.actor)
            for down in downs:
                self.unlink(target.actor, down.actor)
            for up in ups:
                for down in downs:
                    self.link(up.actor, down.actor)
        await target.stop()

    def actors(self) -> list[ActorRef[Any]]:
        """References to every actor of the session, in spawn order."""
        return [cell.actor.ref for cell in self._cells.values()]

    def get(self, name: str) -> ActorRef[Any]:
        """The actor called ``name``.

        Raises:
            KeyError: no such actor (the message lists the names there are).
        """
        try:
            return self._cells[name].actor.ref
        except KeyError:
            raise KeyError(
                f"no actor {name!r} in session {self.name!r}; have: {sorted(self._cells)}"
            ) from None

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
        applied = self._applied
        if applied is None:
            applied = self._applied = deque(maxlen=64)
        elif frame.id in applied:
            return
        applied.append(frame.id)
        core = self._core
        old = core.turn
        core.turn = new = old + 1
        cells = list(self._cells.values())
        # The handlers this interruption cancels: those busy with an interruptible frame.
        busy = [cell for cell in cells if cell.has_interruptible_work()]
        # First their hooks (closing a stream's socket, say): they run before anything else
        # and, as nothing can run between them and the cancellation below, the handlers
        # never see their effect, only the cancellation.
        for cell in busy:
            if cell.interrupt_hooks:
                cell.run_interrupt_hooks()
        cancelled = 0
        interrupted = {cell.name: None for cell in busy}
        for scope, owner in list(core.turn_scopes.items()):
            scope.cancel()
            interrupted[owner] = None
            cancelled += 1
        core.turn_scopes.clear()
        for cell in busy:
            cell.cancel_work()
            cancelled += 1
        # Only once every handler is cancelled (and its hooks have released what it held):
        # dropping a long backlog must not delay closing an in-flight stream's socket.
        dropped = sum(cell.purge_stale(new) for cell in cells)
        self._mark_interruption(cells, new)
        self._log.info(
            "interruption",
            turn=new,
            previous_turn=old,
            cancelled=cancelled,
            dropped_frames=dropped,
            interrupted=list(interrupted),
            reason=reason,
        )

    def _mark_interruption(self, cells: list[Cell], turn: int) -> None:
        """Queue the interruption's marker where it belongs (see InterruptionMarkerFrame):
        behind what each marking actor pushed downstream so far, and for an actor that asks
        for markers with no marking actor upstream, behind what it has queued."""
        marker: InterruptionMarkerFrame | None = None
        for cell in cells:
            if cell.actor.marks_interruptions:
                targets = cell.downstream
            elif cell.accepts_type(InterruptionMarkerFrame) and not _marked_upstream(cell):
                targets = [cell]
            else:
                continue
            if marker is None:
                marker = InterruptionMarkerFrame(turn=turn)
            for target in targets:
                mailbox = target.mailbox
                if not mailbox.closed:
                    mailbox.put_data_unbounded(Envelope(marker, FrameDirection.DOWNSTREAM, turn))

    # ----------------------------------------------------------------- introspection

    def snapshot(self) -> SessionSnapshot:
        """Every actor with its state, mailbox statistics and in-flight work."""
        return SessionSnapshot(
            name=self.name,
            turn=self._core.turn,
            running=self.running,
            actors=tuple(cell.snapshot() for cell in self._cells.values()),
            turn_tasks=len(self._core.turn_scopes),
        )

    def log_snapshot(self) -> SessionSnapshot:
        """Take a :meth:`snapshot` and log it (event ``"session snapshot"``)."""
        snap = self.snapshot()
        self._log.info("session snapshot", snapshot=snap.as_dict())
        return snap


def _marked_upstream(cell: Cell) -> bool:
    """Whether every path upstream of ``cell`` passes an actor that marks interruptions."""
    stack = list(cell.upstream)
    if not stack:
        return False
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen or current.actor.marks_interruptions:
            continue
        seen.add(id(current))
        if not current.upstream:
            return False
        stack.extend(current.upstream)
    return True
