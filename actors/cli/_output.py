"""The CLI's output goes through the redaction: whatever writes to stdout or stderr (the chat's
consoles, log lines, a traceback, argparse), no secret known to the process is written."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from ..client.redaction import redact

__all__ = ["RedactedStream", "redacted_output"]


class RedactedStream:
    """A text stream that redacts (:func:`actors.client.redaction.redact`) what it is given, then
    writes it to the stream it wraps; everything else (``isatty``, ``fileno``, ``flush``,
    ``encoding``...) is the wrapped stream's.

    Args:
        stream: The stream to write to.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        """Write ``text``, redacted; returns ``len(text)`` (what the caller handed over)."""
        self.stream.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterator[str] | list[str]) -> None:
        """Write each line, redacted."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


@contextmanager
def redacted_output() -> Iterator[None]:
    """Redact ``sys.stdout`` and ``sys.stderr`` for the block, then put them back."""
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout = RedactedStream(stdout)
    sys.stderr = RedactedStream(stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = stdout, stderr
