"""Conversations addressed by id from any process: :class:`ConversationClient` and
:class:`RemoteConversation`."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import AsyncIterator
from typing import Any

import attrs

from runtime import Frame
from runtime.cluster import (
    DEFAULT_PREFIX,
    ClusterClient,
    ClusterStatus,
    Placement,
    RemoteSession,
)

from .._frames import TranscriptionFrame
from ..storage._urls import mask_url

__all__ = ["ConversationClient", "RemoteConversation"]


@attrs.define(eq=False)
class ConversationClient:
    """Open conversations by id, wherever they run (a process's way into the cluster).

    ::

        async with ConversationClient("redis://127.0.0.1:6379/0") as client:
            async with client.open("user-42") as conversation:
                await conversation.send_text("Hello")
                async for frame in conversation:
                    if isinstance(frame, LLMTextFrame):
                        print(frame.text, end="")
                    elif isinstance(frame, LLMFullResponseEndFrame):
                        break

    An answer begins with ``LLMFullResponseStartFrame``: an ``LLMFullResponseEndFrame``
    read before it is the end of an answer interrupted just before (a reader opened after an
    interruption can see it), not of the answer asked for.

    From asyncio, run the same code through :class:`runtime.AsyncioBridge`.

    Args:
        url: The cluster's Redis server.
        prefix: The cluster's key prefix (the workers' own).
        check_secs: How long a reader waits for output before it checks that the
            conversation's worker is still alive.
    """

    url: str = attrs.field(repr=lambda url: repr(mask_url(url)))  # never the password in a repr
    prefix: str = DEFAULT_PREFIX
    check_secs: float = 0.5
    _cluster: ClusterClient | None = attrs.field(default=None, init=False)

    async def __aenter__(self) -> ConversationClient:
        """Connect.

        Raises:
            ClusterUnavailableError: Redis cannot be reached.
        """
        cluster = ClusterClient(self.url, prefix=self.prefix, check_secs=self.check_secs)
        await cluster.__aenter__()
        self._cluster = cluster
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Close the connections."""
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            await cluster.__aexit__(*exc_info)

    @property
    def cluster(self) -> ClusterClient:
        """The underlying :class:`runtime.cluster.ClusterClient`.

        Raises:
            ClusterError: The client is not open.
        """
        if self._cluster is None:
            from runtime.cluster import ClusterError

            raise ClusterError("the ConversationClient is not open: use it in 'async with'")
        return self._cluster

    @contextlib.asynccontextmanager
    async def open(self, conversation_id: str) -> AsyncIterator[RemoteConversation]:
        """A handle on the conversation, reading its output from now on (it is placed on a
        worker by the first message)."""
        async with self.cluster.open(conversation_id) as remote:
            yield RemoteConversation(remote)

    async def status(self) -> ClusterStatus:
        """The live workers, their load and the conversations they own."""
        return await self.cluster.status()


@attrs.define(eq=False)
class RemoteConversation:
    """A conversation, wherever it runs (see :meth:`ConversationClient.open`).

    Iterate it for the conversation's output, each frame once and in order: the text
    deltas (``LLMTextFrame``), the answer's start and end frames, tool-call frames, errors
    (``ErrorFrame``), a :class:`runtime.cluster.RemoteInterruptedFrame` where an interruption
    was acknowledged (nothing of the interrupted answer follows it) and a
    :class:`runtime.cluster.OwnerLostFrame` when the conversation's worker died mid-answer
    (send the message again: the conversation is placed on a live worker and resumes from
    storage).
    """

    remote: RemoteSession

    @property
    def conversation_id(self) -> str:
        """The conversation's id."""
        return self.remote.key

    async def send_text(self, text: str, *, user_id: str = "") -> Placement:
        """Send a line of user text (a user turn); where the conversation runs.

        Raises:
            TypeError: ``text`` is not a string.
            NoWorkerError: No live worker.
        """
        if not isinstance(text, str):
            raise TypeError(f"send_text takes a str, got {type(text).__name__}")
        stamp = datetime.datetime.now(datetime.UTC).isoformat()
        return await self.remote.send(TranscriptionFrame(text, user_id=user_id, timestamp=stamp))

    async def send(self, *frames: Frame) -> Placement:
        """Send any serializable frames, in order (see :meth:`RemoteSession.send`)."""
        return await self.remote.send(*frames)

    async def interrupt(self, *, wait_secs: float = 5.0) -> bool:
        """Interrupt the answer being produced and wait for the acknowledgement; ``False``
        when nothing was running (see :meth:`RemoteSession.interrupt`)."""
        return await self.remote.interrupt(wait_secs=wait_secs)

    def __aiter__(self) -> RemoteConversation:
        return self

    async def __anext__(self) -> Frame:
        """The next output frame (waits for it)."""
        return await self.remote.__anext__()
