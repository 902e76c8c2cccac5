"""The conversation pipeline of the end-to-end tests, pointed at the session's real llama-server,
with every frame that reaches its ends recorded, plus a few probes of the server and of this
process's sockets."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import httpx
import pytest
import trio

from actors import (
    FunctionHandler,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OpenAILLMContext,
    OpenAILLMService,
    PipelineParams,
    TextTransport,
    ToolsSchema,
)
from actors.client import Timeouts
from runtime import ErrorFrame, Frame, FrameDirection, Pipeline, PipelineTask

from ..conftest import LocalLLM

__all__ = [
    "STEP_TIMEOUT",
    "Conversation",
    "open_conversation",
    "server_get",
    "sockets_to",
    "wait_until",
]

F = TypeVar("F", bound=Frame)

#: Bound on any one step against the real server (an answer, a probe). Generous: the tests run
#: on 2 busy cores, where a short answer can take 20 s; they normally take a few seconds.
STEP_TIMEOUT = 180.0

SYSTEM = "You are a helpful assistant."


@attrs.define
class Conversation:
    """A running conversation: the task, its stages, and what reached its ends."""

    task: PipelineTask
    transport: TextTransport
    llm: OpenAILLMService
    context: OpenAILLMContext
    frames: list[Frame] = attrs.Factory(list)
    """Every downstream frame that reached the output transport, in order."""
    errors: list[ErrorFrame] = attrs.Factory(list)
    """Every ``ErrorFrame`` that reached the input end."""
    _changed: trio.Event = attrs.Factory(trio.Event)

    def _record(self, frame: Frame) -> None:
        self.frames.append(frame)
        self._changed.set()
        self._changed = trio.Event()

    def _record_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        if isinstance(frame, ErrorFrame):
            self.errors.append(frame)
            self._changed.set()
            self._changed = trio.Event()

    def of_type(self, cls: type[F]) -> list[F]:
        """The recorded downstream frames of type ``cls``."""
        return [f for f in self.frames if isinstance(f, cls)]

    def position(self, frame: Frame) -> int:
        """Where ``frame`` (this very object: frames compare by value) is in :attr:`frames`."""
        return next(i for i, recorded in enumerate(self.frames) if recorded is frame)

    def text(self) -> str:
        """All the recorded ``LLMTextFrame`` text."""
        return "".join(f.text for f in self.of_type(LLMTextFrame))

    def ends(self) -> list[LLMFullResponseEndFrame]:
        """The recorded ``LLMFullResponseEndFrame``s."""
        return self.of_type(LLMFullResponseEndFrame)

    def starts(self) -> list[LLMFullResponseStartFrame]:
        """The recorded ``LLMFullResponseStartFrame``s."""
        return self.of_type(LLMFullResponseStartFrame)

    async def wait_for(
        self, predicate: Callable[[], bool], what: str, bound: float = STEP_TIMEOUT
    ) -> None:
        """Wait until ``predicate()`` holds (checked after each recorded frame); fail after
        ``bound`` seconds with ``what`` and what was recorded."""
        with trio.move_on_after(bound):
            while not predicate():
                await self._changed.wait()
            return
        kinds = [type(f).__name__ for f in self.frames if not isinstance(f, LLMTextFrame)]
        pytest.fail(
            f"{what}: not seen within {bound:g} s. Frames (text left out): {kinds}; "
            f"errors: {[e.error for e in self.errors]}"
        )


@asynccontextmanager
async def open_conversation(
    server: LocalLLM,
    *,
    tools: ToolsSchema | None = None,
    functions: dict[str, FunctionHandler] | None = None,
    system: str = SYSTEM,
) -> AsyncIterator[Conversation]:
    """Run the seed pipeline (input, user aggregator, LLM, output, assistant aggregator) on the
    real server at temperature 0, with metrics on, for the duration of the block."""
    llm = OpenAILLMService(
        model=server.model,
        base_url=server.base_url,
        api_key="no-key",
        params=OpenAILLMService.InputParams(temperature=0),
        timeouts=Timeouts(connect=10.0, first_token=STEP_TIMEOUT, idle=60.0),
    )
    for name, handler in (functions or {}).items():
        llm.register_function(name, handler)
    context = OpenAILLMContext(messages=[{"role": "system", "content": system}], tools=tools)
    pair = llm.create_context_aggregator(context)
    transport = TextTransport()
    task = PipelineTask(
        Pipeline([transport.input(), pair.user(), llm, transport.output(), pair.assistant()]),
        PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        name="e2e",
    )
    conversation = Conversation(task, transport, llm, context)
    transport.on_output = conversation._record
    task.add_listener(conversation._record_upstream, FrameDirection.UPSTREAM)
    with trio.fail_after(STEP_TIMEOUT * 3):
        async with task:
            yield conversation


async def server_get(server: LocalLLM, path: str) -> Any:
    """``GET`` a llama-server endpoint (``/slots``, ``/props``...) and return its JSON."""
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        response = await client.get(f"{server.root_url}{path}")
    response.raise_for_status()
    return response.json()


def sockets_to(port: int) -> int:
    """How many TCP sockets *this process* holds open to ``port`` on any address.

    The kernel's TCP table (``/proc/self/net/tcp``, ``tcp6``) gives each socket's remote port
    and inode; ``/proc/self/fd`` says which socket inodes this process has open. A socket the
    process closed no longer appears among its descriptors, whatever TCP state it lingers in.
    """
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            mine.add(target[len("socket:[") : -1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:  # no IPv6
            continue
        for row in rows:
            fields = row.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in mine:
                count += 1
    return count


async def wait_until(predicate: Callable[[], bool], what: str, bound: float) -> float:
    """Poll ``predicate`` every 50 ms until it holds; return how long that took. Fails after
    ``bound`` seconds."""
    started = trio.current_time()
    with trio.move_on_after(bound):
        while True:
            if predicate():
                return trio.current_time() - started
            await trio.sleep(0.05)
    pytest.fail(f"{what}: not within {bound:g} s")
