"""Topologies: nested pipelines, parallel branches and the run-time graph API."""

from __future__ import annotations

import pytest
import trio

from runtime import (
    Actor,
    ActorDeadError,
    ActorState,
    EndFrame,
    Frame,
    FrameDirection,
    ParallelPipeline,
    Pipeline,
    PipelineTask,
    Session,
    SessionStateError,
    StartFrame,
)
from runtime.testing import FrameCollector, open_test_task, run_frames, wait_idle

from .runtime_helpers import Gate, Incr, Ping, Sleeper, Text, Upper, numbers


class Suffix(Actor[Text]):
    """Appends a suffix to text, after ``delay`` trio seconds."""

    accepts = (Text,)

    def __init__(self, suffix: str, delay: float = 0.0) -> None:
        super().__init__()
        self.suffix = suffix
        self.delay = delay

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        assert isinstance(frame, Text)
        await trio.sleep(self.delay)
        await self.push_frame(Text(frame.text + self.suffix), direction)


class TestNestedPipeline:
    async def test_nested_pipelines_link_like_one_line(self, autojump_clock: object) -> None:
        """Pipelines nested in pipelines behave like the flattened line of their actors."""
        collectors = [FrameCollector(name=f"c{i}") for i in range(3)]
        inner = Pipeline([Incr(), Pipeline([collectors[0], Incr()]), collectors[1]])
        outer = Pipeline([Pipeline([]), inner, Incr(), collectors[2]])
        result = await run_frames(outer, [Ping(n) for n in range(10)], include_lifecycle=True)
        assert numbers(result.downstream) == [n + 3 for n in range(10)]
        assert numbers(collectors[0].downstream) == [n + 1 for n in range(10)]
        for collector in collectors:
            assert next(type(f) for f in collector.downstream) is StartFrame
            assert [type(f) for f in collector.downstream][-1] is EndFrame

    async def test_an_empty_pipeline_passes_frames_straight_through(
        self, autojump_clock: object
    ) -> None:
        """A task over an empty pipeline links its input end to its output end."""
        result = await run_frames(Pipeline([]), [Ping(1)])
        assert numbers(result.downstream) == [1]

    def test_topologies_are_validated(self) -> None:
        """Mistakes in building a topology are reported with a clear message."""
        actor = Incr(name="twice")
        with pytest.raises(ValueError, match="'twice' appears twice"):
            Pipeline([actor, Pipeline([actor])])
        with pytest.raises(TypeError, match=r"Pipeline\(\[a, b, c\]\)"):
            Pipeline(Incr())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be an Actor, a Pipeline or a ParallelPipeline"):
            Pipeline(["not a stage"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="at least one branch"):
            ParallelPipeline()
        with pytest.raises(ValueError, match="branch 1 is empty"):
            ParallelPipeline([Incr()], [])
        with pytest.raises(TypeError, match=r"wrap a list of stages in Pipeline"):
            PipelineTask([Incr()])  # type: ignore[arg-type]


class TestParallelPipeline:
    async def test_every_branch_sees_every_frame_and_what_leaves_is_deduplicated(
        self, autojump_clock: object
    ) -> None:
        """Each branch gets every frame; a frame several branches let through leaves once,
        what each branch makes leaves too."""
        branches = ParallelPipeline([Upper()], [Suffix("!")], [FrameCollector()])
        result = await run_frames([branches, FrameCollector()], [Text("a"), Ping(1), Ping(2)])
        texts = sorted(f.text for f in result.of_type(Text))
        assert texts == ["A", "a", "a!"]
        assert numbers(result.downstream) == [1, 2]

    async def test_start_and_end_leave_once_after_every_branch_passed_them(
        self, autojump_clock: object
    ) -> None:
        """``StartFrame`` and ``EndFrame`` leave the parallel section once each, the end only
        after the slowest branch has drained."""
        slow = Suffix(" (slow)", delay=5.0)
        parallel = ParallelPipeline([Suffix(" (fast)")], [slow])
        result = await run_frames(parallel, [Text("x"), Text("y")], include_lifecycle=True)
        kinds = [type(f).__name__ for f in result.downstream]
        assert kinds.count("StartFrame") == 1
        assert kinds.count("EndFrame") == 1
        assert kinds[0] == "StartFrame"
        assert kinds[-1] == "EndFrame"
        texts = [f.text for f in result.of_type(Text)]
        assert sorted(texts) == ["x (fast)", "x (slow)", "y (fast)", "y (slow)"]
        assert texts[-1] == "y (slow)"
        assert trio.current_time() == pytest.approx(10)

    async def test_upstream_frames_merge_once_at_the_fan_out(self, autojump_clock: object) -> None:
        """A frame travelling upstream through every branch reaches the input end once."""
        parallel = ParallelPipeline([FrameCollector()], [FrameCollector()], [Incr()])
        result = await run_frames(parallel, [(Ping(7), FrameDirection.UPSTREAM)])
        assert sorted(numbers(result.upstream)) == [7, 8]  # Incr made an 8 of its copy

    async def test_errors_reported_while_draining_cross_the_parallel_section_once(
        self, autojump_clock: object
    ) -> None:
        """An error pushed upstream after the ``EndFrame`` went by still reaches the input end,
        once, through the stopped branches."""

        class LateError(Actor[Ping]):
            accepts = (Ping,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                assert isinstance(frame, Ping)
                await trio.sleep(1)
                if frame.n == 1:
                    await self.push_error("late")

        parallel = ParallelPipeline([Incr()], [FrameCollector()], [FrameCollector()])
        result = await run_frames([FrameCollector(), parallel, LateError()], [Ping(1)])
        assert [e.error for e in result.errors] == ["late"]

    async def test_branches_can_nest_topologies(self, autojump_clock: object) -> None:
        """A branch can be a pipeline holding another parallel section."""
        inner = ParallelPipeline([Incr()], [Incr(), Incr()])
        parallel = ParallelPipeline(Pipeline([inner]), [Incr(), Incr(), Incr()])
        result = await run_frames(parallel, [Ping(0)])
        assert sorted(numbers(result.downstream)) == [1, 2, 3]

    async def test_a_single_branch_is_a_plain_pipeline(self, autojump_clock: object) -> None:
        """With one branch every frame passes straight through, in order."""
        result = await run_frames(ParallelPipeline([Incr()]), [Ping(n) for n in range(20)])
        assert numbers(result.downstream) == list(range(1, 21))


class TestGraphApi:
    async def test_spawn_and_link_build_a_topology_at_run_time(
        self, autojump_clock: object
    ) -> None:
        """Actors spawned in a session and linked pass frames along their links; several
        links out of one actor fan out."""
        head = Incr(name="head")
        left, right = FrameCollector(name="left"), FrameCollector(name="right")
        async with Session.open("graph") as session:
            ref = session.spawn(head)
            session.spawn(left)
            session.spawn(right)
            session.link(head, left)
            session.link(ref, right.ref)
            await ref.send(Ping(1))
            await wait_idle()
            assert numbers(left.downstream) == numbers(right.downstream) == [2]
            assert [r.name for r in session.actors()] == ["head", "left", "right"]
            assert session.get("left").actor is left
            with pytest.raises(KeyError, match=r"no actor 'nope' in session 'graph'"):
                session.get("nope")
            session.unlink(head, right)
            session.unlink(head, right)  # no error
            await ref.send(Ping(2))
            await wait_idle()
            assert numbers(left.downstream) == [2, 3]
            assert numbers(right.downstream) == [2]
            [snap] = [a for a in session.snapshot().actors if a.name == "head"]
            assert snap.downstream == ("left",)

    async def test_insert_between_and_remove_while_running(self, autojump_clock: object) -> None:
        """A stage can be spliced into a running task's topology and removed again; the
        removed stage stops and its neighbours are linked back together."""
        first, last = FrameCollector(name="first"), FrameCollector(name="last")
        async with open_test_task([first, last]) as t:
            await t.push(Ping(1))
            assert numbers(await t.drain()) == [1]
            incr = Incr(name="incr")
            ref = t.session.insert_between(incr, first, last)
            await t.push(Ping(1))
            assert numbers(await t.drain()) == [2]
            await t.session.remove(ref)
            assert incr.state is ActorState.STOPPED
            with pytest.raises(ActorDeadError):
                await ref.send(Ping(0))
            await t.push(Ping(1))
            assert numbers(await t.drain()) == [1]

    async def test_removing_a_busy_actor_drops_its_queue_and_keeps_the_rest_running(
        self, autojump_clock: object
    ) -> None:
        """Removing an actor abandons what it still had queued; frames flow around it."""
        gate = Gate(name="gate")
        async with open_test_task([Incr(), gate, Incr()]) as t:
            await t.push(Ping(1), Ping(2))
            await wait_idle()
            await t.session.remove(gate)
            await wait_idle()
            assert gate.cancelled == [2]
            await t.push(Ping(10))
            assert numbers(await t.drain()) == [12]

    async def test_the_session_refuses_misuse(self, autojump_clock: object) -> None:
        """Spawning twice, into two sessions or after the session closed is refused."""
        actor = FrameCollector(name="one")
        async with Session.open() as session:
            session.spawn(actor)
            with pytest.raises(SessionStateError, match="already started once"):
                session.spawn(actor)
            with pytest.raises(ValueError, match="already has an actor named 'one'"):
                session.spawn(FrameCollector(name="one"))
            async with Session.open() as other:
                with pytest.raises(SessionStateError, match="already started once"):
                    other.spawn(actor)
        assert not session.running
        with pytest.raises(SessionStateError, match="is not running; cannot spawn"):
            session.spawn(FrameCollector())
        with pytest.raises(SessionStateError, match="not running in a session"):
            await FrameCollector().push_frame(Ping(1))

    async def test_leaving_the_session_stops_every_actor(self, autojump_clock: object) -> None:
        """When the ``Session.open`` block ends, every actor is stopped (``on_stop`` run)."""
        sleepers = [Sleeper(100.0, name=f"s{i}") for i in range(3)]
        async with Session.open() as session:
            for sleeper in sleepers:
                await session.spawn(sleeper).send(Ping(1))
            await wait_idle()
        assert [s.state for s in sleepers] == [ActorState.STOPPED] * 3
        assert [s.cancelled for s in sleepers] == [[1]] * 3
