"""The public surface of the packages beside the stages (``actors.client``, ``actors.testing``,
``actors.local``): ``__all__`` is exactly what each binds, documented, and the machinery behind
them stays in private modules."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

import actors.client
import actors.local
import actors.testing

from ..api_kit import public_names

PACKAGES = [actors.client, actors.testing, actors.local]

#: Internals that used to be exported: where each lives now.
PRIVATE = {
    "actors.client": {
        "SSEDecoder": "actors.client._sse",
        "SSEEvent": "actors.client._sse",
        "ChunkStreamParser": "actors.client._parser",
        "StreamAccumulator": "actors.client._accumulate",
        "parse_chunk": "actors.client._chunks",
        "parse_retry_after": "actors.client._retry",
    },
    "actors.local": {
        "free_port": "actors.local._server",
        "read_log_tail": "actors.local._server",
        "parse_system_info": "actors.local._server",
        "default_threads": "actors.local._server",
    },
}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda m: m.__name__)
def test_all_is_exactly_what_the_package_binds(package: types.ModuleType) -> None:
    """``__all__`` lists every public name the package binds, once, and only those."""
    assert len(package.__all__) == len(set(package.__all__))
    assert set(package.__all__) == public_names(package)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda m: m.__name__)
def test_every_exported_class_and_function_is_documented(package: types.ModuleType) -> None:
    """Each exported class and function has a docstring of its own."""
    missing = [
        name
        for name in package.__all__
        if (inspect.isclass(getattr(package, name)) or inspect.isfunction(getattr(package, name)))
        and not (getattr(package, name).__doc__ or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("package", "name", "home"),
    [(package, name, home) for package, names in PRIVATE.items() for name, home in names.items()],
)
def test_internals_stay_in_their_private_modules(package: str, name: str, home: str) -> None:
    """The decoder, parser, accumulator and test helpers are not exported; they live on in
    their private modules (for the tests of the internals)."""
    assert name not in importlib.import_module(package).__all__
    assert not hasattr(importlib.import_module(package), name)
    assert hasattr(importlib.import_module(home), name)
