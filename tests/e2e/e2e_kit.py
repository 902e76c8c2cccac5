"""The conversation pipeline of the end-to-end tests, pointed at the session's real llama-server
(the shared harness of :mod:`tests.conversation_kit`, quick-start shape), plus a few probes of
the server and of this process's sockets."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from actors import FunctionHandler, OpenAILLMService, PipelineParams, ToolsSchema
from actors.client import Timeouts

from .. import conversation_kit
from ..conftest import LocalLLM
from ..conversation_kit import Conversation

__all__ = [
    "STEP_TIMEOUT",
    "Conversation",
    "open_conversation",
    "server_get",
    "sockets_to",
    "wait_until",
]

#: Bound on any one step against the real server (an answer, a probe). Generous: the tests run
#: on 2 busy cores, where a short answer can take 20 s; they normally take a few seconds.
STEP_TIMEOUT = 180.0

SYSTEM = "You are a helpful assistant."


@asynccontextmanager
async def open_conversation(
    server: LocalLLM,
    *,
    tools: ToolsSchema | None = None,
    functions: Mapping[str | None, FunctionHandler] | None = None,
    system: str = SYSTEM,
) -> AsyncIterator[Conversation]:
    """Run the seed pipeline (input, user aggregator, LLM, output, assistant aggregator) on the
    real server at temperature 0, with metrics on, for the duration of the block; every wait is
    bounded by :data:`STEP_TIMEOUT` (real seconds)."""
    with trio.fail_after(STEP_TIMEOUT * 3):
        async with conversation_kit.open_conversation(
            server,
            model=server.model,
            api_key="no-key",
            quick_start=True,
            messages=[{"role": "system", "content": system}],
            tools=tools,
            functions=functions,
            params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
            name="e2e",
            llm_params=OpenAILLMService.InputParams(temperature=0),
            timeouts=Timeouts(connect=10.0, first_token=STEP_TIMEOUT, idle=60.0),
            within=STEP_TIMEOUT,
        ) as conversation:
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
