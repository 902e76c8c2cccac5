"""Conversations hosted by a cluster worker, persisted in a Redis conversation storage."""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
import trio

from runtime import ErrorFrame, Frame, FrameDirection, PipelineTask
from runtime.cluster import DEFAULT_PREFIX, ClusterWorker, new_worker_id

from .._aggregators import OpenAIContextAggregatorPair
from .._context import OpenAILLMContext
from .._service import OpenAILLMService
from ..storage import (
    ConversationConflictError,
    ConversationStorage,
    LeaseHeldError,
    LeaseLostError,
    RedisConversationStorage,
    StorageError,
)
from ..storage._urls import mask_url

__all__ = ["ConversationFactory", "ConversationWorker", "HostedConversation"]


def _url_repr(url: str | None) -> str:
    """A URL as a repr shows it, its password masked."""
    return repr(url if url is None else mask_url(url))


log = structlog.get_logger("trouper.actors.cluster")

_NOT_WRITTEN = (LeaseLostError, LeaseHeldError, ConversationConflictError)


@attrs.frozen(slots=True)
class HostedConversation:
    """What a :data:`ConversationFactory` gets to build one conversation's session.

    Attributes:
        conversation_id: The conversation (the key the cluster placed here).
        storage: The worker's open conversation storage: give it to
            ``create_context_aggregator(context, storage=..., conversation_id=...)`` so the
            conversation resumes from what is stored wherever it was placed before.
        lease_ttl: The lease to take on it (``create_context_aggregator(lease_ttl=...)``):
            the worker's own, so a dead worker's conversations are free when it is re-placed.
        worker_id: The hosting worker.
    """

    conversation_id: str
    storage: ConversationStorage
    lease_ttl: float
    worker_id: str

    def context_aggregator(
        self, llm: OpenAILLMService, context: OpenAILLMContext
    ) -> OpenAIContextAggregatorPair:
        """``llm``'s aggregator pair for ``context``, persisted in this conversation: the
        same as ``llm.create_context_aggregator(context, storage=self.storage,
        conversation_id=self.conversation_id, lease_ttl=self.lease_ttl)``."""
        return llm.create_context_aggregator(
            context,
            storage=self.storage,
            conversation_id=self.conversation_id,
            lease_ttl=self.lease_ttl,
        )


#: Builds a conversation's session: a ``PipelineTask`` not yet run (or an awaitable of one).
ConversationFactory = Callable[[HostedConversation], "PipelineTask | Awaitable[PipelineTask]"]


@attrs.define(eq=False)
class ConversationWorker:
    """A cluster worker whose sessions are conversations persisted in Redis.

    It opens a :class:`~actors.storage.RedisConversationStorage` and runs a
    :class:`runtime.cluster.ClusterWorker` whose factory waits until no other owner holds the
    conversation's storage lease (a dead worker's lease expires), then calls ``factory``. The
    conversation's context aggregator takes it over from the storage (``open_conversation``:
    committed turns intact, the tool calls of a dead owner settled as interrupted), so a
    conversation placed again after a failure resumes where it was committed.

    Run it like a ``ClusterWorker``: ``await nursery.start(worker.run)`` or ``async with``;
    :meth:`stop` ends it gracefully. Log lines of its sessions carry ``conversation``,
    ``worker``, ``epoch`` (the placement), and the runtime's ``session`` and ``turn``.

    Args:
        url: The cluster's Redis server.
        factory: Builds each conversation's session (see :class:`HostedConversation`).
        storage_url: Where conversations are stored (default: ``url``).
        prefix: The cluster's key prefix (the clients must use the same).
        storage_prefix: The storage's key prefix.
        lease_ttl: Seconds a placement, and the conversation's storage lease, last unless
            renewed: how long a dead worker's conversations wait before being re-placed.
        idle_timeout_secs: A conversation with no message and no output for this long is
            stopped (its state is in storage).
        stop_timeout_secs: How long a conversation may take to end before it is cancelled.
        worker_id: The worker's id (default: host, process id and a random part).
    """

    url: str = attrs.field(repr=_url_repr)  # never the password in a repr
    factory: ConversationFactory
    storage_url: str | None = attrs.field(default=None, repr=_url_repr)
    prefix: str = DEFAULT_PREFIX
    storage_prefix: str = "trouper:"
    lease_ttl: float = 10.0
    idle_timeout_secs: float = 300.0
    stop_timeout_secs: float = 10.0
    worker_id: str = attrs.field(factory=new_worker_id)
    _worker: ClusterWorker | None = attrs.field(default=None, init=False)
    _stopping: bool = attrs.field(default=False, init=False)
    _cm: Any = attrs.field(default=None, init=False)

    @property
    def conversations(self) -> dict[str, int]:
        """The conversations hosted now, with their placement's epoch."""
        return {} if self._worker is None else self._worker.keys

    def stop(self) -> None:
        """End the worker gracefully. Idempotent."""
        self._stopping = True
        if self._worker is not None:
            self._worker.stop()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop` (see :meth:`runtime.cluster.ClusterWorker.run`).

        Raises:
            StorageUnavailableError: The storage cannot be reached.
            ClusterUnavailableError: The cluster's Redis cannot be reached.
        """
        storage = RedisConversationStorage(self.storage_url or self.url, prefix=self.storage_prefix)
        async with storage:
            self._worker = ClusterWorker(
                self.url,
                self._factory(storage),
                prefix=self.prefix,
                worker_id=self.worker_id,
                lease_ttl=self.lease_ttl,
                idle_timeout_secs=self.idle_timeout_secs,
                stop_timeout_secs=self.stop_timeout_secs,
                key_field="conversation",
            )
            if self._stopping:
                self._worker.stop()
            try:
                await self._worker.run(task_status=task_status)
            finally:
                self._worker = None

    async def __aenter__(self) -> ConversationWorker:
        """Run the worker in the background of the block (it has announced itself)."""
        self._cm = trio.open_nursery()
        nursery = await self._cm.__aenter__()
        await nursery.start(self.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Stop the worker gracefully and wait for it."""
        self.stop()
        await self._cm.__aexit__(*exc_info)

    def _factory(self, storage: ConversationStorage) -> Callable[[str], Awaitable[PipelineTask]]:
        async def build(conversation_id: str) -> PipelineTask:
            await wait_for_free_lease(storage, conversation_id, self.lease_ttl * 4)
            made = self.factory(
                HostedConversation(conversation_id, storage, self.lease_ttl, self.worker_id)
            )
            task = await made if inspect.isawaitable(made) else made
            if not isinstance(task, PipelineTask):
                raise TypeError(
                    f"the conversation factory must return a PipelineTask, got {type(task)!r}"
                )
            task.add_listener(_end_when_not_written(task), FrameDirection.UPSTREAM)
            return task

        return build


def _end_when_not_written(task: PipelineTask) -> Callable[[Frame, FrameDirection], None]:
    """A listener that cancels ``task`` once its context store stops writing the
    conversation for good (its storage lease was lost or taken over): the next message
    places the conversation again and resumes it from storage, instead of a session that
    goes on without persisting."""

    def on_upstream(frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, ErrorFrame) and isinstance(frame.exception, _NOT_WRITTEN):
            log.warning(
                "the conversation is no longer written; its session ends", error=frame.error
            )
            task.cancel("the conversation's storage lease was lost")

    return on_upstream


async def wait_for_free_lease(
    storage: ConversationStorage, conversation_id: str, patience: float
) -> None:
    """Wait (at most ``patience`` seconds) until nobody holds a live lease on the
    conversation: a dead owner's lease expires by itself."""
    with trio.move_on_after(patience):
        while True:
            try:
                info = await storage.info(conversation_id)
            except StorageError as exc:
                log.warning("reading the conversation's lease failed", error=str(exc))
                info = None
            if info is None or info.lease_owner is None:
                return
            wait = info.lease_expires_in or 0.1
            log.info(
                "waiting for a previous owner's lease to expire",
                owner=info.lease_owner,
                expires_in=wait,
            )
            await trio.sleep(min(max(wait, 0.05), 1.0) if math.isfinite(wait) else 1.0)
