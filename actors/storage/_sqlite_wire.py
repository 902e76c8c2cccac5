"""The messages between :class:`~actors.storage.SQLiteConversationStorage` and its worker
process: each is an 8-byte big-endian length followed by a pickle of a list of entries.

To the worker: ``(request_id, operation, argument)``. From it: ``("r", request_id,
outcome)`` answers and ``("n", level, event, fields)`` log lines. Both ends are the same
program (the worker runs this package's own modules), so pickle is safe here: nothing else
writes to these pipes.
"""

from __future__ import annotations

import pickle
from typing import Any

import outcome

from ._errors import StorageError

__all__ = ["HEADER", "encode", "length_of"]

#: Bytes of the length prefix.
HEADER = 8


def encode(entries: list[Any]) -> bytes:
    """One message holding ``entries``, length prefix included.

    An answer whose error cannot be pickled (an exception type that takes other arguments
    than it passes to ``Exception``) is sent as a :class:`StorageError` with its text.
    """
    try:
        data = pickle.dumps(entries, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        data = pickle.dumps([_plain(e) for e in entries], protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(HEADER, "big") + data


def _plain(entry: Any) -> Any:
    if entry[0] == "r" and isinstance(entry[2], outcome.Error):
        error = entry[2].error
        try:
            pickle.dumps(error)
        except Exception:
            return ("r", entry[1], outcome.Error(StorageError(f"{type(error).__name__}: {error}")))
    return entry


def length_of(header: bytes | bytearray) -> int:
    """The payload length a header announces."""
    return int.from_bytes(header[:HEADER], "big")
