"""``trouper conversations list|show|delete``: the stored conversations of ``trouper chat
--conversation``, in the SQLite file (default) or a Redis server given with ``--store``.

Also what ``trouper chat`` uses to open that store: :func:`store_spec`, :func:`store_label`,
:func:`open_store`. Every storage error is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from rich.console import Console
from rich.markup import escape

from ..storage import (
    ConversationInfo,
    ConversationStorage,
    LeaseHeldError,
    StorageError,
    conversation_storage,
)
from ..storage._urls import mask_url
from ._history import data_dir
from ._terminal import printable

__all__ = [
    "ConversationsOptions",
    "default_store_path",
    "held_message",
    "open_store",
    "run_conversations",
    "store_label",
    "store_spec",
]


def default_store_path() -> Path:
    """Where conversations are kept without ``--store``."""
    return data_dir() / "conversations.db"


def store_spec(store: str | None) -> str:
    """The store to open: ``store`` (a path or URL), else the default file (its directory
    is created)."""
    if store is not None:
        return store
    path = default_store_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def store_label(spec: str) -> str:
    """``spec`` as it may be shown (a Redis URL's password masked)."""
    return mask_url(spec) if "://" in spec else spec


@asynccontextmanager
async def open_store(spec: str) -> AsyncIterator[ConversationStorage]:
    """The storage ``spec`` names, open for the block.

    Raises:
        StorageError: It cannot be opened.
        ValueError: ``spec`` is not a path or a storage URL.
    """
    async with conversation_storage(spec) as storage:
        yield storage


def held_message(conversation_id: str, holder: str, expires_in: float) -> str:
    """What the user reads when another session holds the conversation's lease."""
    return (
        f"conversation {conversation_id!r} is in use by {holder} (its lease expires in "
        f"{max(expires_in, 0.0):.1f} s unless that session renews it); try again later"
    )


@attrs.frozen
class ConversationsOptions:
    """Options of ``trouper conversations`` (see ``trouper conversations --help``)."""

    action: str
    conversation: str | None = None
    store: str | None = None


async def run_conversations(
    options: ConversationsOptions, *, console: Console | None = None
) -> int:
    """Run one action; the exit status (0; 1: no such conversation; 2: an error)."""
    out = console or Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        spec = store_spec(options.store)
        async with open_store(spec) as storage:
            if options.action == "list":
                return await _list(storage, out)
            assert options.conversation is not None
            if options.action == "show":
                return await _show(storage, options.conversation, spec, out, err)
            return await _delete(storage, options.conversation, spec, out, err)
    except LeaseHeldError as exc:
        message = held_message(exc.conversation_id, exc.holder, exc.expires_in)
    except (StorageError, ValueError, OSError) as exc:
        message = str(exc)
    err.print(f"[red]error:[/] {escape(printable(message))}")
    return 2


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


async def _list(storage: ConversationStorage, out: Console) -> int:
    infos = await storage.list_conversations()
    if not infos:
        out.print("[dim]no conversations[/]")
        return 0
    width = max(len(printable(i.conversation_id)) for i in infos)
    header = f"{'ID':<{width}}  {'VERSION':>7}  {'UPDATED':<19}  {'MESSAGES':>8}  LEASE"
    out.print(header, markup=False)
    for info in infos:
        out.print(_row(info, width), markup=False)
    return 0


def _row(info: ConversationInfo, width: int) -> str:
    lease = (
        f"{info.lease_owner} ({info.lease_expires_in or 0:.0f} s)"
        if info.lease_owner is not None
        else "-"
    )
    return (
        f"{printable(info.conversation_id):<{width}}  {info.version:>7}  "
        f"{_when(info.updated_at):<19}  {info.message_count:>8}  {printable(lease)}"
    )


def _content(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
        elif isinstance(part, dict) and part.get("type") == "image_url":
            parts.append("[image]")
        else:
            parts.append(json.dumps(part, ensure_ascii=False, default=str))
    return " ".join(parts)


async def _show(
    storage: ConversationStorage, cid: str, spec: str, out: Console, err: Console
) -> int:
    stored = await storage.load(cid)
    if stored is None:
        err.print(
            f"[red]error:[/] no conversation {escape(repr(cid))} in {escape(store_label(spec))}"
        )
        return 1
    snapshot = stored.snapshot
    tools = [t.get("function", {}).get("name", "?") for t in snapshot.tools or ()]
    out.print(
        f"[dim]conversation {escape(printable(cid))} · version {stored.version} · "
        f"{len(snapshot)} messages · tools: {escape(', '.join(tools) or 'none')}[/]"
    )
    for index, message in enumerate(snapshot.messages):
        role = str(message.get("role"))
        text = _content(message.get("content"))
        if role == "tool":
            line = f"tool [{message.get('tool_call_id')}]: {text}"
        else:
            line = f"{role}: {text}" if text else f"{role}:"
        if index in snapshot.interrupted:
            line += "  ⏹ interrupted"
        lines = [line]
        for call in message.get("tool_calls") or ():
            call = call if isinstance(call, dict) else {}
            function = call.get("function") or {}
            lines.append(
                f"  → {function.get('name')}({function.get('arguments')}) [{call.get('id')}]"
            )
        for text_line in lines:
            out.print(printable(text_line), markup=False)
    return 0


async def _delete(
    storage: ConversationStorage, cid: str, spec: str, out: Console, err: Console
) -> int:
    info = await storage.info(cid)
    if info is not None and info.lease_owner is not None:
        raise LeaseHeldError(cid, info.lease_owner, info.lease_expires_in or 0.0)
    if not await storage.delete(cid):
        err.print(
            f"[red]error:[/] no conversation {escape(repr(cid))} in {escape(store_label(spec))}"
        )
        return 1
    out.print(f"deleted conversation {escape(printable(cid))}")
    return 0


def conversations_main(options: ConversationsOptions) -> int:
    """``trouper conversations``: run it on a new trio loop."""
    return trio.run(run_conversations, options)
