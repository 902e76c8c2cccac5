"""Pipelined script calls for the Redis backend: one task and one dedicated connection send
the ``APPEND`` script calls of every session of a storage, many per round trip (and a second
pipeline, the same way, the ``RENEW`` calls of its lease keeper).

Why: a ``coredis`` command costs the event loop far more than the script it runs (a
retry policy, a telemetry span, a pooled connection, a request and an event per call, and
a hand-off to the connection's writer task). Here the appends made while a round trip is
in flight wait for it and go together in the next one, as one ``EVALSHA`` each written in
one go on a connection that no other command uses; the replies come back in order and
each caller gets its own. The first append is sent at once: the task wakes when it
arrives, nothing waits for a tick.

A call whose answer is lost (the connection broke or timed out after the command was
written) is sent once more on a new connection. That is safe because every append
carries an append id: if the first attempt was committed, the script finds its id at the
head and answers with the version it made instead of writing again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import attrs
import coredis.exceptions
import outcome
import trio

from ._errors import StorageUnavailableError

__all__ = ["AppendPipeline", "PipedCall"]

#: Most calls sent in one round trip: a round trip's replies are read and parsed in one
#: step of the loop, so a cap keeps every step short (128 appends: under a millisecond of CPU).
MAX_CALLS = 128

#: Replies that mean the answer was lost with the connection (the command may have run).
_LOST = (
    coredis.exceptions.ConnectionError,
    TimeoutError,
    OSError,
)


@attrs.define(eq=False, slots=True)
class PipedCall:
    """One script call waiting for its round trip.

    Attributes:
        arguments: ``EVALSHA``'s arguments after the script's sha: the number of keys, the
            keys, the script's arguments.
        task: The caller, parked until its reply.
        sent: Whether it was taken for a round trip (it can no longer be withdrawn).
    """

    arguments: tuple[Any, ...]
    task: trio.lowlevel.Task
    sent: bool = False


class _Command:
    """What ``coredis``' ``create_request_batch`` reads of a command."""

    __slots__ = ("decode", "name", "serialized_arguments")

    def __init__(self, name: bytes, arguments: tuple[Any, ...]) -> None:
        self.name = name
        self.serialized_arguments = arguments
        self.decode = None


class AppendPipeline:
    """Sends script calls pipelined on one connection (see the module documentation).

    Args:
        connect: Returns a new connection (a ``coredis`` connection leased from the
            storage's pool, kept by the pipeline until it breaks).
        script: The Lua source (loaded again when the server answers ``NOSCRIPT``).
        sha: Its SHA1.
        timeout: Seconds to wait for a round trip's replies.
        where: The server, for error messages (no password).
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        script: str,
        sha: str,
        timeout: float,
        where: str,
    ) -> None:
        self._connect = connect
        self._script = script
        self._sha = sha
        self._timeout = timeout
        self._where = where
        self._pending: list[PipedCall] = []
        self._in_flight: list[PipedCall] = []
        self._parked: trio.lowlevel.Task | None = None
        self._connection: Any = None
        self._closed = False

    async def connect(self) -> None:
        """Open the pipeline's connection now (rather than at the first append).

        Raises:
            Exception: The driver's error if the server cannot be reached.
        """
        await self._live_connection()

    async def call(self, arguments: tuple[Any, ...]) -> Any:
        """The script's reply for ``arguments`` (number of keys, keys, arguments), sent in
        the next round trip. A caller cancelled before its call was sent withdraws it;
        once sent, it waits for the reply (bounded by the timeout).

        Raises:
            StorageUnavailableError: The pipeline is closed.
            Exception: The driver's error for this call (a connection error, the server's
                error reply).
        """
        if self._closed:
            raise StorageUnavailableError(f"Redis at {self._where}: the storage is closed")
        piped = PipedCall(arguments, trio.lowlevel.current_task())
        self._pending.append(piped)
        if self._parked is not None:
            trio.lowlevel.reschedule(self._parked)
            self._parked = None

        def abort(_: object) -> trio.lowlevel.Abort:
            if piped.sent:
                return trio.lowlevel.Abort.FAILED
            self._pending.remove(piped)
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _unpark(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self) -> NoReturn:
        """The pipeline's task: send what is pending, one round trip at a time, until
        cancelled; calls left then fail with :class:`StorageUnavailableError`."""
        try:
            while True:
                if not self._pending:
                    self._parked = trio.lowlevel.current_task()
                    await trio.lowlevel.wait_task_rescheduled(self._unpark)
                batch = self._pending[:MAX_CALLS]
                del self._pending[:MAX_CALLS]
                for piped in batch:
                    piped.sent = True
                self._in_flight = batch
                answers = await self._send(batch)
                self._in_flight = []
                for piped, answer in zip(batch, answers, strict=True):
                    trio.lowlevel.reschedule(piped.task, answer)
        finally:
            self._closed = True
            closed = outcome.Error(
                StorageUnavailableError(f"Redis at {self._where}: the storage was closed")
            )
            for piped in (*self._in_flight, *self._pending):
                trio.lowlevel.reschedule(piped.task, closed)
            self._in_flight, self._pending = [], []
            if self._connection is not None:
                self._connection.invalidate("the storage was closed")
                self._connection = None

    async def _send(self, batch: Sequence[PipedCall]) -> list[outcome.Outcome[Any]]:
        answers: list[outcome.Outcome[Any] | None] = [None] * len(batch)
        todo = list(range(len(batch)))
        resend_lost, reload_script = True, True
        while todo:
            replies = await self._round_trip([batch[i] for i in todo])
            again = []
            lost = missing = False
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, coredis.exceptions.NoScriptError) and reload_script:
                    again.append(i)
                    missing = True
                elif isinstance(reply, _LOST) and resend_lost:
                    again.append(i)
                    lost = True
                elif isinstance(reply, BaseException):
                    answers[i] = outcome.Error(reply)
                else:
                    answers[i] = outcome.Value(reply)
            if lost:
                resend_lost = False
            if missing:
                reload_script = False
                try:
                    await self._load_script()
                except Exception as exc:
                    for i in again:
                        answers[i] = outcome.Error(exc)
                    again = []
            todo = again
        done = [a for a in answers if a is not None]
        assert len(done) == len(batch)
        return done

    async def _round_trip(self, calls: Sequence[PipedCall]) -> list[Any]:
        """One reply (or exception) per call, in order."""
        try:
            connection = await self._live_connection()
            batch = connection.create_request_batch(
                [_Command(b"EVALSHA", (self._sha, *c.arguments)) for c in calls],
                timeout=self._timeout,
            )
            replies = list(await batch)
        except Exception as exc:
            self._drop_connection()
            return [exc] * len(calls)
        if any(isinstance(r, _LOST) for r in replies):
            self._drop_connection()
        return replies

    async def _load_script(self) -> None:
        connection = await self._live_connection()
        await connection.create_request(b"SCRIPT", b"LOAD", self._script, timeout=self._timeout)

    async def _live_connection(self) -> Any:
        if self._connection is not None and not self._connection.usable:
            self._drop_connection()
        if self._connection is None:
            self._connection = await self._connect()
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.invalidate("a pipelined append lost its connection")
            self._connection = None
