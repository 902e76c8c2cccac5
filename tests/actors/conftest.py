"""Fixtures for the conversation-stage tests: a scripted OpenAI-compatible server (a real HTTP
server on 127.0.0.1 inside the test's trio run) and a chunk factory.

Tests take ``autojump_clock`` themselves (pytest-trio only uses a clock that is a parameter of
the test), so every delay in a script, backoff and timeout runs in virtual time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.testing import ChunkFactory, ScriptedOpenAIServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAIServer]:
    """A running scripted server; the test fails if a request found no scripted reply."""
    async with ScriptedOpenAIServer() as running:
        yield running
        assert running.unexpected_requests == 0, "a request found no scripted reply"


@pytest.fixture
def chunks() -> ChunkFactory:
    """Builds ``chat.completion.chunk`` dicts."""
    return ChunkFactory()
