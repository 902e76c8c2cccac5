"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator

import pexpect
import pytest


@pytest.fixture
def spawn() -> Iterator[list[pexpect.spawn]]:
    """Spawned ``trouper`` sessions; any a test leaves running is killed."""
    children: list[pexpect.spawn] = []
    yield children
    for child in children:
        if child.isalive():
            child.close(force=True)
