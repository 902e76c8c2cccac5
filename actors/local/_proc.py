"""Child processes of the local-model tools (pip, the build): read their lines, always reap them."""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["end_process", "open_piped", "text_lines"]


async def open_piped(command: list[str], env: dict[str, str]) -> trio.Process:
    """Start ``command`` with no stdin and stdout+stderr on one pipe (raises ``OSError``)."""
    return await trio.lowlevel.open_process(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )


async def end_process(process: trio.Process) -> None:
    """Terminate (then kill) ``process`` if it still runs, and reap it, even when cancelled."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def text_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    """Yield the text lines of a byte stream, splitting on ``\\n`` and ``\\r``."""
    buffer = b""
    async for data in stream:
        buffer += data
        *complete, buffer = re.split(rb"\r\n|\r|\n", buffer)
        for raw in complete:
            yield raw.decode("utf-8", "replace")
    if buffer:
        yield buffer.decode("utf-8", "replace")
