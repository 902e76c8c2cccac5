"""Taking a conversation over: lease it, load it, settle what its dead owner left open.

A process that dies in the middle of an answer leaves the tool calls it was running as
``IN_PROGRESS`` tool messages, and nobody will ever settle them: the next request would
carry them as they are. :func:`open_conversation` settles them once, as
:data:`INTERRUPTED_TOOL_RESULT`, and marks the assistant message that asked for them as an
interrupted answer (one marker per answer), in one append under the new owner's lease. A
second load finds nothing open, so nothing piles up across crashes.
"""

from __future__ import annotations

import math
from typing import NoReturn

import attrs
import structlog
import trio

from .._context import ContextSnapshot
from ._changes import Change, MarkInterrupted, SettleToolCall
from ._contract import ConversationStorage, Lease
from ._errors import StorageError, StorageUnavailableError, check_id
from ._fold import fold
from ._keeper import log_renewal_failure, retry_delay, unreachable_until_expired

__all__ = [
    "INTERRUPTED_TOOL_RESULT",
    "OpenedConversation",
    "keep_lease",
    "open_conversation",
    "open_tool_calls",
    "recovery_changes",
]

log = structlog.get_logger("trouper.actors.storage")

#: The content of a tool call settled by crash recovery (its process died before the result).
INTERRUPTED_TOOL_RESULT = "INTERRUPTED"

_PLACEHOLDER = "IN_PROGRESS"


def open_tool_calls(snapshot: ContextSnapshot) -> dict[int, list[str]]:
    """The tool calls still ``IN_PROGRESS``, by the index of the assistant message that
    asked for them (in message order)."""
    asked_by: dict[str, int] = {}
    found: dict[int, list[str]] = {}
    for index, message in enumerate(snapshot.messages):
        role = message.get("role")
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    asked_by[call["id"]] = index
        elif role == "tool" and message.get("content") == _PLACEHOLDER:
            call_id = message.get("tool_call_id")
            if isinstance(call_id, str) and call_id in asked_by:
                found.setdefault(asked_by[call_id], []).append(call_id)
    return found


def recovery_changes(snapshot: ContextSnapshot) -> tuple[Change, ...]:
    """The changes that settle a dead owner's open tool calls: each becomes
    :data:`INTERRUPTED_TOOL_RESULT`, and the assistant message that asked for them is marked
    interrupted. Empty when nothing is open."""
    changes: list[Change] = []
    for index, calls in open_tool_calls(snapshot).items():
        changes.extend(SettleToolCall(call_id, INTERRUPTED_TOOL_RESULT) for call_id in calls)
        if index not in snapshot.interrupted:
            changes.append(MarkInterrupted(index))
    return tuple(changes)


@attrs.frozen(slots=True)
class OpenedConversation:
    """A conversation taken over by :func:`open_conversation`.

    Attributes:
        conversation_id: The conversation.
        lease: The lease now held (renew it, e.g. with :func:`keep_lease`; release it at
            the end).
        version: The version to base the next append on (0: the conversation is new).
        snapshot: Its content after recovery (``None``: it does not exist yet).
        recovered: Ids of the tool calls that recovery settled as interrupted.
    """

    conversation_id: str
    lease: Lease
    version: int
    snapshot: ContextSnapshot | None
    recovered: tuple[str, ...] = ()


async def open_conversation(
    storage: ConversationStorage, conversation_id: str, *, owner: str, ttl: float
) -> OpenedConversation:
    """Lease the conversation to ``owner``, load it, and settle the tool calls a previous
    owner left ``IN_PROGRESS`` (see the module documentation). Holding the lease proves that
    no other owner is alive, so whatever is still open will never settle otherwise.

    On any error the lease is released again before the error propagates.

    Raises:
        LeaseHeldError: Another owner holds a live lease (try again after it expires).
        ConversationCorruptError: The stored conversation is not valid.
        StorageError: Anything else the storage reports.
    """
    cid = check_id(conversation_id)
    lease = await storage.acquire_lease(cid, owner, ttl)
    try:
        stored = await storage.load(cid)
        if stored is None:
            return OpenedConversation(cid, lease, 0, None)
        changes = recovery_changes(stored.snapshot)
        if not changes:
            return OpenedConversation(cid, lease, stored.version, stored.snapshot)
        version = await storage.append(cid, changes, expected_version=stored.version, lease=lease)
        snapshot = fold(stored.snapshot, changes, conversation_id=cid)
        recovered = tuple(c.tool_call_id for c in changes if isinstance(c, SettleToolCall))
        log.info(
            "settled the tool calls of a dead owner as interrupted",
            conversation_id=cid,
            tool_calls=list(recovered),
        )
        return OpenedConversation(cid, lease, version, snapshot, recovered)
    except BaseException:
        with trio.CancelScope(shield=True):
            try:
                await storage.release_lease(lease)
            except StorageError as exc:
                log.warning("releasing the lease failed", conversation_id=cid, error=str(exc))
        raise


async def keep_lease(
    storage: ConversationStorage, lease: Lease, *, every: float | None = None
) -> NoReturn:
    """Renew ``lease`` every ``every`` seconds (default: a third of its ttl) until cancelled.

    Each period is counted from when the last renewal that succeeded was sent. A renewal the
    storage could not carry out (unreachable) is retried soon (the lease keeper's policy:
    a thirtieth of the ttl, doubled at each failure, at most a sixth or ``every``) until the
    lease would have expired anyway.

    Raises:
        LeaseLostError: The lease expired or was taken over (stop writing), or the storage
            stayed unreachable until it would have expired.
    """
    period = lease.ttl / 3 if every is None else every
    if not math.isfinite(period) or period <= 0:
        raise ValueError(f"every must be a positive number of seconds, got {every!r}")
    renewed_at = trio.current_time()  # when the last renewal that succeeded was sent
    wait = period
    failures = 0
    while True:
        await trio.sleep_until(renewed_at + wait)
        sent = trio.current_time()
        try:
            lease = await storage.renew_lease(lease)
        except StorageUnavailableError as exc:
            failures += 1
            now = trio.current_time()
            retry = min(period, retry_delay(lease.ttl, failures))
            if now + retry >= renewed_at + lease.ttl:
                raise unreachable_until_expired(lease, exc) from exc
            log_renewal_failure(lease, failures, exc)
            wait = now + retry - renewed_at
        else:
            renewed_at, wait, failures = sent, period, 0
