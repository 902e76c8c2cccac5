"""What the companions do at once, in the sender's task, when they are idle: the context store
answers an ask when nothing in it waits (no storage, no window; otherwise its answers come from
its own task, as before), and the metrics collector folds a report in."""

from __future__ import annotations

import trio

from actors import (
    AppendMessagesRequest,
    ContextStore,
    ContextWindow,
    GetContextRequest,
    MetricsCollector,
    OpenAILLMContext,
    TTFBMetricsData,
)
from runtime import Session
from runtime.testing import wait_idle


class _Spawns(trio.abc.Instrument):
    """Counts the tasks trio starts."""

    def __init__(self) -> None:
        self.count = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.count += 1


async def _ask_counting_spawns(store: ContextStore) -> tuple[list[str], int]:
    """Two asks to the idle store: the messages it answered with, and the tasks started."""
    spawns = _Spawns()
    async with Session.open() as session:
        ref = session.spawn(store)
        await wait_idle()
        trio.lowlevel.add_instrument(spawns)
        try:
            await ref.ask(AppendMessagesRequest(({"role": "user", "content": "hi"},)))
            snapshot = await ref.ask(GetContextRequest())
        finally:
            trio.lowlevel.remove_instrument(spawns)
    return [m["content"] for m in snapshot.messages], spawns.count


async def test_an_idle_store_without_storage_or_window_answers_without_a_task() -> None:
    context = OpenAILLMContext(messages=[{"role": "system", "content": "be brief"}])
    messages, spawned = await _ask_counting_spawns(ContextStore(context))
    assert messages == ["be brief", "hi"]
    assert spawned == 0


async def test_a_store_with_a_window_answers_from_its_own_task() -> None:
    """A window may have to summarize (wait): the store answers from ``on_ask``, in a task of
    its own, with the same answer."""
    context = OpenAILLMContext(messages=[{"role": "system", "content": "be brief"}])
    store = ContextStore(context, window=ContextWindow(max_tokens=100_000))
    messages, spawned = await _ask_counting_spawns(store)
    assert messages == ["be brief", "hi"]
    assert spawned == 2  # one task per ask (the store is served on demand)


async def test_an_idle_collector_folds_a_report_in_before_offer_returns() -> None:
    collector = MetricsCollector()
    spawns = _Spawns()
    async with Session.open() as session:
        session.spawn(collector)
        await wait_idle()
        trio.lowlevel.add_instrument(spawns)
        try:
            assert collector.offer([TTFBMetricsData(processor="llm", model="m", value=0.25)])
            assert collector.summary()["m"].ttfb.count == 1
            assert collector.offer([TTFBMetricsData(processor="llm", model="m", value=0.75)])
        finally:
            trio.lowlevel.remove_instrument(spawns)
        summary = collector.summary()["m"]
        assert (summary.ttfb.count, summary.ttfb.mean) == (2, 0.5)
        assert collector.received == 2
    assert spawns.count == 0
