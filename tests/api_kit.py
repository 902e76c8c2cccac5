"""What the public-surface tests share: the public names a module binds."""

from __future__ import annotations

import types

__all__ = ["public_names"]


def public_names(module: types.ModuleType) -> set[str]:
    """The public names bound in ``module``: not private, not submodules, not ``__future__``'s
    ``annotations``."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }
