"""The embedded local model: pull it, and run llama.cpp's ``llama-server`` on it under trio.

>>> async with open_local_server() as server:      # pulls the model first if needed
...     ...  # talk to server.base_url (OpenAI-compatible), model=server.model

See ``docs/local-model.md``.
"""

from __future__ import annotations

from ._errors import InsufficientDiskSpaceError as InsufficientDiskSpaceError
from ._errors import LocalModelError as LocalModelError
from ._errors import ModelDownloadError as ModelDownloadError
from ._errors import ModelIntegrityError as ModelIntegrityError
from ._errors import ModelNotFoundError as ModelNotFoundError
from ._errors import ServerNotInstalledError as ServerNotInstalledError
from ._errors import ServerStartError as ServerStartError
from ._model import PullResult as PullResult
from ._model import cached_model as cached_model
from ._model import disk_space_needed as disk_space_needed
from ._model import ensure_model as ensure_model
from ._model import model_path as model_path
from ._model import pull_model as pull_model
from ._model import verify_model as verify_model
from ._paths import logs_dir as logs_dir
from ._paths import models_dir as models_dir
from ._paths import trouper_home as trouper_home
from ._server import LocalModelServer as LocalModelServer
from ._server import ServerCommand as ServerCommand
from ._server import build_server_argv as build_server_argv
from ._server import default_chat_template as default_chat_template
from ._server import default_threads as default_threads
from ._server import find_llama_server as find_llama_server
from ._server import free_port as free_port
from ._server import open_local_server as open_local_server
from ._server import read_log_tail as read_log_tail
from ._spec import DEFAULT_MODEL as DEFAULT_MODEL
from ._spec import ModelSpec as ModelSpec

__all__ = [
    "DEFAULT_MODEL",
    "InsufficientDiskSpaceError",
    "LocalModelError",
    "LocalModelServer",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelSpec",
    "PullResult",
    "ServerCommand",
    "ServerNotInstalledError",
    "ServerStartError",
    "build_server_argv",
    "cached_model",
    "default_chat_template",
    "default_threads",
    "disk_space_needed",
    "ensure_model",
    "find_llama_server",
    "free_port",
    "logs_dir",
    "model_path",
    "models_dir",
    "open_local_server",
    "pull_model",
    "read_log_tail",
    "trouper_home",
    "verify_model",
]
