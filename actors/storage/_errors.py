"""The typed errors of conversation storage, and the checks of ids and owners."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = [
    "CONTROL_CHARACTERS",
    "MAX_ID_LENGTH",
    "ConversationConflictError",
    "ConversationCorruptError",
    "LeaseHeldError",
    "LeaseLostError",
    "StorageError",
    "StorageUnavailableError",
    "check_id",
    "check_owner",
    "check_ttl",
]

#: Longest conversation id (and lease owner) accepted, in characters.
MAX_ID_LENGTH = 512

#: Control characters, refused in ids (a regular expression: checked on every call).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


class StorageError(Exception):
    """Base of every error a conversation storage raises (besides ``ValueError`` for bad
    arguments): catch this one to handle them all."""


class StorageUnavailableError(StorageError):
    """The storage cannot be reached or opened: a missing directory, a file that is not a
    database, a database locked by another connection for too long, a Redis server that is
    down or refuses writes, a storage that is closed or was never opened."""


class ConversationCorruptError(StorageError):
    """A stored conversation cannot be read: bad JSON, a record of the wrong shape, an
    unknown change kind, a gap in its log, a damaged database file.

    Attributes:
        conversation_id: The conversation.
        problem: What is wrong with it.
    """

    def __init__(self, conversation_id: str, problem: str) -> None:
        super().__init__(f"stored conversation {conversation_id!r} is corrupt: {problem}")
        self.conversation_id = conversation_id
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.conversation_id, self.problem))


class ConversationConflictError(StorageError):
    """An append was based on a version that is no longer the latest: someone else wrote to
    the conversation since it was loaded. Nothing was written; reload and decide.

    Attributes:
        conversation_id: The conversation.
        expected_version: The version the append was based on.
        actual_version: The stored version (0: the conversation does not exist).
        head_append_id: The ``append_id`` of the append that made the stored version
            (``None``: it had none, or nothing is stored). If it is the id of an earlier
            append of yours whose answer was lost, that append was committed.
    """

    def __init__(
        self,
        conversation_id: str,
        expected_version: int,
        actual_version: int,
        *,
        head_append_id: str | None = None,
    ) -> None:
        super().__init__(
            f"conversation {conversation_id!r} changed since it was read: the write was based "
            f"on version {expected_version}, the stored version is {actual_version}; "
            "nothing was written"
        )
        self.conversation_id = conversation_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        self.head_append_id = head_append_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _conflict,
            (
                type(self),
                self.conversation_id,
                self.expected_version,
                self.actual_version,
                self.head_append_id,
            ),
        )


class LeaseLostError(StorageError):
    """The lease given with a write (or a renewal) is no longer the conversation's live
    lease: it expired, or another owner took the conversation over. Nothing was written;
    the session must stop writing to this conversation.

    Attributes:
        conversation_id: The conversation.
        owner: Who held the lost lease.
        token: Its fencing token.
        detail: How it was lost.
    """

    def __init__(self, conversation_id: str, owner: str, token: int, detail: str) -> None:
        super().__init__(
            f"lease {token} of {owner!r} on conversation {conversation_id!r} is lost "
            f"({detail}); nothing was written"
        )
        self.conversation_id = conversation_id
        self.owner = owner
        self.token = token
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.conversation_id, self.owner, self.token, self.detail))


class LeaseHeldError(StorageError):
    """Another owner holds a live lease on the conversation: it cannot be leased, and it
    cannot be written or deleted without that lease.

    Attributes:
        conversation_id: The conversation.
        holder: The owner of the live lease.
        expires_in: Seconds until that lease expires unless it is renewed.
    """

    def __init__(self, conversation_id: str, holder: str, expires_in: float) -> None:
        super().__init__(
            f"conversation {conversation_id!r} is leased by {holder!r} for another "
            f"{max(expires_in, 0.0):.3g} s (unless renewed)"
        )
        self.conversation_id = conversation_id
        self.holder = holder
        self.expires_in = expires_in

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.conversation_id, self.holder, self.expires_in))


def _conflict(
    cls: type[ConversationConflictError],
    conversation_id: str,
    expected_version: int,
    actual_version: int,
    head_append_id: str | None,
) -> ConversationConflictError:
    """Rebuilds a pickled :class:`ConversationConflictError` (its last argument is
    keyword-only)."""
    return cls(conversation_id, expected_version, actual_version, head_append_id=head_append_id)


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a {what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"a {what} must not be empty or blank, got {value!r}")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"a {what} must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if CONTROL_CHARACTERS.search(value):
        raise ValueError(f"a {what} must not contain control characters, got {value!r}")
    return value


def check_id(conversation_id: object) -> str:
    """``conversation_id`` if it is a usable conversation id.

    Raises:
        ValueError: Not a string, empty or blank, longer than :data:`MAX_ID_LENGTH`, or
            holding control characters.
    """
    return _check_name("conversation id", conversation_id)


def check_owner(owner: object) -> str:
    """``owner`` if it is a usable lease owner (same rules as :func:`check_id`).

    Raises:
        ValueError: See :func:`check_id`.
    """
    return _check_name("lease owner", owner)


def check_ttl(ttl: object) -> float:
    """``ttl`` as a float if it is a usable lease time to live, in seconds.

    Raises:
        ValueError: Not a positive finite number of at least 1 ms.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"a lease ttl must be a number of seconds, got {ttl!r}")
    value = float(ttl)
    if not math.isfinite(value) or value < 0.001:
        raise ValueError(f"a lease ttl must be a finite number of seconds >= 0.001, got {ttl!r}")
    return value
