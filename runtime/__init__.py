"""trouper's domain-free actor runtime on trio.

Frames, typed two-lane mailboxes, actors and references, topologies (``Pipeline``,
``ParallelPipeline``, a run-time graph API on :class:`Session`), the task that runs a
topology, turns and interruption (:func:`current_turn`), supervision, embedding in asyncio
applications (:class:`AsyncioBridge`; :func:`asyncio_call` the other way), logging, a hook
that hides sensitive text (:func:`add_scrubber`), serialization and a testing kit
(:mod:`runtime.testing`).

``PipelineWorker`` and ``WorkerRunner`` are other names of :class:`PipelineTask` and
:class:`PipelineRunner` (Pipecat 1.x renamed them).

It knows no application domain and imports nothing from ``actors``: a layer built on it
subclasses its frames and actors (``actors`` is such a layer).
"""

from __future__ import annotations

from ._actor import NOT_NOW as NOT_NOW
from ._actor import Actor as Actor
from ._actor import ActorRef as ActorRef
from ._asyncio import AsyncioBridge as AsyncioBridge
from ._asyncio import asyncio_call as asyncio_call
from ._errors import ActorDeadError as ActorDeadError
from ._errors import ActorError as ActorError
from ._errors import AskTimeoutError as AskTimeoutError
from ._errors import FrameTypeError as FrameTypeError
from ._errors import RestartIntensityExceeded as RestartIntensityExceeded
from ._errors import SelfAskError as SelfAskError
from ._errors import SessionStateError as SessionStateError
from ._frames import ActorStoppedFrame as ActorStoppedFrame
from ._frames import CancelFrame as CancelFrame
from ._frames import ControlFrame as ControlFrame
from ._frames import DataFrame as DataFrame
from ._frames import EndFrame as EndFrame
from ._frames import ErrorFrame as ErrorFrame
from ._frames import Frame as Frame
from ._frames import FrameDirection as FrameDirection
from ._frames import InterruptionFrame as InterruptionFrame
from ._frames import InterruptionMarkerFrame as InterruptionMarkerFrame
from ._frames import MetricsData as MetricsData
from ._frames import MetricsFrame as MetricsFrame
from ._frames import StartFrame as StartFrame
from ._frames import SystemFrame as SystemFrame
from ._gc import tune_gc as tune_gc
from ._lifecycle import ActorState as ActorState
from ._loop_mismatch import EventLoopMismatchError as EventLoopMismatchError
from ._loop_mismatch import loop_mismatch as loop_mismatch
from ._mailbox import MailboxStatistics as MailboxStatistics
from ._params import PipelineParams as PipelineParams
from ._pipeline import ParallelPipeline as ParallelPipeline
from ._pipeline import Pipeline as Pipeline
from ._pipeline import Stage as Stage
from ._scrub import Scrubber as Scrubber
from ._scrub import add_scrubber as add_scrubber
from ._scrub import remove_scrubber as remove_scrubber
from ._scrub import scrub as scrub
from ._scrub import scrub_exception as scrub_exception
from ._session import Session as Session
from ._snapshot import ActorSnapshot as ActorSnapshot
from ._snapshot import SessionSnapshot as SessionSnapshot
from ._supervision import RestartPolicy as RestartPolicy
from ._task import FrameListener as FrameListener
from ._task import PipelineRunner as PipelineRunner
from ._task import PipelineRunner as WorkerRunner
from ._task import PipelineTask as PipelineTask
from ._task import PipelineTask as PipelineWorker
from ._turn import current_turn as current_turn
from ._version import installed_version as _installed_version

__version__ = _installed_version()
"""The installed version of trouper, from its package metadata."""

__all__ = [
    "NOT_NOW",
    "Actor",
    "ActorDeadError",
    "ActorError",
    "ActorRef",
    "ActorSnapshot",
    "ActorState",
    "ActorStoppedFrame",
    "AskTimeoutError",
    "AsyncioBridge",
    "CancelFrame",
    "ControlFrame",
    "DataFrame",
    "EndFrame",
    "ErrorFrame",
    "EventLoopMismatchError",
    "Frame",
    "FrameDirection",
    "FrameListener",
    "FrameTypeError",
    "InterruptionFrame",
    "InterruptionMarkerFrame",
    "MailboxStatistics",
    "MetricsData",
    "MetricsFrame",
    "ParallelPipeline",
    "Pipeline",
    "PipelineParams",
    "PipelineRunner",
    "PipelineTask",
    "PipelineWorker",
    "RestartIntensityExceeded",
    "RestartPolicy",
    "Scrubber",
    "SelfAskError",
    "Session",
    "SessionSnapshot",
    "SessionStateError",
    "Stage",
    "StartFrame",
    "SystemFrame",
    "WorkerRunner",
    "add_scrubber",
    "asyncio_call",
    "current_turn",
    "loop_mismatch",
    "remove_scrubber",
    "scrub",
    "scrub_exception",
    "tune_gc",
]
