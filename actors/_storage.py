"""Persisting a conversation while a session runs: the context store's link to a
:class:`~actors.storage.ConversationStorage`.

:class:`ConversationWriter` holds what the store needs to write one conversation: the
storage, the lease (taken at start with :func:`~actors.storage.open_conversation`, renewed
by :meth:`ConversationWriter.keep_lease`, released at the end) and the version the next
append is based on. It never raises a storage error: it returns it, and the store reports
it as an ``ErrorFrame``. After an error that means someone else owns the conversation now
(conflict, lost or held lease) it stops writing for good; after any other failure the next
write stores the whole conversation again, so the log never misses a change.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import uuid
import weakref
from collections.abc import Callable, Sequence

import attrs
import trio

from ._context import ContextSnapshot, OpenAILLMContext, restore_context
from .storage import (
    Change,
    ConversationConflictError,
    ConversationStorage,
    KeptLease,
    Lease,
    LeaseHeldError,
    LeaseKeeper,
    LeaseLostError,
    MarkInterrupted,
    ReplaceMessages,
    SetToolChoice,
    SetTools,
    StorageError,
    changes_from_snapshot,
    keep_lease,
    open_conversation,
)

__all__ = [
    "DEFAULT_LEASE_TTL",
    "ConversationWriter",
    "check_storage",
    "session_owner",
]

#: Seconds a session's lease on its conversation lives unless renewed (it is renewed every
#: third of that): how long a crashed process keeps its conversation from being taken over.
DEFAULT_LEASE_TTL = 30.0

#: Errors after which a session must not write its conversation any more.
_FINAL = (ConversationConflictError, LeaseLostError, LeaseHeldError)

#: Append ids of this process: a random part and a counter (unique, and cheap to make).
_APPEND_IDS = map(f"{uuid.uuid4().hex[:16]}-{{}}".format, itertools.count(1))


def _lost(writer_ref: weakref.ref[ConversationWriter], error: LeaseLostError) -> None:
    """The lease keeper lost a writer's lease: stop it and tell its session (once)."""
    writer = writer_ref()
    if writer is not None and writer._stop(error) and writer._on_lost is not None:
        writer._on_lost(error)


def session_owner(name: str) -> str:
    """A lease owner unique to one session: host, process, ``name`` and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:12]}"


def check_storage(storage: object) -> ConversationStorage:
    """``storage`` if it is a :class:`~actors.storage.ConversationStorage`.

    Raises:
        TypeError: Anything else; the removed ``SQLiteContextStorage`` gets its migration.
    """
    if isinstance(storage, ConversationStorage):
        return storage
    kind = type(storage).__name__
    hint = ""
    if kind == "SQLiteContextStorage":
        hint = (
            " SQLiteContextStorage was removed: open actors.storage.SQLiteConversationStorage"
            "(path) on the same file instead (it imports the conversations the old class"
            " wrote); see docs/context.md."
        )
    raise TypeError(
        f"storage= takes a ConversationStorage (actors.storage.SQLiteConversationStorage, "
        f"RedisConversationStorage or conversation_storage(path_or_url)), got {kind}.{hint}"
    )


def _full(snapshot: ContextSnapshot) -> tuple[Change, ...]:
    """Changes that make any stored conversation equal to ``snapshot``."""
    return (
        ReplaceMessages(snapshot.messages),
        SetTools(snapshot.tools),
        SetToolChoice(snapshot.tool_choice),
        *(MarkInterrupted(i) for i in sorted(snapshot.interrupted)),
    )


@attrs.define(eq=False)
class ConversationWriter:
    """Writes one conversation for one session (see the module documentation).

    Attributes:
        storage: The (open) storage.
        conversation_id: The conversation.
        owner: The session's lease owner (unique per session).
        lease_ttl: Seconds the lease lives unless renewed.
        lease: The lease held (``None``: not opened, or released).
        version: The version the next append is based on.
        stopped: Why writing stopped for good (``None``: it goes on).
        resumed: Whether :meth:`open` found the conversation stored (else it created it).
    """

    storage: ConversationStorage
    conversation_id: str
    owner: str
    lease_ttl: float = DEFAULT_LEASE_TTL
    lease: Lease | None = None
    version: int = 0
    stopped: str | None = None
    resumed: bool = False
    _dirty: bool = False
    #: The append id of the last write whose outcome is unknown (it failed, but may have
    #: been committed before its answer was lost).
    _unsure: str | None = None
    _kept: KeptLease | None = None
    _on_lost: Callable[[LeaseLostError], object] | None = None

    @property
    def writing(self) -> bool:
        """Whether changes are being written."""
        return self.lease is not None and self.stopped is None

    async def open(self, context: OpenAILLMContext) -> StorageError | ValueError | None:
        """Take the conversation over (lease, load, recovery of a dead owner's tool calls)
        and bring ``context`` and the storage together: a stored conversation's messages
        (and interrupted marks) replace those of ``context``, whose tools and tool choice
        are kept and stored if they differ; a new conversation is stored from ``context``.

        Returns the error that prevented it (writing is then stopped), else ``None``.
        """
        try:
            opened = await open_conversation(
                self.storage, self.conversation_id, owner=self.owner, ttl=self.lease_ttl
            )
        except StorageError as exc:
            self._stop(exc)
            return exc
        self.lease, self.version = opened.lease, opened.version
        current = context.snapshot()
        if opened.snapshot is None:
            changes: Sequence[Change] = changes_from_snapshot(current)
        else:
            self.resumed = True
            stored = opened.snapshot
            restore_context(
                context, attrs.evolve(stored, tools=current.tools, tool_choice=current.tool_choice)
            )
            changes = []
            if stored.tools != current.tools:
                changes.append(SetTools(current.tools))
            if stored.tool_choice != current.tool_choice:
                changes.append(SetToolChoice(current.tool_choice))
        if not changes:
            return None
        error = await self.write(changes)
        if error is not None and self.lease is not None:
            await self.close(())
        return error

    async def write(
        self, changes: Sequence[Change], context: OpenAILLMContext | None = None
    ) -> StorageError | ValueError | None:
        """Append ``changes`` (what was just applied to ``context``) under the lease; the
        error if it failed (``None`` also when writing has stopped). After a failure that
        may be passing, the next write stores all of ``context`` instead."""
        if not self.writing or not changes:
            return None
        assert self.lease is not None
        if self._dirty and context is not None:
            changes = _full(context.snapshot())
        append_id = next(_APPEND_IDS)
        try:
            try:
                self.version = await self._append(changes, append_id)
            except ConversationConflictError as exc:
                unsure, self._unsure = self._unsure, None
                if unsure is None or exc.head_append_id != unsure:
                    raise
                # The write that failed before was committed after all (its answer was
                # lost) and nothing was written since: go on from the version it made.
                self.version = exc.actual_version
                self.version = await self._append(changes, append_id)
        except _FINAL as exc:
            return exc if self._stop(exc) else None
        except (StorageError, ValueError) as exc:
            self._dirty = True
            self._unsure = append_id if isinstance(exc, StorageError) else None
            return exc
        self._dirty = False
        self._unsure = None
        return None

    async def _append(self, changes: Sequence[Change], append_id: str) -> int:
        assert self.lease is not None
        return await self.storage.append(
            self.conversation_id,
            changes,
            expected_version=self.version,
            lease=self.lease,
            append_id=append_id,
        )

    def keep_in_background(self, on_lost: Callable[[LeaseLostError], object]) -> bool:
        """Have the storage's shared lease keeper renew the lease (no task of the session's
        own); ``on_lost(error)`` is called once if the lease is lost before a write finds
        it. ``False`` when the storage has no keeper (or no lease is held): renew it with
        :meth:`keep_lease` in a task instead."""
        keeper = getattr(self.storage, "lease_keeper", None)
        if self.lease is None or not isinstance(keeper, LeaseKeeper) or not keeper.running:
            return False
        self._on_lost = on_lost
        # The keeper holds the writer weakly: a writer (a session) that ends without
        # close() is garbage, and its lease is then left to expire, not renewed forever.
        self._kept = keeper.keep(
            self.lease, functools.partial(_lost, weakref.ref(self)), owner=self
        )
        return True

    async def keep_lease(self) -> LeaseLostError | None:
        """Renew the lease until it is lost or the caller is cancelled. Writing then stops;
        returns the error unless a write found it first (it is reported once)."""
        assert self.lease is not None
        try:
            await keep_lease(self.storage, self.lease)
        except LeaseLostError as exc:
            lost = exc
        return lost if self._stop(lost) else None

    def _stop(self, error: StorageError) -> bool:
        """Stop writing for good because of ``error``; whether this is the first stop."""
        if self.stopped is not None:
            return False
        self.stopped = f"{type(error).__name__}: {error}"
        return True

    async def close(
        self, changes: Sequence[Change], context: OpenAILLMContext | None = None
    ) -> StorageError | ValueError | None:
        """Write the last ``changes`` (if any), then release the lease (shielded: it runs
        while the session stops). The write's error, if any."""
        error: StorageError | ValueError | None = None
        with trio.CancelScope(shield=True):
            error = await self.write(changes, context)
            if self._kept is not None:
                self._kept.stop()
                self._kept = None
            lease, self.lease = self.lease, None
            if lease is not None:
                try:
                    await self.storage.release_lease(lease)
                except StorageError as exc:
                    error = error or exc
        return error
