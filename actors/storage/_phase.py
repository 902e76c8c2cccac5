"""Where a storage backend is in its life: made, open (inside ``async with``), closed."""

from __future__ import annotations

import enum

__all__ = ["Phase"]


class Phase(enum.Enum):
    """The life of one backend object: opened once, then closed for good."""

    NEW = "new"
    """Made, not opened yet."""
    OPEN = "open"
    """Opened (``async with`` entered): it serves requests."""
    CLOSED = "closed"
    """Closed, or its opening failed; it serves nothing any more."""
