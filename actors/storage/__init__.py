"""Conversation storage: versioned, append-only, leased; on SQLite (embedded) or Redis
(shared by many processes and hosts).

- :class:`ConversationStorage` is the contract; :class:`SQLiteConversationStorage` and
  :class:`RedisConversationStorage` implement it (:func:`conversation_storage` picks one
  from a path or URL).
- The change records (:class:`AppendMessages`, :class:`ReplaceMessages`, :class:`SetTools`,
  :class:`SetToolChoice`, :class:`RecordToolCalls`, :class:`SettleToolCall`,
  :class:`MarkInterrupted`) are what the context store appends; :func:`fold` applies them
  to a :class:`~actors.ContextSnapshot`.
- :func:`open_conversation` takes a conversation over: lease, load, and settle the tool
  calls a dead owner left ``IN_PROGRESS``; :func:`keep_lease` renews the lease, and each
  backend's :class:`LeaseKeeper` (``storage.lease_keeper``) renews the leases of all its
  sessions in one task.
- Every error is a :class:`StorageError`.

See ``docs/storage.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._changes import (
    AppendMessages,
    Change,
    MarkInterrupted,
    RecordToolCalls,
    ReplaceMessages,
    SettleToolCall,
    SetToolChoice,
    SetTools,
    change_from_json,
    change_to_json,
    changes_from_snapshot,
)
from ._contract import ConversationInfo, ConversationStorage, Lease, StoredConversation
from ._errors import (
    ConversationConflictError,
    ConversationCorruptError,
    LeaseHeldError,
    LeaseLostError,
    StorageError,
    StorageUnavailableError,
)
from ._fold import fold
from ._keeper import KeptLease, LeaseKeeper
from ._open import conversation_storage
from ._recovery import (
    INTERRUPTED_TOOL_RESULT,
    OpenedConversation,
    keep_lease,
    open_conversation,
    open_tool_calls,
    recovery_changes,
)
from ._sqlite import SQLiteConversationStorage

if TYPE_CHECKING:
    from ._redis import RedisConversationStorage

__all__ = [
    "INTERRUPTED_TOOL_RESULT",
    "AppendMessages",
    "Change",
    "ConversationConflictError",
    "ConversationCorruptError",
    "ConversationInfo",
    "ConversationStorage",
    "KeptLease",
    "Lease",
    "LeaseHeldError",
    "LeaseKeeper",
    "LeaseLostError",
    "MarkInterrupted",
    "OpenedConversation",
    "RecordToolCalls",
    "RedisConversationStorage",
    "ReplaceMessages",
    "SQLiteConversationStorage",
    "SetToolChoice",
    "SetTools",
    "SettleToolCall",
    "StorageError",
    "StorageUnavailableError",
    "StoredConversation",
    "change_from_json",
    "change_to_json",
    "changes_from_snapshot",
    "conversation_storage",
    "fold",
    "keep_lease",
    "open_conversation",
    "open_tool_calls",
    "recovery_changes",
]


def __getattr__(name: str) -> object:
    """``RedisConversationStorage`` is imported on first use: its Redis client is a large
    import that a process using SQLite or no storage at all does without."""
    if name == "RedisConversationStorage":
        from ._redis import RedisConversationStorage

        return RedisConversationStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
