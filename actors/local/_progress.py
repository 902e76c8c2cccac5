"""An optional wrapper over ``rich.progress``: model code reads the same with or without bars."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

__all__ = ["Bars"]


class Bars:
    """Progress bars on stderr (of bytes, or of percent), or nothing at all when disabled."""

    def __init__(
        self, *, enabled: bool, console: Console | None = None, unit: str = "bytes"
    ) -> None:
        self._progress: Progress | None = None
        if enabled:
            columns = (
                (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
                if unit == "bytes"
                else (TaskProgressColumn(), TimeElapsedColumn())
            )
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                *columns,
                console=console if console is not None else Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, total: int | None) -> TaskID | None:
        """Add a bar; returns its handle (``None`` when bars are disabled)."""
        if self._progress is None:
            return None
        return self._progress.add_task(description, total=total)

    def update(
        self,
        task: TaskID | None,
        *,
        completed: int | None = None,
        advance: int | None = None,
        total: int | None = None,
        description: str | None = None,
    ) -> None:
        """Move a bar (no-op when disabled)."""
        if self._progress is None or task is None:
            return
        self._progress.update(
            task, completed=completed, advance=advance, total=total, description=description
        )
