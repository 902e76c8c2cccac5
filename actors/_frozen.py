"""Read-only copies of JSON-like values: the messages and tools that snapshots share.

A context keeps its messages as read-only copies, made once when they enter it, and gives
them to every snapshot it takes (:meth:`~actors.OpenAILLMContext.snapshot`) instead of
deep-copying the whole conversation for each: a long chat no longer costs a copy of its
history per turn.

Being shared, the copies must not change: :class:`FrozenDict` and :class:`FrozenList` are a
``dict`` and a ``list`` (so JSON encoders, equality and ``isinstance`` treat them as such)
that refuse every change. ``copy.deepcopy`` and pickling give plain, changeable ones.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, NoReturn, SupportsIndex

__all__ = ["FrozenDict", "FrozenList", "frozen_copy"]


def _refuse(*_: object, **__: object) -> NoReturn:
    raise TypeError(
        "a snapshot's messages and tools are read-only (snapshots share them): change a copy, "
        "such as ContextSnapshot.get_messages() returns"
    )


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses changes (see the module docs)."""

    __slots__ = ()

    def __setitem__(self, key: str, value: Any) -> NoReturn:
        _refuse()

    def __delitem__(self, key: str) -> NoReturn:
        _refuse()

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        _refuse()

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse()

    def pop(self, *args: Any) -> NoReturn:
        _refuse()

    def popitem(self) -> NoReturn:
        _refuse()

    def setdefault(self, *args: Any) -> NoReturn:
        _refuse()

    def clear(self) -> NoReturn:
        _refuse()

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return dict, (dict(self),)


class FrozenList(list[Any]):
    """A ``list`` that refuses changes (see the module docs)."""

    __slots__ = ()

    def __setitem__(self, index: Any, value: Any) -> NoReturn:
        _refuse()

    def __delitem__(self, index: Any) -> NoReturn:
        _refuse()

    def __iadd__(self, other: Iterable[Any]) -> NoReturn:  # type: ignore[misc]
        _refuse()

    def __imul__(self, count: SupportsIndex) -> NoReturn:
        _refuse()

    def append(self, value: Any) -> NoReturn:
        _refuse()

    def extend(self, values: Iterable[Any]) -> NoReturn:
        _refuse()

    def insert(self, index: SupportsIndex, value: Any) -> NoReturn:
        _refuse()

    def pop(self, index: SupportsIndex = -1) -> NoReturn:
        _refuse()

    def remove(self, value: Any) -> NoReturn:
        _refuse()

    def clear(self) -> NoReturn:
        _refuse()

    def sort(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse()

    def reverse(self) -> NoReturn:
        _refuse()

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(value, memo) for value in self]

    def __reduce__(self) -> tuple[type[list[Any]], tuple[list[Any]]]:
        return list, (list(self),)


def frozen_copy(value: Any) -> Any:
    """A read-only deep copy of a JSON-like value: dicts and lists become :class:`FrozenDict`
    and :class:`FrozenList` (tuples stay tuples), every other value is kept as it is (the
    values of messages and tools are strings, numbers, booleans and ``None``; anything else
    is deep-copied)."""
    if isinstance(value, dict):
        return FrozenDict({key: frozen_copy(item) for key, item in value.items()})
    if isinstance(value, list):
        return FrozenList([frozen_copy(item) for item in value])
    if isinstance(value, tuple):
        return tuple(frozen_copy(item) for item in value)
    if value is None or isinstance(value, str | int | float):
        return value
    return copy.deepcopy(value)  # not JSON-like: a private copy, as before
