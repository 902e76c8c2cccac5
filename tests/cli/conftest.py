"""Fixtures of the CLI tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest


@pytest.fixture(autouse=True)
def data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own ``$XDG_DATA_HOME`` (the CLIs it runs inherit it): the chat's history
    and conversations never go to the user's."""
    path = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("XDG_DATA_HOME", str(path))
    return path


@pytest.fixture
def spawn() -> Iterator[list[pexpect.spawn]]:
    """Spawned ``trouper`` sessions; any a test leaves running is killed."""
    children: list[pexpect.spawn] = []
    yield children
    for child in children:
        if child.isalive():
            child.close(force=True)
