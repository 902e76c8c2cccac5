"""Fixtures for the local-model tests: an isolated cache, synthetic model wheels, fake pip and
fake llama-server commands. ``local_llm_server`` -- the real llama-server on the real model,
started once per test session -- lives in ``tests/conftest.py``."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import pytest
import trio

from actors.local import ModelSpec, ServerCommand

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).parent
FAKE_SERVER = HERE / "fake_llama_server.py"
FAKE_PIP = HERE / "fake_pip.py"


# ---------------------------------------------------------------- helpers for process tests


def read_pids(pidfile: Path) -> list[int]:
    """The pids the fake llama-server wrote to ``pidfile``, in start order."""
    return [int(line) for line in pidfile.read_text().split()] if pidfile.exists() else []


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def wait_until(predicate: Callable[[], bool], bound: float = 20.0) -> None:
    """Poll ``predicate`` (about every 20 ms) until it holds; fail after ``bound`` seconds."""
    with trio.fail_after(bound):
        while True:
            if predicate():
                return
            await trio.sleep(0.02)


# ---------------------------------------------------------------- isolation and fakes


@pytest.fixture(autouse=True)
def trouper_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point TROUPER_HOME at a fresh directory so no test touches the real cache."""
    home = tmp_path / "trouper-home"
    monkeypatch.setenv("TROUPER_HOME", str(home))
    monkeypatch.delenv("TROUPER_LLAMA_SERVER", raising=False)
    return home


@attrs.frozen
class SyntheticModel:
    """A small "model" split into ``data/partNN.bin`` members of wheels built for the test."""

    spec: ModelSpec
    payload: bytes
    source: Path


def build_wheel(path: Path, dist: str, members: dict[str, bytes]) -> None:
    """Write a minimal wheel (a zip file) holding ``members``, in the given order."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}-1.0.dist-info/METADATA", "Metadata-Version: 2.1\n")


@pytest.fixture
def synthetic_model(tmp_path: Path) -> SyntheticModel:
    """Three wheels carrying parts 1..12 of a random payload, out of order inside the zips.

    Part names mix zero-padded and plain numbers (``part03.bin``, ``part10.bin``) so only a
    numeric sort restores the payload.
    """
    payload = os.urandom(12 * 5000 + 123)
    chunks = [payload[i * 5000 : (i + 1) * 5000] for i in range(12)]
    chunks[-1] += payload[12 * 5000 :]
    source = tmp_path / "wheel-source"
    source.mkdir()
    layout = {1: [3, 1, 2], 2: [9, 4, 5, 6, 8, 7], 3: [12, 10, 11]}
    for wheel, numbers in layout.items():
        dist = f"fake_model_part{wheel}"
        members = {
            f"{dist}/data/part{n:02d}.bin" if n < 10 else f"{dist}/data/part{n}.bin": chunks[n - 1]
            for n in numbers
        }
        build_wheel(source / f"{dist}-1.0-py3-none-any.whl", dist, members)
    spec = ModelSpec(
        name="fake-model",
        filename="fake-model.gguf",
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        requirements=tuple(f"fake-model-part{i}==1.0" for i in (1, 2, 3)),
    )
    return SyntheticModel(spec=spec, payload=payload, source=source)


@pytest.fixture
def fake_pip(
    synthetic_model: SyntheticModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """The command of a fake pip serving ``synthetic_model``'s wheels (see fake_pip.py)."""
    monkeypatch.setenv("FAKE_PIP_SOURCE", str(synthetic_model.source))
    monkeypatch.setenv("FAKE_PIP_LOG", str(tmp_path / "pip-runs.log"))
    return [sys.executable, str(FAKE_PIP)]


@pytest.fixture
def fake_server_command() -> ServerCommand:
    """A ServerCommand that runs the fake llama-server (fake_llama_server.py)."""
    return ServerCommand((sys.executable, str(FAKE_SERVER)), "test")


@pytest.fixture
def fake_model_file(tmp_path: Path) -> Path:
    """A file standing in for a GGUF model where only its existence matters."""
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF fake")
    return path
