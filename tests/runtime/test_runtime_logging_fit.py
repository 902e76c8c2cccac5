"""``runtime.logging.configure()`` fits the application's logging: standalone when nothing is
configured, inside the application's own structlog chain when it has one, through the
standard ``logging`` module when the application uses that; secrets are scrubbed in every
mode, and every line an actor logs names its session, actor and turn."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import structlog

from runtime import Actor, Frame, FrameDirection, add_scrubber, remove_scrubber
from runtime import logging as rlog
from runtime.testing import open_test_task, wait_idle

from .runtime_helpers import Ping

SECRET = "hunter2-very-secret-value"
T = TypeVar("T")


class _HideSecret:
    """A scrubber that knows one secret (what ``import actors`` does for credentials)."""

    def value(self, value: T) -> T:
        if isinstance(value, str):
            return value.replace(SECRET, "[hidden]")  # type: ignore[return-value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}  # type: ignore[return-value]
        return value

    def exception(self, error: Any) -> Any:
        return error


class Talker(Actor[Ping]):
    """Logs a debug and an info line per ping, the info one with the secret in it; and a line
    through a plain structlog logger (a library it calls, say), which binds nothing."""

    accepts = (Ping,)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        self.log.debug("talker debug")
        self.log.info("talker said", text=f"the password is {SECRET}")
        structlog.get_logger("trouper.library").info("library line")
        await self.push_frame(frame, direction)


@pytest.fixture
def scrubbed() -> Iterator[None]:
    scrubber = _HideSecret()
    add_scrubber(scrubber)
    yield
    remove_scrubber(scrubber)


@pytest.fixture
def bare_stdlib() -> Iterator[Callable[[], logging.Logger]]:
    """Call it in the test to take the handlers off the root logger (pytest adds its own
    before the test runs); they are put back afterwards, and the levels restored."""
    root = logging.getLogger()
    root_level, trouper_level = root.level, logging.getLogger("trouper").level
    removed: list[logging.Handler] = []

    def bare() -> logging.Logger:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            removed.append(handler)
        return root

    yield bare
    bare()
    for handler in removed:
        if handler not in root.handlers and not isinstance(handler, _OwnHandler):
            root.addHandler(handler)
    root.setLevel(root_level)
    logging.getLogger("trouper").setLevel(trouper_level)


class _OwnHandler(logging.Handler):
    """The handlers the tests add (removed afterwards)."""

    def __init__(self, records: list[logging.LogRecord], out: io.StringIO) -> None:
        super().__init__()
        self.records, self.out = records, out
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.out.write(self.format(record) + "\n")


async def _talk(session: str = "fit") -> None:
    async with open_test_task([Talker(name="talker")], name=session) as t:
        await t.push(Ping(1))
        await wait_idle()


@pytest.mark.usefixtures("structlog_restored", "scrubbed")
class TestStandalone:
    async def test_nothing_configured_means_trouper_configures_structlog(
        self, bare_stdlib: Callable[[], logging.Logger], capsys: pytest.CaptureFixture[str]
    ) -> None:
        structlog.reset_defaults()
        bare_stdlib()
        assert rlog.configure(level="info", colors=False) == "standalone"
        await _talk()
        err = capsys.readouterr().err
        said = next(line for line in err.splitlines() if "talker said" in line)
        assert "session=fit" in said
        assert "actor=talker" in said
        assert "turn=0" in said
        assert SECRET not in err
        assert "[hidden]" in said
        assert "talker debug" not in err
        library = next(line for line in err.splitlines() if "library line" in line)
        assert "actor=talker" in library
        assert "session=fit" in library

    async def test_a_file_means_standalone_whatever_else_is_configured(self) -> None:
        logging.getLogger().addHandler(handler := logging.NullHandler())
        try:
            out = io.StringIO()
            assert rlog.configure(json=True, level="debug", file=out) == "standalone"
            await _talk()
        finally:
            logging.getLogger().removeHandler(handler)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        said = next(e for e in lines if e["event"] == "talker said")
        assert said["text"] == "the password is [hidden]"
        assert (said["session"], said["actor"], said["turn"]) == ("fit", "talker", 0)
        assert any(e["event"] == "talker debug" for e in lines)

    def test_unknown_mode_and_level_are_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown logging mode 'loud'"):
            rlog.configure(mode="loud")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown log level"):
            rlog.configure(level="loud")


@pytest.mark.usefixtures("structlog_restored", "scrubbed")
class TestAppStructlog:
    def _app_config(self, out: io.StringIO, *, cache: bool = False) -> list[Any]:
        def app_marker(logger: Any, method_name: str, event_dict: Any) -> Any:
            event_dict["app"] = "mine"
            return event_dict

        processors: list[Any] = [
            structlog.contextvars.merge_contextvars,
            app_marker,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ]
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(file=out),
            cache_logger_on_first_use=cache,
        )
        return processors

    async def test_the_apps_chain_is_kept_and_trouper_adds_its_processors(self) -> None:
        out = io.StringIO()
        processors = self._app_config(out)
        assert rlog.configure(level="debug", json=False) == "structlog"
        # Once more: nothing is added twice.
        assert rlog.configure() == "structlog"
        chain = structlog.get_config()["processors"]
        assert chain is processors  # the app's own list, changed in place
        assert chain.count(rlog.add_actor_fields) == 1
        assert chain.count(rlog.scrub_event) == 1
        assert isinstance(chain[-1], rlog.ScrubbingRenderer)
        assert isinstance(chain[-1].renderer, structlog.processors.JSONRenderer)
        await _talk()
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        said = next(e for e in lines if e["event"] == "talker said")
        assert said["app"] == "mine"  # the app's processor ran
        assert said["text"] == "the password is [hidden]"
        assert (said["session"], said["actor"], said["turn"]) == ("fit", "talker", 0)
        library = next(e for e in lines if e["event"] == "library line")
        assert (library["session"], library["actor"], library["turn"]) == ("fit", "talker", 0)
        # The app's level applies, not the one given to configure.
        assert not any(e["event"] == "talker debug" for e in lines)
        assert SECRET not in out.getvalue()

    async def test_loggers_the_app_cached_before_are_scrubbed_too(self) -> None:
        out = io.StringIO()
        self._app_config(out, cache=True)
        cached = structlog.get_logger("app")
        cached.info("before")  # cached now, with the app's chain
        rlog.configure()
        cached.info("after", text=f"token {SECRET}")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [e["event"] for e in lines] == ["before", "after"]
        assert lines[1]["text"] == "token [hidden]"


@pytest.mark.usefixtures("structlog_restored", "scrubbed")
class TestAppStdlib:
    def _handler(self, root: logging.Logger) -> tuple[io.StringIO, list[logging.LogRecord]]:
        out = io.StringIO()
        records: list[logging.LogRecord] = []
        root.addHandler(_OwnHandler(records, out))
        root.setLevel(logging.INFO)
        return out, records

    async def test_lines_go_through_stdlib_loggers_named_trouper(
        self, bare_stdlib: Callable[[], logging.Logger]
    ) -> None:
        structlog.reset_defaults()
        out, records = self._handler(bare_stdlib())
        assert rlog.configure() == "stdlib"
        await _talk()
        said = next(r for r in records if "talker said" in r.getMessage())
        assert said.name == "trouper.runtime"
        assert said.levelno == logging.INFO
        message = said.getMessage()
        assert "session='fit'" in message
        assert "actor='talker'" in message
        assert "turn=0" in message
        assert "[hidden]" in message
        library = next(r for r in records if "library line" in r.getMessage())
        assert library.name == "trouper.library"
        assert "actor='talker'" in library.getMessage()
        assert SECRET not in out.getvalue()
        assert "INFO trouper.runtime event='talker said'" in out.getvalue()
        # The application's levels decide: debug lines are not written at INFO...
        assert not any("talker debug" in r.getMessage() for r in records)
        # ...and are once the application lets them through.
        logging.getLogger("trouper").setLevel(logging.DEBUG)
        await _talk()
        assert any("talker debug" in r.getMessage() for r in records)

    async def test_a_level_given_is_set_on_the_trouper_logger(
        self, bare_stdlib: Callable[[], logging.Logger]
    ) -> None:
        self._handler(bare_stdlib())
        assert rlog.configure(level="debug", json=True, mode="stdlib") == "stdlib"
        assert logging.getLogger("trouper").level == logging.DEBUG

    async def test_a_session_of_an_unconfigured_app_leaves_the_apps_levels_alone(
        self, bare_stdlib: Callable[[], logging.Logger]
    ) -> None:
        structlog.reset_defaults()
        _, records = self._handler(bare_stdlib())
        logging.getLogger().setLevel(logging.DEBUG)
        await _talk()  # the session sets logging up (stdlib mode), levels untouched
        assert logging.getLogger("trouper").level == logging.NOTSET
        assert any("talker debug" in r.getMessage() for r in records)

    async def test_tracebacks_are_text_in_the_scrubbed_message(
        self, bare_stdlib: Callable[[], logging.Logger]
    ) -> None:
        out, _ = self._handler(bare_stdlib())
        rlog.configure(mode="stdlib")
        try:
            raise RuntimeError(f"failed with {SECRET}")
        except RuntimeError:
            rlog.get_logger("trouper.test").exception("it failed")
        text = out.getvalue()
        assert "RuntimeError: failed with [hidden]" in text
        assert SECRET not in text
