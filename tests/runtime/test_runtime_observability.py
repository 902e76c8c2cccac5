"""Observability: structured logs with session/actor/turn, lifecycle events, snapshots."""

from __future__ import annotations

import io
import json

import pytest
import structlog
import trio

from runtime import (
    Actor,
    ActorSnapshot,
    ActorState,
    EndFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    MailboxStatistics,
    Pipeline,
    PipelineTask,
    Session,
    SessionSnapshot,
)
from runtime import logging as rlog
from runtime.testing import FrameCollector, capture_logs, open_test_task, run_frames, wait_idle

from .runtime_helpers import Gate, Ping


class Chatty(Actor[Ping]):
    """Logs every ping through ``self.log``."""

    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Ping)
        self.log.info("ping handled", n=frame.n)
        await self.push_frame(frame, direction)


class TestLogs:
    async def test_actor_logs_carry_session_actor_and_turn(self, autojump_clock: object) -> None:
        """Every line an actor logs names its session, the actor and the turn of the frame it
        is handling."""
        with capture_logs() as logs:
            async with open_test_task([Chatty(name="chatty")], name="sess") as t:
                await t.push(Ping(1))
                await wait_idle()
                t.interrupt()
                await t.push(Ping(2))
        handled = [e for e in logs if e["event"] == "ping handled"]
        assert [(e["session"], e["actor"], e["turn"], e["n"]) for e in handled] == [
            ("sess", "chatty", 0, 1),
            ("sess", "chatty", 1, 2),
        ]
        assert all(e["log_level"] == "info" for e in handled)

    async def test_the_sessions_logger_names_the_session(self, autojump_clock: object) -> None:
        """``Session.log`` is the session's own logger: what the application logs with it, and
        the task's lines (an ``ErrorFrame`` reaching the end), name the session."""
        with capture_logs() as logs:
            async with open_test_task([Chatty(name="chatty")], name="sess") as t:
                t.session.log.info("app line", n=1)
                await t.task.queue_frame(ErrorFrame("upstream trouble"), FrameDirection.UPSTREAM)
                await wait_idle()
        [app] = [e for e in logs if e["event"] == "app line"]
        assert (app["session"], app["n"]) == ("sess", 1)
        [error] = [e for e in logs if e["event"] == "pipeline error"]
        assert error["session"] == "sess"
        assert error["error"] == "upstream trouble"

    async def test_lifecycle_events_are_logged(self, autojump_clock: object) -> None:
        """Session and actor lifecycle (opened, started, stopped, closed) and the pipeline's
        start and finish are logged with the session's name."""
        with capture_logs() as logs:
            await run_frames([Chatty(name="chatty")], [Ping(1)])
        named = [e for e in logs if e["event"] in {"actor started", "actor stopped"}]
        assert {(e["event"], e["actor"]) for e in named} >= {
            ("actor started", "chatty"),
            ("actor stopped", "chatty"),
        }
        kinds = [e["event"] for e in logs]
        for expected in (
            "session opened",
            "pipeline started",
            "pipeline finished",
            "session closed",
        ):
            assert expected in kinds
        [stopped] = [e for e in named if e["event"] == "actor stopped" and e["actor"] == "chatty"]
        assert stopped["state"] == "stopped"
        assert stopped["unprocessed"] == 0

    async def test_errors_are_logged_by_push_error(self, autojump_clock: object) -> None:
        """``push_error`` logs a warning with the error, its category and fatality."""

        class Failing(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                await self.push_error("quota exceeded")

        with capture_logs() as logs:
            await run_frames([Failing(name="svc")], [Ping(1)])
        [event] = [e for e in logs if e["event"] == "error"]
        assert (event["actor"], event["error"], event["category"], event["fatal"]) == (
            "svc",
            "quota exceeded",
            "unknown",
            False,
        )
        assert any(e["event"] == "pipeline error" for e in logs)

    async def test_structlogs_own_capture_logs_sees_the_runtime_warnings(
        self, autojump_clock: object
    ) -> None:
        """``structlog.testing.capture_logs`` captures the runtime's warnings and errors,
        whatever level the application configured."""
        from runtime import RestartPolicy

        class Fails(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                raise RuntimeError("flaky")

        with structlog.testing.capture_logs() as logs:
            await run_frames(
                [Fails(name="fails", restart_policy=RestartPolicy(max_restarts=5))], [Ping(1)]
            )
        [event] = [e for e in logs if e["event"] == "actor restarting"]
        assert (event["actor"], event["log_level"], event["error"]) == (
            "fails",
            "warning",
            "RuntimeError: flaky",
        )
        assert event["session"].startswith("task-")

    def test_configure_renders_json_lines_with_levels_and_time(self) -> None:
        """``runtime.logging.configure(json=True)`` writes one JSON object a line, filtered by
        level."""
        out = io.StringIO()
        previous = structlog.get_config()
        try:
            rlog.configure(json=True, level="info", file=out)
            log = rlog.get_logger("test")
            log.debug("hidden")
            log.info("shown", session="s", actor="a", turn=3)
        finally:
            structlog.configure(**previous)
        [line] = out.getvalue().splitlines()
        data = json.loads(line)
        assert data["event"] == "shown"
        assert data["level"] == "info"
        assert (data["session"], data["actor"], data["turn"]) == ("s", "a", 3)
        assert "timestamp" in data
        with pytest.raises(ValueError, match="unknown log level 'loud'"):
            rlog.configure(level="loud")

    async def test_an_unconfigured_application_only_sees_warnings(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """When the application has not configured structlog, the first session configures
        warning level before it logs anything, so debug lines do not flood the output."""
        previous = structlog.get_config()
        structlog.reset_defaults()
        try:
            async with Session.open("quiet") as session:
                session.spawn(Chatty())
                await wait_idle()
        finally:
            structlog.configure(**previous)
        captured = capsys.readouterr()
        assert "session opened" not in captured.out + captured.err
        assert "actor started" not in captured.out + captured.err


class TestSnapshot:
    async def test_snapshot_lists_live_actors_mailboxes_and_work_in_progress(
        self, autojump_clock: object
    ) -> None:
        """``task.snapshot()`` lists every live actor with its state, mailbox statistics, the
        frame its handler is working on and its background tasks."""
        gate = Gate(name="gate")
        with capture_logs() as logs:
            await self._check_snapshot(gate)
        [event] = [e for e in logs if e["event"] == "session snapshot"]
        assert event["snapshot"]["name"] == "snap"

    async def _check_snapshot(self, gate: Gate) -> None:
        async with open_test_task(Pipeline([Chatty(name="chatty"), gate]), name="snap") as t:
            first = Ping(1)
            await t.push(first, Ping(2), Ping(3))
            await wait_idle()
            snapshot = t.snapshot()
            assert isinstance(snapshot, SessionSnapshot)
            assert (snapshot.name, snapshot.turn, snapshot.running) == ("snap", 0, True)
            names = [a.name for a in snapshot.actors]
            assert names == ["snap:source", "chatty", "gate", "snap:sink"]
            by_name = {a.name: a for a in snapshot.actors}
            busy = by_name["gate"]
            assert isinstance(busy, ActorSnapshot)
            assert busy.kind == "Gate"
            assert busy.state == "running"
            assert busy.busy_with is not None
            assert busy.busy_with.startswith("Ping#")
            assert busy.downstream == ("snap:sink",)
            assert isinstance(busy.mailbox, MailboxStatistics)
            assert busy.mailbox.data_depth == 2
            assert by_name["chatty"].busy_with is None
            data = snapshot.as_dict()
            json.dumps(data)  # plain data
            assert data["actors"][2]["mailbox"]["data_depth"] == 2
            assert t.session.log_snapshot().name == "snap"
            gate.open()

    async def test_dead_letters_are_counted(self, autojump_clock: object) -> None:
        """Frames pushed to a neighbour that has stopped are counted as dead letters."""
        head = Chatty(name="head")
        tail = FrameCollector(name="tail")
        async with Session.open() as session:
            session.spawn(head)
            session.spawn(tail)
            session.link(head, tail)
            await tail.ref.send(EndFrame())  # the tail ends; the link stays
            await wait_idle()
            assert tail.state is ActorState.STOPPED
            await head.ref.send(Ping(1))
            await wait_idle()
            [snap] = [a for a in session.snapshot().actors if a.name == "head"]
            assert snap.dead_letters == 1

    async def test_snapshot_of_a_task_that_is_not_running_raises(self) -> None:
        """Asking a task that is not running for a snapshot is an error, not ``None``."""
        from runtime import SessionStateError

        with pytest.raises(SessionStateError, match="not running"):
            PipelineTask(Chatty()).snapshot()
        assert trio.current_time() >= 0
