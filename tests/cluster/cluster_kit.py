"""Helpers of the cluster tests: a fresh prefix per test, workers in the test's own trio run,
and reading a remote session's output."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from actors import LLMFullResponseEndFrame, LLMTextFrame
from actors.cluster import RemoteConversation
from runtime import ErrorFrame, Frame
from runtime.cluster import ClusterClient, ClusterWorker, OwnerLostFrame, RemoteSession

from .echo_app import factory

__all__ = [
    "SECS",
    "client",
    "collect",
    "new_prefix",
    "read_answer",
    "wait_until",
    "workers",
]

#: The bound of every wait (real seconds).
SECS = 10.0


def new_prefix() -> str:
    """A Redis key prefix of its own for one test."""
    return f"t-{uuid.uuid4().hex[:10]}:"


@asynccontextmanager
async def workers(
    url: str, prefix: str, count: int = 1, **options: Any
) -> AsyncIterator[list[ClusterWorker]]:
    """``count`` echo workers running in the background of the block."""
    options.setdefault("lease_ttl", 3.0)
    started = [ClusterWorker(url, factory, prefix=prefix, **options) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for worker in started:
            await nursery.start(worker.run)
        yield started
        for worker in started:
            worker.stop()


async def collect(
    remote: RemoteSession, until: Callable[[Frame], bool], *, secs: float = SECS
) -> list[Frame]:
    """Output frames of ``remote`` up to the first for which ``until`` holds (included)."""
    frames: list[Frame] = []
    with trio.fail_after(secs):
        async for frame in remote:
            frames.append(frame)
            if until(frame):
                return frames
    raise AssertionError("the output ended")  # pragma: no cover - the iterator never ends


def client(url: str, prefix: str) -> ClusterClient:
    """A client of the test's cluster."""
    return ClusterClient(url, prefix=prefix, check_secs=0.2)


async def wait_until(condition: Callable[[], bool], *, secs: float = SECS) -> None:
    """Poll ``condition`` (it reads state another process or task changes) until it holds."""
    for _ in range(int(secs / 0.02)):
        if condition():
            return
        await trio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def read_answer(conversation: RemoteConversation) -> tuple[list[str], str]:
    """The text of one answer and how it ended (``done``, ``lost`` or ``error: ...``)."""
    texts: list[str] = []
    with trio.fail_after(60):
        async for frame in conversation:
            if isinstance(frame, LLMTextFrame):
                texts.append(frame.text)
            elif isinstance(frame, LLMFullResponseEndFrame):
                return texts, "done"
            elif isinstance(frame, OwnerLostFrame):
                return texts, "lost"
            elif isinstance(frame, ErrorFrame):
                return texts, f"{frame.category}: {frame.error}"
    raise AssertionError("the output ended")
