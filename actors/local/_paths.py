"""Where trouper keeps its local files: the model cache and the server logs.

The root is ``$TROUPER_HOME`` when that variable is set (and not empty), otherwise
``$XDG_CACHE_HOME/trouper`` when ``XDG_CACHE_HOME`` is set, otherwise ``~/.cache/trouper``.
Models live in ``<root>/models/`` and llama-server's logs in ``<root>/logs/``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["logs_dir", "models_dir", "trouper_home"]

TROUPER_HOME_ENV = "TROUPER_HOME"


def trouper_home() -> Path:
    """Return trouper's cache root (not created)."""
    explicit = os.environ.get(TROUPER_HOME_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    if xdg:
        return Path(xdg).expanduser() / "trouper"
    return Path.home() / ".cache" / "trouper"


def models_dir() -> Path:
    """Return the directory holding downloaded models (not created)."""
    return trouper_home() / "models"


def logs_dir() -> Path:
    """Return the directory holding llama-server log files (not created)."""
    return trouper_home() / "logs"
