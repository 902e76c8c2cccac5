"""A harness for the promise "the context holds exactly what the output delivered": random
conversations through the README pipeline, interrupted at random points, that record what the
output handed to ``on_output`` and compare it with the conversation the context store keeps.

A *round* is one user line. Its plan says what the scripted server streams (text tokens, each
after its own delay, maybe a tool call and the answer that follows the call), how the tool
behaves, and when the round is interrupted: inside ``on_output``, right after a given frame
was shown (the response's start, the k-th text, the tool-call announcement, an end frame), or
from the driving task (after a delay, once the server has the request, while the tool runs).

Every text token names its round and response (``r12a1t3;``), so a token found in the context
tells where it came from. :meth:`DeliveryHarness.problems` checks, for every round, that the
assistant text in the conversation is, exactly, the text the output delivered, and that a
plain answer is marked interrupted exactly when an interruption came before its end frame was
shown.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import attrs
import trio

from actors import (
    FunctionCallParams,
    FunctionCallsStartedFrame,
    FunctionSchema,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OpenAILLMContext,
    TextTransport,
    ToolsSchema,
)
from actors.testing import ChunkFactory, Piece, RecordedRequest, Reply, ScriptedOpenAIServer
from runtime import Frame, PipelineTask

from ..conversation_kit import context_problems, open_conversation

LOOKUP = ToolsSchema(
    standard_tools=[
        FunctionSchema(
            name="lookup",
            description="Look something up",
            properties={"q": {"type": "string"}},
            required=["q"],
        )
    ]
)

TriggerKind = Literal["none", "start", "text", "calls", "end", "after", "request", "tool"]
#: Triggers fired inside ``on_output`` right after the frame was shown.
SHOWN_TRIGGERS = ("start", "text", "calls", "end")
ToolMode = Literal["instant", "slow", "block"]

_CHUNKS = ChunkFactory()


@attrs.frozen
class Stream:
    """One scripted response: text tokens (each after its delay), then maybe one tool call."""

    tokens: tuple[str, ...]
    delays: tuple[float, ...]
    call_id: str | None = None


@attrs.frozen
class RoundPlan:
    """What happens in one round (one user line)."""

    index: int
    first: Stream
    follow_up: Stream | None
    tool: ToolMode
    tool_secs: float
    trigger: TriggerKind
    #: The k-th text / n-th end frame of the round, or the delay of an ``after`` trigger.
    at: float
    #: After an interruption, send the next line at once instead of letting things settle.
    next_at_once: bool

    def describe(self) -> str:
        calls = f", tool {self.tool}" if self.first.call_id else ""
        follow = len(self.follow_up.tokens) if self.follow_up is not None else 0
        return (
            f"round {self.index}: {len(self.first.tokens)} tokens{calls}, {follow} follow-up "
            f"tokens, interrupt {self.trigger} {self.at:g}"
        )


def _stream(rng: random.Random, r: int, a: int, n: int, scale: float, call: bool) -> Stream:
    tokens = tuple(f"r{r}a{a}t{i};" for i in range(n))
    delays = tuple(rng.choice((0.0, 0.0, 0.1, 0.5, 1.0)) * scale * rng.random() for _ in tokens)
    return Stream(tokens, delays, f"call_r{r}" if call else None)


def plan_round(rng: random.Random, r: int, *, scale: float) -> RoundPlan:
    """A random round: token schedule, tool behaviour and interruption point.

    ``scale`` is the longest delay between two tokens, in seconds.
    """
    n = rng.choice((0, 1, 2, rng.randint(3, 12), rng.randint(13, 30)))
    tool = rng.random() < 0.3
    first = _stream(rng, r, 0, rng.randint(0, 3) if tool else n, scale, tool)
    follow_up = _stream(rng, r, 1, n, scale, False) if tool else None
    mode: ToolMode = rng.choice(("instant", "slow", "block")) if tool else "instant"
    kinds: list[TriggerKind] = ["none", "start", "text", "text", "text", "end", "after", "request"]
    if tool:
        kinds += ["calls", "tool", "tool"]
    trigger: TriggerKind = rng.choice(kinds)
    if mode == "block" and trigger in ("none", "text", "end"):
        trigger = rng.choice(("start", "calls", "tool", "after", "request"))
    at: float
    total = len(first.tokens) + (len(follow_up.tokens) if follow_up is not None else 0)
    if trigger == "text":
        at = rng.randint(1, max(total, 1))
    elif trigger == "end":
        at = rng.randint(1, 2) if tool else 1
    elif trigger == "after":
        at = rng.random() * scale * (total + 2)
    else:
        at = 0
    return RoundPlan(
        index=r,
        first=first,
        follow_up=follow_up,
        tool=mode,
        tool_secs=rng.random() * scale * 3,
        trigger=trigger,
        at=at,
        next_at_once=rng.random() < 0.5,
    )


def _reply(stream: Stream) -> Reply:
    events: list[dict[str, Any]] = [_CHUNKS.role(), *(_CHUNKS.text(t) for t in stream.tokens)]
    if stream.call_id is not None:
        events.append(_CHUNKS.tool_call(0, id=stream.call_id, name="lookup", arguments=""))
        events.append(_CHUNKS.tool_call(0, arguments='{"q": "x"}'))
        events.append(_CHUNKS.finish("tool_calls"))
    else:
        events.append(_CHUNKS.finish())
    reply = Reply.sse(events)
    delays = (0.0, *stream.delays) + (0.0,) * (len(reply.pieces) - 1 - len(stream.delays))
    return attrs.evolve(
        reply, pieces=[Piece(p.data, d) for p, d in zip(reply.pieces, delays, strict=True)]
    )


@attrs.define(eq=False)
class Shown:
    """One response as the output showed it. Times are positions in the harness's sequence of
    events (frames shown, interruptions, lines sent)."""

    #: The round whose line was the last one sent when its start frame was shown.
    round: int
    started: int
    texts: list[str] = attrs.Factory(list)
    #: When its end frame was shown (``None``: never).
    ended: int | None = None

    def cut(self, interruptions: list[int], before: float = float("inf")) -> bool:
        """An interruption came after its start frame and before its end frame was shown (and
        before ``before``)."""
        end = min(self.ended if self.ended is not None else before, before)
        return any(self.started < i < end for i in interruptions)


def _key(token: str) -> str:
    """``r12a1`` for ``r12a1t3``."""
    return token.split("t", 1)[0]


@attrs.define(eq=False)
class DeliveryHarness:
    """One conversation through the README pipeline, driven round by round.

    Args:
        server: The scripted server (its ``responder`` is set to this conversation's plans).
        settle: Awaited after an interruption unless the plan sends the next line at once.
    """

    server: ScriptedOpenAIServer
    settle: Callable[[], Awaitable[None]]
    plans: dict[int, RoundPlan] = attrs.Factory(dict)
    shown: list[str] = attrs.Factory(list)
    responses: list[Shown] = attrs.Factory(list)
    #: When each interruption happened and each round's line was sent (event positions).
    interruptions: list[int] = attrs.Factory(list)
    lines: dict[int, int] = attrs.Factory(dict)
    current: RoundPlan | None = None
    _events: int = 0
    _open: Shown | None = None
    _fired: bool = False
    _texts: int = 0
    _ends: int = 0
    _tool_running: trio.Event = attrs.Factory(trio.Event)
    _requests_before: int = 0
    task: PipelineTask | None = None
    transport: TextTransport | None = None
    context: OpenAILLMContext | None = None

    # ------------------------------------------------------------------ the scripted server

    def respond(self, request: RecordedRequest) -> Reply:
        last = request.json["messages"][-1]
        if last["role"] == "user":
            plan = self.plans[int(last["content"].removeprefix("q"))]
            return _reply(plan.first)
        plan = self.plans[int(last["tool_call_id"].removeprefix("call_r"))]
        assert plan.follow_up is not None
        return _reply(plan.follow_up)

    async def lookup(self, params: FunctionCallParams) -> None:
        plan = self.plans[int(params.tool_call_id.removeprefix("call_r"))]
        if self.current is plan:
            self._tool_running.set()
        if plan.tool == "slow":
            await trio.sleep(plan.tool_secs)
        elif plan.tool == "block":
            await trio.sleep_forever()
        await params.result_callback({"found": plan.index})

    # ------------------------------------------------------------------ the output

    def on_output(self, frame: Frame) -> None:
        """The application's output callback: records what was shown, fires shown-triggers."""
        plan = self.current
        if plan is None:
            return
        self._events += 1
        trigger = plan.trigger
        fire = False
        # The triggers count only the current round's frames: an earlier round's interrupted
        # answer can still be closing (its end frame shown) when this round's line is sent.
        if isinstance(frame, LLMFullResponseStartFrame):
            self._open = Shown(plan.index, self._events)
            self.responses.append(self._open)
            fire = trigger == "start"
        elif isinstance(frame, LLMTextFrame):
            self.shown.append(frame.text)
            if self._open is not None:
                self._open.texts.append(frame.text)
            if frame.text.startswith(f"r{plan.index}a"):
                self._texts += 1
                fire = trigger == "text" and self._texts == plan.at
        elif isinstance(frame, FunctionCallsStartedFrame):
            fire = (
                trigger == "calls" and frame.function_calls[0].tool_call_id == f"call_r{plan.index}"
            )
        elif isinstance(frame, LLMFullResponseEndFrame):
            response, self._open = self._open, None
            if response is not None:
                response.ended = self._events
                if response.round == plan.index:
                    self._ends += 1
                    fire = trigger == "end" and self._ends == plan.at
        if fire:
            self.interrupt()

    def interrupt(self) -> None:
        """Interrupt the round (once)."""
        if self._fired:
            return
        self._fired = True
        self._events += 1
        self.interruptions.append(self._events)
        assert self.task is not None
        assert self.transport is not None
        self.task.interrupt()
        self.transport.interrupted()

    # ------------------------------------------------------------------ driving

    async def run(self, plans: list[RoundPlan]) -> None:
        """Run one conversation of ``plans`` rounds; the session ends after the last one."""
        self.plans = {p.index: p for p in plans}
        self.server.responder = self.respond
        self._requests_before = len(self.server.requests)
        async with open_conversation(
            self.server,
            quick_start=True,
            on_output=self.on_output,
            tools=LOOKUP,
            functions={"lookup": self.lookup},
            # problems() checks the conversation; the soak runs many at once.
            check_on_exit=False,
        ) as conversation:
            self.task, self.transport = conversation.task, conversation.transport
            self.context = conversation.context
            for plan in plans:
                await self._round(plan)

    async def _round(self, plan: RoundPlan) -> None:
        assert self.transport is not None
        self.current = plan
        self._fired = False
        self._texts = self._ends = 0
        self._tool_running = trio.Event()
        requests = len(self.server.requests)
        self._events += 1
        self.lines[plan.index] = self._events
        await self.transport.send_text(f"q{plan.index}")
        async with trio.open_nursery() as nursery:
            if plan.trigger in ("after", "request", "tool"):
                nursery.start_soon(self._drive, plan, requests)
            await self.transport.wait_answer()
            if plan.trigger != "after":
                nursery.cancel_scope.cancel()
        if self._fired and not plan.next_at_once:
            await self.settle()

    async def _drive(self, plan: RoundPlan, requests: int) -> None:
        if plan.trigger == "tool":
            await self._tool_running.wait()
        else:
            # Once the LLM works on this line (an interruption before that would cut nothing
            # of it: the line itself is never dropped), then maybe a while later.
            await self.server.wait_requests(requests + 1)
            if plan.trigger == "after":
                await trio.sleep(plan.at)
        self.interrupt()

    # ------------------------------------------------------------------ checking

    def problems(self) -> list[str]:
        """Where the conversation differs from what the output delivered (empty: none)."""
        assert self.context is not None
        messages = self.context.get_messages()
        found: list[str] = list(context_problems(messages))
        committed: dict[int, list[str]] = {}
        for m in messages:
            content = m.get("content")
            if m["role"] == "assistant" and isinstance(content, str):
                for token in content.split(";")[:-1]:
                    committed.setdefault(int(token[1:].split("a", 1)[0]), []).append(token + ";")
        shown: dict[int, list[str]] = {}
        for token in self.shown:
            shown.setdefault(int(token[1:].split("a", 1)[0]), []).append(token)
        for r in sorted(set(committed) | set(shown)):
            if committed.get(r, []) != shown.get(r, []):
                found.append(
                    f"{self.plans[r].describe()}: shown {''.join(shown.get(r, []))!r}, "
                    f"in the context {''.join(committed.get(r, []))!r}"
                )
        if not found:
            whole = "".join(
                m["content"]
                for m in messages
                if m["role"] == "assistant" and isinstance(m.get("content"), str)
            )
            if whole != "".join(self.shown):
                found.append(f"order: shown {''.join(self.shown)!r}, in the context {whole!r}")
        found += self._request_problems()
        by_key = {_key(r.texts[0]): r for r in self.responses if r.texts}
        for i, m in enumerate(messages):
            content = m.get("content")
            if m["role"] != "assistant" or m.get("tool_calls") or not isinstance(content, str):
                continue
            response = by_key.get(_key(content))
            if response is None:
                continue  # reported above: text nobody was shown
            cut = response.cut(self.interruptions)
            if self.context.is_interrupted(i) != cut:
                found.append(
                    f"message {i} {content!r}: marked interrupted={self.context.is_interrupted(i)}"
                    f", but its end frame was shown {'after' if cut else 'before'} the "
                    "interruption"
                )
        return found

    def _request_problems(self) -> list[str]:
        """The request answering each line carries, before the line, exactly the text of the
        answers shown until the line was sent that had ended or been interrupted by then: an
        interrupted answer is committed before the next user message, whole. (An answer still
        running, not interrupted, is not in it yet: docs/context.md, user aggregation.)"""
        found: list[str] = []
        for request in self.server.requests[self._requests_before :]:
            messages = request.json["messages"]
            if messages[-1]["role"] != "user":
                continue
            r = int(messages[-1]["content"].removeprefix("q"))
            line = self.lines[r]
            sent = "".join(
                m["content"]
                for m in messages
                if m["role"] == "assistant" and isinstance(m.get("content"), str)
            )
            shown = "".join(
                "".join(response.texts)
                for response in self.responses
                if response.started < line
                and (
                    (response.ended is not None and response.ended < line)
                    or response.cut(self.interruptions, before=line)
                )
            )
            if sent != shown:
                found.append(
                    f"{self.plans[r].describe()}: its request carries {sent[len(shown) - 40 :]!r}"
                    f" where the output had shown {shown[-40:]!r}"
                )
        return found

    def interrupted_rounds(self) -> int:
        """How many rounds were interrupted."""
        return len(self.interruptions)

    def cut_answers(self) -> int:
        """How many answers with text shown were cut by an interruption."""
        return sum(1 for r in self.responses if r.texts and r.cut(self.interruptions))
