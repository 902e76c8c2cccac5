"""Scrubbers: what a layer registers with ``add_scrubber`` hides text in every ``ErrorFrame``
that ``push_error`` reports and in every line ``runtime.logging.configure`` writes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import pytest

import runtime
from runtime import Actor, ErrorFrame, Frame, FrameDirection, RestartPolicy, Session
from runtime import logging as rlog
from runtime.testing import run_frames, wait_idle

from .runtime_helpers import Ping

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

WORD = "pumpernickel"
HIDDEN = "<hidden>"


class HidesWord:
    """A test scrubber: hides one word in strings, mapping values and exception arguments."""

    def __init__(self, word: str = WORD) -> None:
        self.word = word

    def value(self, value: T) -> T:
        result: Any = value
        if isinstance(value, str):
            result = value.replace(self.word, HIDDEN)
        elif isinstance(value, Mapping):
            result = {k: self.value(v) for k, v in value.items()}
        return result  # type: ignore[no-any-return]

    def exception(self, error: E) -> E:
        error.args = tuple(self.value(a) for a in error.args)
        return error


@pytest.fixture
def scrubber() -> Iterator[HidesWord]:
    hides = HidesWord()
    runtime.add_scrubber(hides)
    try:
        yield hides
    finally:
        runtime.remove_scrubber(hides)


class Complains(Actor[Ping]):
    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        error = ValueError(f"no {WORD} here")
        await self.push_error(f"failed: {WORD}", exception=error)


class FailsAtOnce(Actor[Ping]):
    """Its synchronous handler (``process_frame_nowait``) fails with the word in the error."""

    accepts = (Ping,)

    def process_frame_nowait(self, frame: Frame, direction: FrameDirection) -> bool:
        raise ValueError(f"no {WORD} here")


class TestRegistry:
    def test_scrub_applies_every_scrubber_in_the_order_they_were_added(
        self, scrubber: HidesWord
    ) -> None:
        assert runtime.scrub(f"a {WORD}") == f"a {HIDDEN}"
        assert runtime.scrub({"k": WORD}) == {"k": HIDDEN}
        second = HidesWord("hidden")  # runs after the first: sees "<hidden>"
        runtime.add_scrubber(second)
        try:
            assert runtime.scrub(WORD) == "<<hidden>>"
        finally:
            runtime.remove_scrubber(second)

    def test_adding_twice_applies_once_and_removing_stops_it(self) -> None:
        counted: list[str] = []

        class Counts(HidesWord):
            def value(self, value: T) -> T:
                if isinstance(value, str):
                    counted.append(value)
                return super().value(value)

        counts = Counts()
        runtime.add_scrubber(counts)
        runtime.add_scrubber(counts)
        try:
            assert runtime.scrub(WORD) == HIDDEN
            assert counted == [WORD]
        finally:
            runtime.remove_scrubber(counts)
        runtime.remove_scrubber(counts)  # not registered any more: nothing happens
        assert runtime.scrub(WORD) == WORD

    def test_exceptions_pass_through_every_scrubber(self, scrubber: HidesWord) -> None:
        error = RuntimeError(f"with {WORD}")
        assert runtime.scrub_exception(error) is error
        assert str(error) == f"with {HIDDEN}"


class TestWhereTextLeaves:
    async def test_push_error_scrubs_the_frame_and_its_exception(
        self, scrubber: HidesWord, autojump_clock: object
    ) -> None:
        result = await run_frames([Complains()], [Ping(1)])
        [frame] = result.errors
        assert isinstance(frame, ErrorFrame)
        assert frame.error == f"failed: {HIDDEN}"
        assert str(frame.exception) == f"no {HIDDEN} here"

    async def test_text_no_scrubber_knows_is_left_alone(self, autojump_clock: object) -> None:
        result = await run_frames([Complains()], [Ping(1)])
        [frame] = result.errors
        assert frame.error == f"failed: {WORD}"

    @pytest.mark.parametrize("json_lines", [False, True], ids=["console", "JSON"])
    def test_configured_logs_scrub_fields_and_rendered_lines(
        self, scrubber: HidesWord, json_lines: bool, structlog_restored: None
    ) -> None:
        """A field is scrubbed as data; what only shows once rendered (an object's repr) is
        scrubbed in the rendered line."""

        class Holder:
            def __repr__(self) -> str:
                return f"Holder({WORD})"

        out = io.StringIO()
        rlog.configure(json=json_lines, level="debug", file=out, colors=False)
        rlog.get_logger("test").info("event", detail=f"x {WORD}", holder=Holder())
        written = out.getvalue()
        assert WORD not in written
        assert written.count(HIDDEN) == 2
        if json_lines:
            assert json.loads(written)["detail"] == f"x {HIDDEN}"

    def test_the_processor_and_the_renderer_wrapper_can_be_installed_by_hand(
        self, scrubber: HidesWord
    ) -> None:
        assert rlog.scrub_event(None, "info", {"event": WORD}) == {"event": HIDDEN}
        renderer = rlog.ScrubbingRenderer(lambda _l, _m, e: f"{e!r}".encode())
        assert renderer(None, "info", {"x": WORD}) == f"{{'x': '{HIDDEN}'}}".encode()

    async def test_a_crash_of_a_frame_handled_at_once_is_logged_scrubbed(
        self, scrubber: HidesWord, structlog_restored: None, autojump_clock: object
    ) -> None:
        """What ``process_frame_nowait`` raises becomes the actor's crash, raised in a task of
        its own: the lines that report it (the crash, the restart) show the scrubbed text."""
        out = io.StringIO()
        rlog.configure(json=True, level="debug", file=out, colors=False)
        async with Session.open() as session:
            ref = session.spawn(FailsAtOnce(restart_policy=RestartPolicy(max_restarts=1)))
            await wait_idle()
            ref.send_nowait(Ping(1))
            await wait_idle()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        restarting = [line for line in lines if line["event"] == "actor restarting"]
        assert restarting
        assert restarting[0]["error"] == f"ValueError: no {HIDDEN} here"
        assert WORD not in out.getvalue()
