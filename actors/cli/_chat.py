"""``trouper chat``: talk to a model from the terminal, with tools, streaming and interruption.

The conversation runs as the seed pipeline (text transport in, user aggregator, LLM, text
output, assistant aggregator). Ctrl-C while the assistant answers interrupts the answer (the
stream and running tools are cancelled, the partial text stays in the conversation); Ctrl-C or
Ctrl-D at an empty prompt leaves.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import signal
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio
from rich.console import Console
from rich.markup import escape

from runtime import (
    ErrorFrame,
    Frame,
    FrameDirection,
    MetricsFrame,
    Pipeline,
    PipelineTask,
)
from runtime import logging as rlog

from .._context import OpenAILLMContext
from .._frames import (
    FunctionCallCancelFrame,
    FunctionCallInProgressFrame,
    FunctionCallResultFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    LLMUsageMetricsData,
    TTFBMetricsData,
    VisionImageRawFrame,
)
from .._params import PipelineParams
from .._service import OpenAILLMService
from .._storage import DEFAULT_LEASE_TTL
from .._transport import TextTransport
from .._window import ContextWindow
from ..client import ErrorCategory, InvalidParameterError, NotFoundError
from ..client._client import check_api_key, endpoint_url
from ..local._spec import DEFAULT_MODEL
from ..storage import ConversationStorage, LeaseHeldError, StorageError
from ._conversations import held_message, open_store, store_label, store_spec
from ._history import PromptHistory
from ._offer import ToolOffer
from ._terminal import printable
from ._tools import BUILTIN_TOOLS

__all__ = ["ChatOptions", "list_tools", "run_chat"]

#: The model asked for when a server is configured but no model is given and the server does
#: not say which one it serves.
FALLBACK_MODEL = "gpt-4o-mini"
#: How long an answer that ended in an error waits for the error's message (it travels upstream,
#: on its own path) before the chat moves on.
_ERROR_GRACE_SECS = 2.0

#: The embedded 0.5B model calls tools reliably only when sampling stays near greedy.
LOCAL_DEFAULT_TEMPERATURE = 0.2

#: The local model's context per conversation: actors.local starts llama-server with 8,192
#: tokens shared by 4 slots.
LOCAL_CONTEXT_TOKENS = 8192 // 4

DEFAULT_SYSTEM = (
    "You are a helpful assistant in a terminal chat. Answer concisely. Use the tools when "
    "they help: current time in a time zone, arithmetic, unit conversion."
)


@attrs.frozen
class ChatOptions:
    """Options of ``trouper chat`` (see ``trouper chat --help``)."""

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    system: str = DEFAULT_SYSTEM
    temperature: float | None = None
    max_tokens: int | None = None
    prompt: str | None = None
    tools: bool = True
    all_tools: bool = False
    log_json: Path | None = None
    verbose: bool = False
    conversation: str | None = None
    store: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    context_window: int | str = "auto"
    """Tokens a request may hold, ``"auto"`` (the server's context per conversation) or
    ``"off"``."""
    summarize: bool = False
    """Summarise the turns the context window leaves out."""


def list_tools(console: Console | None = None) -> int:
    """Print the built-in tools, one per line."""
    out = console or Console(highlight=False, soft_wrap=True)
    for tool in BUILTIN_TOOLS:
        args = ", ".join(tool.schema.properties)
        out.print(f"[bold]{tool.schema.name}[/]({args})  {escape(tool.schema.description)}")
    return 0


@attrs.define
class _View:
    """Renders the conversation's frames on the terminal and keeps per-answer statistics."""

    console: Console
    err: Console
    local: bool
    endpoint: str = ""
    tools_source: str | None = None
    """The name of the actor that runs the tool calls: its errors (an unknown function, a
    handler that raised) are told to the model, which answers; they do not fail the answer."""
    image_pending: bool = False
    called: set[str] = attrs.Factory(set)
    """The functions called during the current answer."""
    last_called: frozenset[str] = frozenset()
    """The functions called during the previous answer."""
    errors: int = 0
    """Errors that failed an answer (every error but the tool calls')."""
    failed: bool = False
    """Whether the current answer ended in an error (``LLMFullResponseEndFrame.error``)."""
    error_shown: trio.Event = attrs.Factory(trio.Event)
    _ttfb: float | None = None
    _tokens: int | None = None
    _first_text: float | None = None
    _end: float | None = None
    _line_open: bool = False

    def reset(self) -> None:
        self.last_called, self.called = frozenset(self.called), set()
        self._ttfb = self._tokens = self._first_text = self._end = None
        self.failed = False
        self.error_shown = trio.Event()

    async def settle(self) -> None:
        """After an answer that failed, wait (briefly) until its error message is shown: the
        ``ErrorFrame`` goes upstream while the end of the answer goes downstream."""
        if self.failed:
            with trio.move_on_after(_ERROR_GRACE_SECS):
                await self.error_shown.wait()

    def _newline(self) -> None:
        if self._line_open:
            self.console.print()
            self._line_open = False

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, LLMTextFrame):
            if self._first_text is None:
                self._first_text = trio.current_time()
            self.console.print(
                printable(frame.text), end="", markup=False, highlight=False, soft_wrap=True
            )
            self._line_open = True
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._first_text = None
        elif isinstance(frame, LLMFullResponseEndFrame):
            self._end = trio.current_time()
            self.failed = self.failed or frame.error
        elif isinstance(frame, FunctionCallInProgressFrame):
            self.called.add(frame.function_name)
            self._newline()
            name = printable(frame.function_name)
            args = printable(json.dumps(dict(frame.arguments), ensure_ascii=False))
            self.console.print(f"[cyan]⚙ {escape(name)}({escape(args)})[/]")
        elif isinstance(frame, FunctionCallResultFrame):
            text = printable(json.dumps(frame.result, ensure_ascii=False, default=str))
            style = "red" if frame.error else "cyan"
            self.console.print(f"[{style}]  → {escape(text[:300])}[/]")
        elif isinstance(frame, FunctionCallCancelFrame):
            name, reason = printable(frame.function_name), printable(frame.reason)
            self.console.print(f"[yellow]  ✗ {escape(name)} {escape(reason)}[/]")
        elif isinstance(frame, MetricsFrame):
            for item in frame.data:
                if isinstance(item, TTFBMetricsData):
                    self._ttfb = item.value
                elif isinstance(item, LLMUsageMetricsData):
                    self._tokens = item.value.completion_tokens

    def on_upstream(self, frame: Frame, direction: FrameDirection) -> None:
        if not isinstance(frame, ErrorFrame):
            return
        if frame.source is None or frame.source != self.tools_source:
            self.errors += 1
        self._newline()
        message = printable(frame.error)
        not_found = _not_found_hint(frame.exception, self.endpoint)
        if self.image_pending and self.local and frame.category == ErrorCategory.SERVER:
            message = (
                "the local model server cannot read images (it answered HTTP 500 to the image). "
                "Use a vision model instead: trouper chat --base-url URL --model MODEL."
            )
        elif not_found:
            message = f"{not_found} ({message})"
        elif frame.category == ErrorCategory.CONNECTIVITY and not self.local:
            message = (
                f"cannot reach the model server at {self.endpoint}: is it running, and is "
                f"--base-url right? ({message})"
            )
        self.err.print(f"[red]error:[/] {escape(message)}")
        self.error_shown.set()

    def stats_line(self) -> str:
        parts = []
        if self._ttfb is not None:
            parts.append(f"ttft {self._ttfb * 1000:.0f} ms")
        if self._tokens is not None:
            parts.append(f"{self._tokens} tokens")
            if self._first_text is not None and self._end is not None:
                span = self._end - self._first_text
                if span > 0 and self._tokens > 1:
                    parts.append(f"{(self._tokens - 1) / span:.1f} tok/s")
        return " · ".join(parts)

    def finish_answer(self, *, interrupted: bool = False) -> None:
        self._newline()
        if interrupted:
            self.console.print("[yellow]⏹ interrupted[/]")
        line = self.stats_line()
        if line:
            self.console.print(f"[dim]{line}[/]")
        self.reset()


def _not_found_hint(error: BaseException | None, base_url: str) -> str:
    """For an HTTP 404 that is not about the model (a wrong URL path, the usual cause: a base
    URL without its ``/v1``), what to check; ``""`` otherwise."""
    if not isinstance(error, NotFoundError) or not base_url:
        return ""
    if error.code == "model_not_found" or "model" in error.message.lower():
        return ""  # the server's own message names the model, which is the problem
    url = endpoint_url(base_url, "chat/completions")
    path = urlsplit(base_url).path.rstrip("/")
    if path.endswith("/v1"):
        question = "is --base-url the API root, the URL that /chat/completions is under?"
    else:
        question = f"does the base URL need /v1 ({base_url.rstrip('/')}/v1)?"
    return f"the server has no {url} (HTTP 404): {question}"


def _configure_logs(options: ChatOptions) -> IO[str] | None:
    if options.log_json is not None:
        handle = options.log_json.open("a", encoding="utf-8")
        rlog.configure(json=True, level="debug", file=handle)
        return handle
    rlog.configure(level="info" if options.verbose else "error", file=sys.stderr)
    return None


def _read_image(spec: str) -> tuple[VisionImageRawFrame | None, str]:
    path_text, _, question = spec.strip().partition(" ")
    path = Path(path_text).expanduser()
    if not path.is_file():
        return None, f"no such image file: {path}"
    mime = mimetypes.guess_type(path.name)[0] or ""
    if not mime.startswith("image/"):
        return None, f"{path} does not look like an image (expected .png, .jpg, ...)"
    frame = VisionImageRawFrame(
        path.read_bytes(), (0, 0), mime, question or "What is in this image?"
    )
    return frame, ""


async def _server_model(base_url: str | None, api_key: str | None) -> str | None:
    """The model a configured server serves, when it lists exactly one (llama-server, most
    vLLM deployments); ``None`` when it lists several (OpenAI) or cannot be asked."""
    if not base_url:
        return None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=3.0, follow_redirects=False) as client:
            response = await client.get(endpoint_url(base_url, "models"), headers=headers)
        data = response.json()["data"] if response.status_code == 200 else []
        ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return ids[0] if len(ids) == 1 else None


async def server_context_size(base_url: str | None, api_key: str | None) -> int | None:
    """The context size per conversation of a llama-server (``GET /props``:
    ``default_generation_settings.n_ctx``, else ``n_ctx``), or ``None`` when the server does
    not say (OpenAI has no ``/props``)."""
    if not base_url:
        return None
    root = base_url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=3.0, follow_redirects=False) as client:
            response = await client.get(endpoint_url(root, "props"), headers=headers)
        if response.status_code != 200:
            return None
        props = response.json()
        settings = props.get("default_generation_settings")
        n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
        if n_ctx is None:
            n_ctx = props.get("n_ctx")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx > 0:
        return n_ctx
    return None


async def context_window_for(
    options: ChatOptions, base_url: str | None, api_key: str | None, *, local: bool
) -> ContextWindow | None:
    """The chat's context window: ``--context-window`` (``auto``: on the local model, the
    context per conversation its llama-server reports, else 2,048 tokens; with a server of
    your own, none: its context size is not known), with the answer's ``--max-tokens``
    reserved when given."""
    setting = options.context_window
    if setting == "off" or (setting == "auto" and not local):
        return None
    if setting == "auto":
        tokens = await server_context_size(base_url, api_key) or LOCAL_CONTEXT_TOKENS
    else:
        tokens = int(setting)
    reserve = None
    if options.max_tokens is not None and options.max_tokens < tokens // 2:
        reserve = options.max_tokens
    return ContextWindow(
        tokens, strategy="summarize" if options.summarize else "drop", reserve=reserve
    )


async def run_chat(options: ChatOptions, *, console: Console | None = None) -> int:
    """Run the chat; returns the exit code (0, or 1 when an answer failed in prompt mode)."""
    # soft_wrap: long lines are left to the terminal; never broken at 80 columns in a pipe.
    out = console or Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    log_handle = _configure_logs(options)
    try:
        return await _chat(options, out, err)
    finally:
        if log_handle is not None:
            log_handle.close()


async def _chat(options: ChatOptions, out: Console, err: Console) -> int:
    base_url = options.base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = options.api_key or os.environ.get("OPENAI_API_KEY")
    remote = bool(options.base_url or options.api_key or base_url or api_key)
    if api_key:
        try:
            check_api_key(api_key, "--api-key" if options.api_key else "$OPENAI_API_KEY")
        except InvalidParameterError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            return 2
    async with AsyncExitStack() as stack:
        if remote:
            model = (
                options.model
                or os.environ.get("OPENAI_MODEL")
                or await _server_model(base_url, api_key)
                or FALLBACK_MODEL
            )
        else:
            from ..local import LocalModelError, open_local_server

            err.print("[dim]Starting the local model (llama-server)...[/]")
            try:
                server = await stack.enter_async_context(open_local_server(console=err))
            except LocalModelError as exc:
                err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
                return 2
            base_url, api_key = server.base_url, "no-key"
            model = options.model or server.model
        params = OpenAILLMService.InputParams(
            temperature=(
                options.temperature
                if options.temperature is not None or remote
                else LOCAL_DEFAULT_TEMPERATURE
            ),
            max_tokens=options.max_tokens,
        )
        window = await context_window_for(options, base_url, api_key, local=not remote)
        llm = OpenAILLMService(
            model=model,
            base_url=base_url,
            api_key=api_key,
            params=params,
            context_window=window,
        )
        # The embedded model gets only the tools a line is about (see actors.cli._offer).
        offer = ToolOffer(
            BUILTIN_TOOLS if options.tools else (),
            every_line=options.all_tools or model != DEFAULT_MODEL.name,
        )
        for tool in offer.tools:
            llm.register_function(tool.schema.name, tool.handler)
        storage: ConversationStorage | None = None
        spec = ""
        if options.conversation is not None:
            try:
                spec = store_spec(options.store)
                storage = await stack.enter_async_context(open_store(spec))
                problem = await _check_conversation(storage, options.conversation)
            except (OSError, ValueError, StorageError) as exc:
                problem = str(exc)
            if problem is not None:
                err.print(f"[red]error:[/] {escape(printable(problem))}", soft_wrap=True)
                return 2
        # A stored conversation's messages replace these when the session starts (the tools
        # stay these).
        context = OpenAILLMContext(
            messages=[{"role": "system", "content": options.system}],
            tools=offer.schema(offer.offered),
        )
        pair = llm.create_context_aggregator(
            context,
            storage=storage,
            conversation_id=options.conversation,
            lease_ttl=options.lease_ttl,
        )
        # llm.base_url: the API root with any credentials in it masked.
        view = _View(
            out, err, local=not remote, endpoint=llm.base_url, tools_source=llm.executor.name
        )
        transport = TextTransport(on_output=view.on_frame)
        task = PipelineTask(
            Pipeline([transport.input(), pair.user(), llm, transport.output(), pair.assistant()]),
            PipelineParams(enable_metrics=True, enable_usage_metrics=True),
            name="chat",
            on_upstream=view.on_upstream,
        )
        label = "local model" if not remote else llm.base_url if base_url else "OpenAI"
        prompt_failed: bool | None = None
        async with task:
            await pair.store.wait_opened()
            writer = pair.store.writer
            if writer is not None and writer.stopped is not None:
                return 2  # not opened: the store's error is on the screen already
            if writer is not None and writer.resumed:
                err.print(
                    f"[dim]Continuing conversation {escape(printable(writer.conversation_id))} "
                    f"({len(context)} messages) from {escape(store_label(spec))}[/]"
                )
            if options.prompt is not None:
                await _send_line(transport, offer, view, options.prompt)
                await transport.wait_answer()
                failed = view.failed
                await view.settle()
                view.finish_answer()
                prompt_failed = failed
            else:
                out.print(
                    f"[dim]trouper chat · {escape(printable(model))} on "
                    f"{escape(printable(label))}{_window_label(window)} · Ctrl-C interrupts an "
                    "answer, Ctrl-D or "
                    "Ctrl-C at the prompt leaves · "
                    f"{escape('/image PATH [question]')} sends an image[/]"
                )
                await _repl(out, transport, task, view, offer)
        # After the task ended: an error reported while it drained (the answer's write to
        # the conversation store, say) counts too.
        if prompt_failed is not None:
            return 1 if prompt_failed or view.errors > 0 else 0
    return 0


def _window_label(window: ContextWindow | None) -> str:
    if window is None:
        return ""
    summary = ", summarized" if window.strategy == "summarize" else ""
    return f" · context window {window.max_tokens:,} tokens{summary}"


async def _check_conversation(storage: ConversationStorage, conversation_id: str) -> str | None:
    """Why ``conversation_id`` cannot be continued (another session holds it, or what is
    stored is not readable), or ``None``."""
    try:
        info = await storage.info(conversation_id)
        if info is not None and info.lease_owner is not None:
            raise LeaseHeldError(conversation_id, info.lease_owner, info.lease_expires_in or 0.0)
        await storage.load(conversation_id)
    except LeaseHeldError as exc:
        return held_message(exc.conversation_id, exc.holder, exc.expires_in)
    except (StorageError, ValueError) as exc:
        return str(exc)
    return None


async def _send_line(transport: TextTransport, offer: ToolOffer, view: _View, text: str) -> None:
    """Send a line of the user's, with the tools offered for it."""
    change = offer.change_for(text, view.last_called)
    if change is not None:
        await transport.input().push_frame(change)
    await transport.send_text(text)


async def _repl(
    out: Console, transport: TextTransport, task: PipelineTask, view: _View, offer: ToolOffer
) -> None:
    answering = False

    async def read_line() -> str | None:
        def blocking() -> str | None:
            try:
                return input("> ")
            except EOFError:
                return None

        return await trio.to_thread.run_sync(blocking, abandon_on_cancel=True)

    with PromptHistory() as history, trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def conversation() -> None:
                nonlocal answering
                while True:
                    line = await read_line()
                    if line is None:
                        out.print()
                        break
                    history.add(line)
                    text = line.strip()
                    if not text:
                        continue
                    if text in ("/quit", "/exit"):
                        break
                    answering = True
                    view.image_pending = False
                    if text.startswith("/image"):
                        frame, problem = _read_image(text[len("/image") :])
                        if frame is None:
                            out.print(f"[red]{escape(problem)}[/]")
                            answering = False
                            continue
                        view.image_pending = True
                        transport._answer_done = trio.Event()
                        await transport.input().push_frame(frame)
                    else:
                        await _send_line(transport, offer, view, text)
                    await transport.wait_answer()
                    answering = False
                    await view.settle()
                    view.finish_answer()
                done.set()
                nursery.cancel_scope.cancel()

            async def on_signals() -> None:
                async for _ in signals:
                    if answering:
                        task.interrupt("user pressed Ctrl-C")
                        transport.interrupted()
                        view._line_open = True
                        view._newline()
                        out.print("[yellow]⏹ interrupted[/]")
                    else:
                        out.print()
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(conversation)
            nursery.start_soon(on_signals)


def _parse_float(value: Any) -> float | None:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    return number
