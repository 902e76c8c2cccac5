"""Choosing a backend from what the user typed (``--store``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._sqlite import SQLiteConversationStorage
from ._urls import mask_url

if TYPE_CHECKING:
    from ._redis import RedisConversationStorage

__all__ = ["conversation_storage"]


def conversation_storage(
    spec: str | os.PathLike[str],
) -> SQLiteConversationStorage | RedisConversationStorage:
    """The storage ``spec`` names, not opened yet (open it with ``async with``):

    - ``redis://host:port/db``, ``rediss://...``, ``unix:///path.sock``: Redis;
    - ``sqlite:///path/to/file.db`` or a plain path: an SQLite file.

    Raises:
        ValueError: An empty spec, or a URL scheme that is neither.
    """
    text = os.fspath(spec)
    if not text.strip():
        raise ValueError("a conversation store must be a path or a URL, got an empty string")
    scheme = urlsplit(text).scheme if "://" in text else ""
    if scheme in ("redis", "rediss", "unix"):
        from ._redis import RedisConversationStorage  # (its client is imported when needed)

        return RedisConversationStorage(text)
    if scheme == "sqlite":
        path = text[len("sqlite://") :]
        if not path:
            raise ValueError("sqlite:// needs a path, e.g. sqlite:///home/me/conversations.db")
        return SQLiteConversationStorage(Path(path).expanduser() if path != ":memory:" else path)
    if scheme:
        raise ValueError(
            f"unknown conversation store {mask_url(text)!r}: use a file path, sqlite:///path "
            "or redis://host:port/db"
        )
    return SQLiteConversationStorage(Path(text).expanduser())
