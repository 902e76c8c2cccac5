"""The embedded local model: pull it, and run llama.cpp's ``llama-server`` on it under trio.

>>> async with open_local_server() as server:      # pulls the model first if needed
...     ...  # talk to server.base_url (OpenAI-compatible), model=server.model

llama-server is built for a portable CPU baseline by :func:`build_llama_server` (``trouper
model build``), checked before every start (:func:`check_build`, then ``/health`` and a one-token
completion), and diagnosed by :func:`diagnose` (``trouper model doctor``).

See ``docs/local-model.md``.
"""

from __future__ import annotations

from ._baseline import BASELINE_ENV as BASELINE_ENV
from ._baseline import BASELINES as BASELINES
from ._baseline import Baseline as Baseline
from ._baseline import choose_baseline as choose_baseline
from ._build import CMAKE_ARGS_ENV as CMAKE_ARGS_ENV
from ._build import LLAMA_CPP_REQUIREMENT as LLAMA_CPP_REQUIREMENT
from ._build import BuildResult as BuildResult
from ._build import SelfCheck as SelfCheck
from ._build import build_llama_server as build_llama_server
from ._build import self_check as self_check
from ._cpu import CPUInfo as CPUInfo
from ._cpu import cpu_info as cpu_info
from ._doctor import DoctorCheck as DoctorCheck
from ._doctor import DoctorReport as DoctorReport
from ._doctor import diagnose as diagnose
from ._errors import InsufficientDiskSpaceError as InsufficientDiskSpaceError
from ._errors import LlamaServerBuildError as LlamaServerBuildError
from ._errors import LocalModelError as LocalModelError
from ._errors import ModelDownloadError as ModelDownloadError
from ._errors import ModelIntegrityError as ModelIntegrityError
from ._errors import ModelNotFoundError as ModelNotFoundError
from ._errors import ServerCPUError as ServerCPUError
from ._errors import ServerNotInstalledError as ServerNotInstalledError
from ._errors import ServerSelfCheckError as ServerSelfCheckError
from ._errors import ServerStartError as ServerStartError
from ._failure import server_exit_error as server_exit_error
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
from ._record import BuildRecord as BuildRecord
from ._record import BuildStatus as BuildStatus
from ._record import check_build as check_build
from ._record import read_record as read_record
from ._server import SYSTEM_INFO_ARGS as SYSTEM_INFO_ARGS
from ._server import LocalModelServer as LocalModelServer
from ._server import ServerCommand as ServerCommand
from ._server import build_server_argv as build_server_argv
from ._server import default_chat_template as default_chat_template
from ._server import find_llama_server as find_llama_server
from ._server import open_local_server as open_local_server
from ._spec import DEFAULT_MODEL as DEFAULT_MODEL
from ._spec import ModelSpec as ModelSpec

__all__ = [
    "BASELINES",
    "BASELINE_ENV",
    "CMAKE_ARGS_ENV",
    "DEFAULT_MODEL",
    "LLAMA_CPP_REQUIREMENT",
    "SYSTEM_INFO_ARGS",
    "Baseline",
    "BuildRecord",
    "BuildResult",
    "BuildStatus",
    "CPUInfo",
    "DoctorCheck",
    "DoctorReport",
    "InsufficientDiskSpaceError",
    "LlamaServerBuildError",
    "LocalModelError",
    "LocalModelServer",
    "ModelDownloadError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "ModelSpec",
    "PullResult",
    "SelfCheck",
    "ServerCPUError",
    "ServerCommand",
    "ServerNotInstalledError",
    "ServerSelfCheckError",
    "ServerStartError",
    "build_llama_server",
    "build_server_argv",
    "cached_model",
    "check_build",
    "choose_baseline",
    "cpu_info",
    "default_chat_template",
    "diagnose",
    "disk_space_needed",
    "ensure_model",
    "find_llama_server",
    "logs_dir",
    "model_path",
    "models_dir",
    "open_local_server",
    "pull_model",
    "read_record",
    "self_check",
    "server_exit_error",
    "trouper_home",
    "verify_model",
]
