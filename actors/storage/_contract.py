"""The storage contract: :class:`ConversationStorage` and the values it deals in."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import attrs

from .._context import ContextSnapshot
from ._changes import Change
from ._errors import CONTROL_CHARACTERS, check_id

__all__ = [
    "CompactionPolicy",
    "ConversationInfo",
    "ConversationStorage",
    "Lease",
    "StoredConversation",
    "check_append_id",
    "check_lease",
    "check_positive",
    "check_version",
]


@attrs.frozen(slots=True)
class Lease:
    """The right to write one conversation, held by one owner until it expires.

    Attributes:
        conversation_id: The conversation.
        owner: Who holds it (unique per session: several sessions must not share an owner).
        token: The fencing token: strictly increasing per conversation, a new one for
            every acquisition; a write carrying an older token is refused.
        ttl: Seconds the lease lives after its acquisition or last renewal.
    """

    conversation_id: str
    owner: str
    token: int
    ttl: float


@attrs.frozen(slots=True)
class StoredConversation:
    """A conversation as loaded: its content and the version it is at.

    Attributes:
        conversation_id: The conversation.
        version: How many appends it has seen (the next append is based on this).
        snapshot: Its messages, tools, tool choice and interrupted answers.
    """

    conversation_id: str
    version: int
    snapshot: ContextSnapshot


@attrs.frozen(slots=True)
class ConversationInfo:
    """What is known about a stored conversation without reading its content.

    Attributes:
        conversation_id: The conversation.
        version: Its version (number of appends).
        created_at: Unix time of its first append.
        updated_at: Unix time of its last append.
        message_count: Number of messages.
        stored_bytes: Size of its stored JSON (snapshot and log).
        log_entries: Appends since the last compaction.
        lease_owner: Who holds a live lease on it (``None``: nobody).
        lease_expires_in: Seconds until that lease expires unless renewed.
    """

    conversation_id: str
    version: int
    created_at: float
    updated_at: float
    message_count: int
    stored_bytes: int
    log_entries: int
    lease_owner: str | None = None
    lease_expires_in: float | None = None


@runtime_checkable
class ConversationStorage(Protocol):
    """Where conversations live: an append-only log of changes per conversation, versioned,
    with leases so a conversation has at most one writer across processes and hosts.

    Open a storage with ``async with`` (it holds a thread or connections); every method is
    async and runs on trio without blocking its loop. Every error is a
    :class:`~actors.storage.StorageError` (or a ``ValueError`` for a bad argument).

    Versions: a conversation that does not exist is at version 0; every successful
    :meth:`append` adds one. An append names the version it was based on and is refused
    with :class:`~actors.storage.ConversationConflictError` if the conversation moved on:
    nothing is ever overwritten. Compaction folds the log into a snapshot; it changes
    neither the content nor the version.

    Leases: :meth:`acquire_lease` gives the caller the conversation for ``ttl`` seconds and
    a fencing token; :meth:`renew_lease` extends it; :meth:`release_lease` ends it. While a
    live lease exists, every append and delete must carry it: one with an expired or
    superseded lease fails with :class:`~actors.storage.LeaseLostError`, one without a lease
    with :class:`~actors.storage.LeaseHeldError`; the check is atomic with the write. With
    nobody holding a lease, appends without one are accepted (version checks still apply).
    Reading never needs a lease.
    """

    async def __aenter__(self) -> Self:
        """Open the storage (create the file, connect...).

        Raises:
            StorageUnavailableError: It cannot be opened or reached.
        """
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close it (:meth:`aclose`)."""
        ...

    async def aclose(self) -> None:
        """Close the storage; later calls raise ``StorageUnavailableError``. Idempotent."""
        ...

    async def load(self, conversation_id: str) -> StoredConversation | None:
        """The conversation and its version, or ``None`` if it does not exist.

        Raises:
            ConversationCorruptError: What is stored is not a valid conversation.
        """
        ...

    async def append(
        self,
        conversation_id: str,
        changes: Sequence[Change],
        *,
        expected_version: int,
        lease: Lease | None = None,
        append_id: str | None = None,
    ) -> int:
        """Append ``changes`` (one entry, atomically) to the conversation at
        ``expected_version`` (0 creates it); the new version.

        Writes O(size of the changes), whatever the conversation's size; may schedule a
        compaction in the background when the log grew past the storage's threshold.

        ``append_id`` makes the append idempotent: an id unique to this append (a random
        one per append, say), stored with the conversation's head. A retry with the same
        id and ``expected_version`` after an answer was lost (the connection cut after
        the server committed) finds its own append at the head: it writes nothing and
        returns the version the first attempt made, instead of writing twice or
        reporting a conflict. A conflict reports the head's append id
        (:attr:`~actors.storage.ConversationConflictError.head_append_id`), so a caller
        can also tell later that a write it was unsure of did commit.

        Raises:
            ValueError: Bad id, no change, an invalid change, content that is not JSON, or
                a bad ``append_id``.
            ConversationConflictError: The conversation is not at ``expected_version``.
            LeaseLostError: ``lease`` expired or was superseded.
            LeaseHeldError: No ``lease`` given, and another owner holds a live one.
        """
        ...

    async def delete(self, conversation_id: str, *, lease: Lease | None = None) -> bool:
        """Forget the conversation (content, log, snapshot); whether it existed. Its fencing
        counter survives, so tokens keep increasing if the id is used again.

        Raises:
            LeaseLostError, LeaseHeldError: As for :meth:`append`.
        """
        ...

    async def info(self, conversation_id: str) -> ConversationInfo | None:
        """What is known about the conversation without reading it, or ``None``."""
        ...

    async def list_conversations(self) -> list[ConversationInfo]:
        """Every stored conversation, most recently updated first."""
        ...

    async def compact(self, conversation_id: str) -> bool:
        """Fold the conversation's log into its snapshot now; whether there was anything to
        fold. Content and version stay the same; concurrent appends are kept."""
        ...

    async def acquire_lease(self, conversation_id: str, owner: str, ttl: float) -> Lease:
        """Lease the conversation (it need not exist yet) to ``owner`` for ``ttl`` seconds,
        with a new fencing token greater than any given before for this id.

        Raises:
            ValueError: Bad id, owner or ttl.
            LeaseHeldError: A live lease exists (whoever holds it, ``owner`` included).
        """
        ...

    async def renew_lease(self, lease: Lease, ttl: float | None = None) -> Lease:
        """Extend a live lease by ``ttl`` (default: its own) from now.

        Raises:
            LeaseLostError: It expired or was superseded (an expired lease cannot be
                renewed: acquire a new one and reload).
        """
        ...

    async def release_lease(self, lease: Lease) -> bool:
        """End the lease now; whether it was still live (a lost lease is left alone)."""
        ...


def check_version(version: object) -> int:
    """``version`` if it is a usable expected version (an integer >= 0).

    Raises:
        ValueError: Anything else.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"expected_version must be an integer >= 0, got {version!r}")
    return version


def check_append_id(append_id: object) -> str | None:
    """``append_id`` if it is usable: ``None`` or a non-empty string of at most 128
    characters without control characters.

    Raises:
        ValueError: Anything else.
    """
    if append_id is None:
        return None
    if (
        not isinstance(append_id, str)
        or not append_id
        or len(append_id) > 128
        or CONTROL_CHARACTERS.search(append_id)
    ):
        raise ValueError(
            "append_id must be None or a non-empty string of at most 128 characters "
            f"without control characters, got {append_id!r:.80}"
        )
    return append_id


def check_lease(conversation_id: str | None, lease: object) -> str:
    """The conversation id of a write: ``lease``'s, checked against ``conversation_id``
    (``None``: ``lease`` is required and names it).

    Raises:
        ValueError: Not a :class:`Lease`, or one for another conversation.
    """
    if lease is None and conversation_id is not None:
        return conversation_id
    if not isinstance(lease, Lease):
        raise ValueError(f"lease must be a Lease, got {type(lease).__name__}")
    if conversation_id is not None and lease.conversation_id != conversation_id:
        raise ValueError(
            f"the lease is for conversation {lease.conversation_id!r}, not {conversation_id!r}"
        )
    return check_id(lease.conversation_id)


def check_positive(**values: float) -> None:
    """Each named value is a positive number.

    Raises:
        ValueError: One is not (the message names it).
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")


@attrs.frozen(slots=True)
class CompactionPolicy:
    """When a log is folded into its snapshot: past ``after_entries`` entries, or once it
    holds more bytes than the snapshot and at least ``min_bytes`` (so a compaction's cost,
    the conversation's size, is paid at most once per conversation's worth of appends)."""

    after_entries: int
    min_bytes: int

    def due(self, entries: int, log_bytes: int, snapshot_bytes: int) -> bool:
        """Whether a log of ``entries`` entries and ``log_bytes`` bytes, after a snapshot of
        ``snapshot_bytes`` bytes, is due for compaction."""
        return entries >= self.after_entries or log_bytes > max(snapshot_bytes, self.min_bytes)
