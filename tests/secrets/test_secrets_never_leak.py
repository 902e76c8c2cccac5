"""Secrets never leak: one property, checked on every error path and every way text leaves.

For each shape of credential a user can configure (an ``sk-`` key, an ``sk-proj-`` key, a
JWT-like bearer token, an Azure-style ``api-key`` header, user:password in the base URL, a
``?key=`` query parameter, and all of them at once), every error path of the chat client is
driven against a real scripted server on 127.0.0.1 that, like some real servers and proxies,
echoes the credentials it received in the error's ``message``, ``param``, ``code`` and
``x-request-id``:

    401, 403, 404, 429 and 5xx (retried), an error and an ``event: error`` in the middle of a
    stream, a malformed chunk, a dropped connection, a refused connection, and the connect,
    first-token, idle and total timeouts.

Each path runs through the client on its own and through ``OpenAILLMService`` in a pipeline,
with the logs rendered by ``runtime.logging.configure`` as console text and as JSON, and with
the caught exception logged with its traceback the way an application would. Then the real
``trouper chat`` console script runs against the echoing server (``-v`` on stderr, and an
interactive session with ``--log-json``).

No secret -- nor a half of one, which is what a truncated message would leave -- may appear in
any string, repr, exception (the whole ``__cause__``/``__context__`` chain and exception groups:
``str``, ``repr``, ``args``, every attribute, the formatted traceback), ``ErrorFrame`` (its
text, repr and serialized form), log line, or CLI output. Each secret the server echoed must
show as ``[REDACTED]``: masked, not silently dropped.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import attrs
import httpx
import pexpect
import pytest
import structlog
import trio
import trio.testing

from actors import LLMMessagesFrame, OpenAILLMService
from actors.client import (
    APIConnectionError,
    AuthenticationError,
    ChatClientError,
    ChatCompletionsClient,
    ChatRequest,
    ConnectTimeoutError,
    FirstTokenTimeoutError,
    InternalServerError,
    MalformedChunkError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    ServerDisconnectedError,
    StreamError,
    StreamIdleTimeoutError,
    Timeouts,
    TotalTimeoutError,
)
from actors.testing import ChunkFactory, RecordedRequest, Reply, ScriptedOpenAIServer
from runtime import logging as rlog
from runtime.serialization import dumps
from runtime.testing import run_frames

MASK = "[REDACTED]"
F = ChunkFactory()
#: Bound (real seconds) on one run of the console script.
CLI_TIMEOUT = 30.0
#: One TLS context for every client of the test (building one per client costs ~50 ms).
TLS = httpx.create_ssl_context()

# ------------------------------------------------------------------------------ credentials

SK_KEY = "sk-Q7vX2mB9kL4pR8tY1uI6oP3aS5dF0gH2jK9lZ7xC4vB1nM8q"
SK_PROJ_KEY = (
    "sk-proj-Vd3_hT9qL2w-XyZ8mN4bR6kP1sJ7fG0cA5eU2iO9lK3jH8gF6dS4aQ1wE7rT0yU5iP2oL9kJ_zX3cV8bN1m"
    "M6qW4eR7tY0uI3oP5aS2dF8gH1jK4lZ9xC6vB3nM0qW7eR2tY5uI8oP1aS4dF7gH0jK3lZ6xC9vB2nM5qW8eR1tYT3Bl"
)
JWT_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJ0cm91cGVyLXRlc3QiLCJzY29wZSI6ImNoYXQiLCJpYXQiOjE3MDAwMDAwMDB9"
    ".pQ3mK8vX1rT6yB0nW4sD9fH2jL7gA5cE3uI8oZ1xV6b"
)
AZURE_KEY = "9f3c7e1a5b2d4f6081a3c5e7d9b1f2a4"
USER = "trouper-bot"
PASSWORD = "s3cr3t+P@ss:w0rd/Zx9q"
QUERY_KEY = "AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY"


@attrs.frozen
class Shape:
    """One way to configure a credential, and every form of it that must never show."""

    id: str
    api_key: str | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    userinfo: str = ""
    query: str = ""
    secrets: tuple[str, ...] = ()
    #: Whether ``trouper chat`` can be given this credential (it has no option for headers).
    cli: bool = True

    def base_url(self, root: str) -> str:
        """The configured ``base_url`` for an API root ``http://host:port/v1``."""
        url = root.replace("://", f"://{self.userinfo}@", 1) if self.userinfo else root
        return f"{url}?{self.query}" if self.query else url

    def cli_args(self, root: str) -> list[str]:
        key = ["--api-key", self.api_key] if self.api_key else []
        return ["--base-url", self.base_url(root), *key, "--model", "m"]

    def needles(self) -> dict[str, str]:
        """Each secret, and each half of it that is long enough to identify it."""
        found: dict[str, str] = {}
        for number, secret in enumerate(self.secrets):
            found[f"secret #{number}"] = secret
            half = len(secret) // 2
            if half >= 8:
                found[f"first half of secret #{number}"] = secret[:half]
                found[f"last half of secret #{number}"] = secret[half:]
        return found


_BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

SHAPES = [
    Shape("sk", api_key=SK_KEY, secrets=(SK_KEY,)),
    Shape("sk-proj", api_key=SK_PROJ_KEY, secrets=(SK_PROJ_KEY,)),
    Shape("jwt-bearer", api_key=JWT_TOKEN, secrets=(JWT_TOKEN,)),
    Shape("api-key-header", headers={"api-key": AZURE_KEY}, secrets=(AZURE_KEY,), cli=False),
    Shape(
        "url-userinfo",
        userinfo=f"{USER}:{quote(PASSWORD, safe='')}",
        secrets=(PASSWORD, quote(PASSWORD, safe=""), f"{USER}:{PASSWORD}", _BASIC),
    ),
    Shape("query-key", query=f"key={QUERY_KEY}", secrets=(QUERY_KEY,)),
    Shape(
        "all-at-once",
        api_key=SK_KEY,
        userinfo=f"{USER}:{quote(PASSWORD, safe='')}",
        query=f"key={QUERY_KEY}&api-version=2024-06-01",
        secrets=(
            SK_KEY,
            PASSWORD,
            quote(PASSWORD, safe=""),
            f"{USER}:{PASSWORD}",
            _BASIC,
            QUERY_KEY,
        ),
    ),
]

# ------------------------------------------------------------------------------ the echoing server


@attrs.frozen
class Echo:
    """What the server received that identifies the caller: ``token`` the bare credential,
    ``everything`` each credential-bearing thing it saw (headers, decoded Basic credentials,
    the request target with its query)."""

    token: str
    everything: str


def echo_of(request: RecordedRequest) -> Echo:
    seen: list[str] = []
    token = ""
    auth = request.headers.get("authorization", "")
    if auth:
        seen.append(f"Authorization: {auth}")
        scheme, _, credential = auth.partition(" ")
        token = credential
        if scheme.lower() == "basic":
            token = base64.b64decode(credential).decode()
            seen.append(f"user {token}")
    for name in ("api-key", "x-api-key"):
        if name in request.headers:
            token = token or request.headers[name]
            seen.append(f"{name}: {request.headers[name]}")
    for values in parse_qs(urlsplit(request.path).query).values():
        token = token or values[0]
    seen.append(f"target {request.path}")
    assert token, f"the server received no credential: {request.headers}"
    return Echo(token=token, everything="; ".join(seen))


Builder = Callable[[Echo], Reply]


def status(code: int, *, echo_request_id: bool = False, **extra: Any) -> Builder:
    """An OpenAI-style error that names what it received, as some servers and proxies do
    (in ``x-request-id`` too with ``echo_request_id``)."""

    def build(echo: Echo) -> Reply:
        if echo_request_id:
            extra["request_id"] = echo.token
        return Reply.error(
            code,
            f"Incorrect API key provided: {echo.everything}",
            param=echo.token,
            code=echo.token,
            **extra,
        )

    return build


def long_status(echo: Echo) -> Reply:
    """A 401 whose message the client's 300-character limit cuts three quarters into the
    key: without care, the first half of the key survives the cut, unrecognisable."""
    kept = len(echo.token) * 3 // 4
    return Reply.error(401, "x" * (299 - kept) + echo.token, param=echo.token)


def mid_stream(echo: Echo) -> Reply:
    error = F.error(f"upstream rejected {echo.everything}", param=echo.token, code=echo.token)
    return Reply.sse([F.role(), F.text("partial"), error], done=False)


def error_event(echo: Echo) -> Reply:
    payload = {"error": {"message": f"denied {echo.everything}", "param": echo.token}}
    return Reply.raw(f"event: error\ndata: {json.dumps(payload)}\n\n".encode())


def malformed(echo: Echo) -> Reply:
    return Reply.sse([F.role(), f"data: {{oops {echo.everything}\n\n"], done=False)


def cut(echo: Echo) -> Reply:
    del echo
    return Reply.sse([F.role(), F.text("partial")], done=False, ending="disconnect")


def dropped(echo: Echo) -> Reply:
    del echo
    return Reply.drop()


def no_first_token(echo: Echo) -> Reply:
    del echo
    return Reply.stall(before_headers=False)


def goes_idle(echo: Echo) -> Reply:
    del echo
    return Reply.sse([F.role(), F.text("partial")], done=False, ending="stall")


def slow(echo: Echo) -> Reply:
    del echo
    return Reply.sse(F.text_stream([f"t{i} " for i in range(30)]), delay=1.0)


def answer(echo: Echo) -> Reply:
    del echo
    return Reply.sse(F.text_stream(["fine"]))


@attrs.define
class Script:
    """The server's responder: the builders of the current path, in order (the last one
    repeats), each given what the request carried."""

    builders: list[Builder] = attrs.Factory(list)
    served: int = 0

    def load(self, *builders: Builder) -> None:
        self.builders, self.served = list(builders), 0

    def __call__(self, request: RecordedRequest) -> Reply:
        builder = self.builders[min(self.served, len(self.builders) - 1)]
        self.served += 1
        return builder(echo_of(request))


# ------------------------------------------------------------------------------ the error paths


TIMEOUTS = Timeouts(connect=2.0, first_token=3.0, idle=2.0)
ONE_RETRY = RetryPolicy(max_retries=1, initial_delay=0.5)


@attrs.frozen
class ErrorPath:
    """One error path: where the client connects, what the server answers, what must come
    out."""

    name: str
    error: type[ChatClientError] | None
    replies: tuple[Builder, ...] = ()
    target: str = "server"  # or "refused", "backlog" (a listener that never accepts)
    timeouts: Timeouts = TIMEOUTS
    retry: RetryPolicy = ONE_RETRY
    echoed: bool = True


PATHS = [
    ErrorPath("401", AuthenticationError, (status(401),)),
    ErrorPath("403", PermissionDeniedError, (status(403),)),
    ErrorPath("404", NotFoundError, (status(404, echo_request_id=True),)),
    ErrorPath("401 cut mid-key", AuthenticationError, (long_status,)),
    ErrorPath("429 retried", RateLimitError, (status(429, retry_after_ms=5),)),
    ErrorPath("500 retried", InternalServerError, (status(500), status(503))),
    ErrorPath("503 retried then answered", None, (status(503, retry_after_ms=5), answer)),
    ErrorPath("error mid-stream", StreamError, (mid_stream,)),
    ErrorPath("event: error", StreamError, (error_event,)),
    ErrorPath("malformed chunk", MalformedChunkError, (malformed,)),
    ErrorPath("cut mid-stream", ServerDisconnectedError, (cut,), echoed=False),
    ErrorPath("dropped connection", APIConnectionError, (dropped,), echoed=False),
    ErrorPath("connection refused", APIConnectionError, target="refused", echoed=False),
    ErrorPath("connect timeout", ConnectTimeoutError, target="backlog", echoed=False),
    ErrorPath("first-token timeout", FirstTokenTimeoutError, (no_first_token,), echoed=False),
    ErrorPath("idle timeout", StreamIdleTimeoutError, (goes_idle,), echoed=False),
    ErrorPath(
        "total timeout",
        TotalTimeoutError,
        (slow,),
        timeouts=attrs.evolve(TIMEOUTS, total=5.0),
        echoed=False,
    ),
]

# ------------------------------------------------------------------------------ the leak detector


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes and contexts, and the members of exception groups, once each."""
    todo, seen = [error], set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
        if isinstance(current, BaseExceptionGroup):
            todo += list(current.exceptions)


@attrs.define
class Leaks:
    """Looks for every needle in every text it is shown; remembers where one was found."""

    needles: dict[str, str]
    found: list[str] = attrs.Factory(list)
    texts: int = 0

    def check(self, where: str, value: object) -> None:
        self.texts += 1
        for text in {value if isinstance(value, str) else repr(value), str(value)}:
            for label, needle in self.needles.items():
                at = text.find(needle)
                if at >= 0:
                    excerpt = text[max(0, at - 80) : at + len(needle) + 20]
                    self.found.append(f"{where}: {label} in ...{excerpt}...")

    def check_exception(self, where: str, error: BaseException) -> None:
        for depth, item in enumerate(exception_chain(error)):
            here = f"{where}, chain[{depth}] {type(item).__name__}"
            self.check(f"{here} str", str(item))
            self.check(f"{here} repr", repr(item))
            self.check(f"{here} args", item.args)
            self.check(f"{here} notes", getattr(item, "__notes__", ()))
            for name, value in vars(item).items():
                self.check(f"{here}.{name}", value)
        self.check(f"{where} traceback", "".join(traceback.format_exception(error)))

    def assert_clean(self) -> None:
        assert self.texts > 0
        unique = list(dict.fromkeys(self.found))
        assert not unique, f"{len(unique)} leaks:\n" + "\n".join(unique[:40])


# ------------------------------------------------------------------------------ driving


@attrs.define
class Targets:
    """Where a path's client connects: the echoing server, a refused port, a full backlog."""

    server: ScriptedOpenAIServer
    refused_port: int
    backlog_port: int

    def root(self, path: ErrorPath) -> str:
        if path.target == "refused":
            return f"http://127.0.0.1:{self.refused_port}/v1"
        if path.target == "backlog":
            return f"http://127.0.0.1:{self.backlog_port}/v1"
        return self.server.base_url


def request() -> ChatRequest:
    return ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}])


async def failure_of(client: ChatCompletionsClient) -> ChatClientError | None:
    """Stream one answer to its end; the client's error, if any. (The traceback of the error
    holds this frame, so its locals hold nothing but the client.)"""
    try:
        async with client.stream(request()) as stream:
            async for _ in stream:
                pass
    except ChatClientError as error:
        return error
    return None


async def drive_client(shape: Shape, path: ErrorPath, url: str, leaks: Leaks) -> None:
    where = f"[{path.name}] client"
    async with (
        httpx.AsyncClient(verify=TLS) as http,  # a pool of its own, without loading the CAs
        ChatCompletionsClient(
            shape.api_key,
            base_url=url,
            default_headers=shape.headers,
            timeouts=path.timeouts,
            retry=path.retry,
            http_client=http,
        ) as client,
    ):
        for name, value in [("repr", repr(client)), ("str", str(client))]:
            leaks.check(f"{where} {name}", value)
        leaks.check(f"{where}.base_url", client.base_url)
        leaks.check(f"{where}.url", client.url)
        leaks.check(f"{where} stream repr", repr(client.stream(request())))
        error = await failure_of(client)
    if path.error is None:
        assert error is None, f"{path.name}: {error!r}"
        return
    assert isinstance(error, path.error), f"{path.name}: expected {path.error}, got {error!r}"
    leaks.check_exception(where, error)
    if path.echoed:
        assert MASK in str(error), f"{where}: the echoed secret is not shown as masked: {error}"
    # What an application does with an error it cannot handle: log it with its traceback.
    structlog.get_logger("app").error("chat completion failed", exc_info=error)


async def drive_service(shape: Shape, path: ErrorPath, url: str, leaks: Leaks) -> None:
    where = f"[{path.name}] service"
    llm = OpenAILLMService(
        model="m",
        api_key=shape.api_key,
        base_url=url,
        default_headers=shape.headers,
        timeouts=path.timeouts,
        retry=path.retry,
    )
    leaks.check(f"{where} repr", repr(llm))
    leaks.check(f"{where}.base_url", llm.base_url)
    result = await run_frames([llm], [LLMMessagesFrame([{"role": "user", "content": "hi"}])])
    errors = result.errors
    assert len(errors) == (0 if path.error is None else 1), f"{path.name}: {errors}"
    for frame in errors:
        leaks.check(f"{where} ErrorFrame.error", frame.error)
        leaks.check(f"{where} ErrorFrame repr", repr(frame))
        leaks.check(f"{where} ErrorFrame serialized", dumps(frame))
        assert isinstance(frame.exception, path.error or ChatClientError)
        leaks.check_exception(f"{where} ErrorFrame.exception", frame.exception)
        if path.echoed:
            assert MASK in frame.error, f"{where}: {frame.error}"


@contextmanager
def logs_rendered() -> Iterator[dict[str, io.StringIO]]:
    """Every log line of the block, rendered twice: by the processors that
    ``runtime.logging.configure`` installs for the console, and by those it installs for JSON;
    and httpx's own standard-library log lines (``HTTP Request: POST <url>``, level INFO), as an
    application that shows INFO logs would see them. The previous configurations are restored
    afterwards."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    outputs = {"console": io.StringIO(), "JSON": io.StringIO(), "httpx": io.StringIO()}
    httpx_logger, httpx_handler = (
        logging.getLogger("httpx"),
        logging.StreamHandler(outputs["httpx"]),
    )
    httpx_level = httpx_logger.level
    httpx_logger.setLevel(logging.INFO)
    httpx_logger.addHandler(httpx_handler)
    chains = []
    for renderer, out in outputs.items():
        if renderer == "httpx":
            continue
        rlog.configure(json=renderer == "JSON", level="debug", file=out, colors=False)
        config = structlog.get_config()
        chains.append((list(config["processors"]), config["logger_factory"]()))

    def both(logger: Any, method_name: str, event_dict: Any) -> Any:
        for processors, sink in chains:
            event = dict(event_dict)
            for processor in processors:
                event = processor(sink, method_name, event)
            getattr(sink, method_name)(event)
        raise structlog.DropEvent

    structlog.configure(
        processors=[both],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    try:
        yield outputs
    finally:
        httpx_logger.removeHandler(httpx_handler)
        httpx_logger.setLevel(httpx_level)
        if was_configured:
            structlog.configure(**saved)
        else:
            structlog.reset_defaults()


# ------------------------------------------------------------------------------ the console script


def trouper() -> list[str]:
    script = Path(sys.executable).with_name("trouper")
    return [str(script)] if script.exists() else [sys.executable, "-m", "actors.cli"]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(NO_COLOR="1", COLUMNS="200", LINES="50")
    return env


def run_prompt(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*trouper(), "chat", *args, "--prompt", "hi", "-v"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=CLI_TIMEOUT,
        check=False,
    )


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_interactive(args: list[str]) -> tuple[str, int | None]:
    """An interactive session on a pseudo terminal: banner, one line, its error, Ctrl-D."""
    command = trouper()
    transcript = io.StringIO()
    child = pexpect.spawn(
        command[0],
        [*command[1:], "chat", *args],
        env=cli_env(),
        encoding="utf-8",
        timeout=CLI_TIMEOUT,
        dimensions=(50, 200),
        preexec_fn=_restore_sigint,
    )
    child.logfile_read = transcript
    try:
        child.expect_exact("> ")
        child.sendline("hi")
        child.expect_exact("error:")
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return transcript.getvalue(), child.exitstatus


async def drive_cli(shape: Shape, leaks: Leaks, log_file: Path) -> None:
    prompt_script = Script()
    # Two retried failures, then a dropped connection: the chat says it cannot reach the
    # server, naming the server.
    prompt_script.load(status(429, retry_after_ms=5), status(503, retry_after_ms=5), dropped)
    chat_script = Script()
    chat_script.load(mid_stream)
    async with (
        ScriptedOpenAIServer(responder=prompt_script) as prompt_server,
        ScriptedOpenAIServer(responder=chat_script) as chat_server,
    ):
        results: dict[str, Any] = {}

        async def prompt_mode() -> None:
            run = functools.partial(run_prompt, shape.cli_args(prompt_server.base_url))
            results["prompt"] = await trio.to_thread.run_sync(run)

        async def interactive() -> None:
            args = [*shape.cli_args(chat_server.base_url), "--log-json", str(log_file)]
            run = functools.partial(run_interactive, args)
            results["chat"] = await trio.to_thread.run_sync(run)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(prompt_mode)
            nursery.start_soon(interactive)
        assert len(prompt_server.requests) == 3
        assert len(chat_server.requests) == 1

    prompt = results["prompt"]
    leaks.check("trouper chat --prompt -v: stdout", prompt.stdout)
    leaks.check("trouper chat --prompt -v: stderr", prompt.stderr)
    assert prompt.returncode == 1, prompt.stderr
    assert "error: cannot reach the model server at" in prompt.stderr
    assert MASK in prompt.stderr  # the retried errors' echoes, in the -v log lines

    transcript, status_code = results["chat"]
    leaks.check("trouper chat (interactive): terminal", transcript)
    assert "trouper chat · m on " in transcript
    assert MASK in transcript
    assert status_code == 0, transcript
    logged = await trio.Path(log_file).read_text(encoding="utf-8")
    leaks.check("trouper chat --log-json: file", logged)
    assert MASK in logged


# ------------------------------------------------------------------------------ the test


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
async def test_no_secret_leaks_from_any_error_path(
    shape: Shape, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    leaks = Leaks(shape.needles())
    script = Script()
    refused = trio.socket.socket()
    listener, filler = trio.socket.socket(), trio.socket.socket()
    try:
        await refused.bind(("127.0.0.1", 0))
        refused_port = refused.getsockname()[1]
        refused.close()  # nothing listens there any more
        await listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        backlog_port = listener.getsockname()[1]
        await filler.connect(("127.0.0.1", backlog_port))  # the accept queue is now full
        async with ScriptedOpenAIServer(responder=script) as server:
            targets = Targets(server, refused_port, backlog_port)
            with logs_rendered() as logged:
                for path in PATHS:
                    url = shape.base_url(targets.root(path))
                    for drive in (drive_client, drive_service):
                        script.load(*path.replies)
                        await drive(shape, path, url, leaks)
                        if path.target == "server":
                            assert script.served > 0
            for renderer, out in logged.items():
                lines = out.getvalue()
                leaks.check(f"{renderer} log lines", lines)
                if renderer == "httpx":
                    assert "HTTP Request: POST" in lines
                else:
                    assert MASK in lines
                    assert "Traceback" in lines or '"exc_type"' in lines
    finally:
        filler.close()
        listener.close()
    if shape.cli:
        await drive_cli(shape, leaks, tmp_path / "chat.jsonl")
    leaks.assert_clean()
