"""The installed version of trouper (the distribution that ships ``runtime`` and ``actors``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "installed_version"]

DISTRIBUTION = "trouper"
"""The distribution (the ``name`` in ``pyproject.toml``) whose version is reported."""


def installed_version() -> str:
    """The version in the installed package's metadata (``pyproject.toml``'s ``version``, the
    one source of truth), or ``"0+unknown"`` when the code runs from a source tree that was
    never installed."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0+unknown"
