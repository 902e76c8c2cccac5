"""Persisting conversations: :class:`SQLiteContextStorage` keeps the latest state of each
conversation in an embedded SQLite file, written by the context store after every change,
so a conversation can be resumed after the session (or the process) ended.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from types import TracebackType

from ._context import ContextSnapshot, OpenAILLMContext

__all__ = ["SQLiteContextStorage"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trouper_conversations (
    id          TEXT PRIMARY KEY,
    messages    TEXT NOT NULL,
    tools       TEXT,
    tool_choice TEXT,
    interrupted TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    updated_at  REAL NOT NULL
)
"""

_UPSERT = """
INSERT INTO trouper_conversations
    (id, messages, tools, tool_choice, interrupted, revision, updated_at)
VALUES (?, ?, ?, ?, ?, 1, ?)
ON CONFLICT(id) DO UPDATE SET
    messages = excluded.messages,
    tools = excluded.tools,
    tool_choice = excluded.tool_choice,
    interrupted = excluded.interrupted,
    revision = trouper_conversations.revision + 1,
    updated_at = excluded.updated_at
"""


def _check_id(conversation_id: object) -> str:
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        raise ValueError(f"a conversation id must be a non-empty string, got {conversation_id!r}")
    return conversation_id


class SQLiteContextStorage:
    """Conversations in an embedded SQLite database file, one row per conversation.

    Give it to :meth:`OpenAILLMService.create_context_aggregator` with a conversation id: the
    context store then writes the conversation (messages, tools, tool choice, which answers
    were interrupted) after every change, before it answers the change's request, so what
    the store has committed is on disk. Resume with :meth:`load`::

        storage = SQLiteContextStorage("conversations.db")
        context = storage.load("user-42") or OpenAILLMContext(messages=[system])
        pair = llm.create_context_aggregator(
            context, storage=storage, conversation_id="user-42"
        )

    Each write replaces the conversation's row in one transaction (the database is in WAL
    mode with ``synchronous=NORMAL``: a write survives the process crashing, and only the
    last moments before a power loss can be lost). Writes run in the store's task: a
    one-row upsert on a local file takes tens of microseconds, keeps the order of the
    changes and needs no thread. One storage may serve many sessions of one process.

    Args:
        path: The database file (created with its table if missing; its directory must
            exist), or ``":memory:"``.

    Raises:
        ValueError: The directory of ``path`` does not exist, or the file is not a usable
            SQLite database.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().resolve().parent
            if not parent.is_dir():
                raise ValueError(
                    f"cannot create the conversation database {self.path!r}: the directory "
                    f"{str(parent)!r} does not exist"
                )
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ValueError(
                f"cannot use {self.path!r} as the conversation database: {exc}"
            ) from exc

    # ----------------------------------------------------------------- writing

    def save(self, conversation_id: str, conversation: ContextSnapshot | OpenAILLMContext) -> None:
        """Write ``conversation`` as the latest state of ``conversation_id`` (one transaction).

        Raises:
            ValueError: Empty conversation id, or content that is not JSON.
            sqlite3.Error: The database refused the write (disk full, closed, ...).
        """
        cid = _check_id(conversation_id)
        snapshot = (
            conversation.snapshot() if isinstance(conversation, OpenAILLMContext) else conversation
        )
        try:
            row = (
                cid,
                json.dumps(list(snapshot.messages), ensure_ascii=False),
                None if snapshot.tools is None else json.dumps(list(snapshot.tools)),
                None if snapshot.tool_choice is None else json.dumps(snapshot.tool_choice),
                json.dumps(sorted(snapshot.interrupted)),
                time.time(),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"conversation {cid!r} cannot be stored as JSON: {exc}") from exc
        self._db.execute(_UPSERT, row)

    def delete(self, conversation_id: str) -> bool:
        """Forget a conversation; whether it existed."""
        cursor = self._db.execute(
            "DELETE FROM trouper_conversations WHERE id = ?", (_check_id(conversation_id),)
        )
        return cursor.rowcount > 0

    # ----------------------------------------------------------------- reading

    def load(self, conversation_id: str) -> OpenAILLMContext | None:
        """The stored conversation as a new context, or ``None`` if there is none.

        Raises:
            ValueError: Empty conversation id, or a stored row that is not a valid
                conversation (the message says what is wrong).
        """
        snapshot = self.load_snapshot(conversation_id)
        return None if snapshot is None else OpenAILLMContext.from_snapshot(snapshot)

    def load_snapshot(self, conversation_id: str) -> ContextSnapshot | None:
        """The stored conversation as an immutable snapshot, or ``None``."""
        cid = _check_id(conversation_id)
        row = self._db.execute(
            "SELECT messages, tools, tool_choice, interrupted FROM trouper_conversations "
            "WHERE id = ?",
            (cid,),
        ).fetchone()
        if row is None:
            return None
        try:
            messages, tools, tool_choice, interrupted = (
                json.loads(row[0]),
                None if row[1] is None else json.loads(row[1]),
                None if row[2] is None else json.loads(row[2]),
                json.loads(row[3]),
            )
            return ContextSnapshot(
                messages=tuple(messages),
                tools=None if tools is None else tuple(tools),
                tool_choice=tool_choice,
                interrupted=frozenset(int(i) for i in interrupted),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"stored conversation {cid!r} is not valid: {exc}") from exc

    def conversations(self) -> list[str]:
        """Ids of the stored conversations, most recently updated first."""
        rows = self._db.execute(
            "SELECT id FROM trouper_conversations ORDER BY updated_at DESC, id"
        ).fetchall()
        return [row[0] for row in rows]

    def revision(self, conversation_id: str) -> int:
        """How many times the conversation was written (0: never)."""
        row = self._db.execute(
            "SELECT revision FROM trouper_conversations WHERE id = ?",
            (_check_id(conversation_id),),
        ).fetchone()
        return 0 if row is None else int(row[0])

    # ----------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Close the database (later writes raise ``sqlite3.ProgrammingError``)."""
        self._db.close()

    def __enter__(self) -> SQLiteContextStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteContextStorage({self.path!r})"
