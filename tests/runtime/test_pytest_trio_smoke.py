"""pytest-trio works with the installed pytest.

pytest-trio 0.8.0 (the last release, pinned in pyproject.toml) imports private pytest
internals (``_pytest.outcomes``, fixture internals). These checks fail loudly if a pytest
upgrade breaks the plugin, instead of the whole suite misbehaving in confusing ways.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.lowlevel
import trio.testing


@pytest.fixture
async def trio_resource() -> AsyncIterator[list[str]]:
    """An async yield fixture: set up and torn down inside the test's trio run."""
    events = ["set up"]
    await trio.lowlevel.checkpoint()
    yield events
    events.append("torn down")


class TestPytestTrio:
    def test_the_plugin_is_active_in_trio_mode(self, request: pytest.FixtureRequest) -> None:
        """The plugin is registered and ``trio_mode`` comes from pyproject.toml."""
        import pytest_trio.plugin  # type: ignore[import-untyped]  # imports pytest internals

        assert request.config.pluginmanager.has_plugin("trio")
        assert request.config.getini("trio_mode") is True
        assert pytest_trio.plugin is not None

    async def test_an_unmarked_async_test_runs_under_trio(self) -> None:
        """An ``async def`` test without a marker runs inside ``trio.run``."""
        assert trio.lowlevel.current_task() is not None
        await trio.lowlevel.checkpoint()

    async def test_autojump_clock_runs_timeouts_in_virtual_time(
        self, autojump_clock: trio.testing.MockClock
    ) -> None:
        """The ``autojump_clock`` fixture makes an hour-long sleep instant."""
        assert isinstance(autojump_clock, trio.testing.MockClock)
        start = trio.current_time()
        await trio.sleep(3600)
        assert trio.current_time() - start == 3600
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(10):
                await trio.sleep_forever()

    async def test_async_fixtures_and_the_nursery_fixture_work(
        self, trio_resource: list[str], nursery: trio.Nursery
    ) -> None:
        """Async yield fixtures and the ``nursery`` fixture are served by the plugin."""
        assert trio_resource == ["set up"]
        done = trio.Event()

        async def finish() -> None:
            done.set()

        nursery.start_soon(finish)
        await done.wait()

    async def test_wait_all_tasks_blocked_settles_the_run(self) -> None:
        """``trio.testing.wait_all_tasks_blocked`` returns once other tasks are blocked."""
        seen: list[int] = []

        async def worker() -> None:
            for n in range(3):
                seen.append(n)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [0, 1, 2]
