"""Fixtures for the chat-completions client tests: a scripted server and a client pointed at it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from actors.testing import ScriptedOpenAIServer

from .client_helpers import client_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from actors.client import ChatCompletionsClient


@pytest.fixture
async def server() -> AsyncIterator[ScriptedOpenAIServer]:
    """A running scripted server (in this test's trio run)."""
    async with ScriptedOpenAIServer() as running:
        yield running


@pytest.fixture
async def client(server: ScriptedOpenAIServer) -> AsyncIterator[ChatCompletionsClient]:
    """A client pointed at :func:`server`, with short timeouts and the default retry policy."""
    async with client_for(server) as created:
        yield created
