"""trouper's command line: ``trouper chat``, ``trouper conversations ...`` (the stored
conversations) and ``trouper model ...`` (the local model)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

from actors import __version__
from actors._storage import DEFAULT_LEASE_TTL
from actors.local import BASELINES

from ._model_cmd import (
    BuildOptions,
    PullOptions,
    ServeOptions,
    model_build,
    model_doctor,
    model_pull,
    model_serve,
)
from ._output import redacted_output

__all__ = ["build_parser", "main"]

_CHAT_EXIT_CODES = """\
exit status (with --prompt or a prompt on stdin):
  0    the answer was printed, also when a tool call failed on the way (an
       unknown function, a handler that raised: the model is told, and answers)
  1    the answer failed: the model server answered an error or could not be
       reached, or another stage reported an error (the conversation database)
  2    usage or set-up error: bad arguments, an unusable API key, an empty
       stdin, a conversation database that cannot be opened, a local model
       that cannot start
  130  interrupted (Ctrl-C)
an interactive chat exits with 0 (also when left with Ctrl-C at the prompt),
2 or 130."""
"""The exit status of ``trouper chat``, as ``trouper chat --help`` shows it."""


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a TCP port (0-65535)")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"temperature must be between 0 and 2, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.01 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"must be between 0.01 and 86400 seconds, got {text}")
    return value


def _context_window(text: str) -> int | str:
    value = text.strip().lower()
    if value in ("auto", "off"):
        return value
    try:
        tokens = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of tokens, 'auto' or 'off'"
        ) from None
    if tokens < 256:
        raise argparse.ArgumentTypeError(f"must be at least 256 tokens, got {text}")
    return tokens


#: The ``--store`` option of every command that reaches the conversation store.
_STORE: dict[str, Any] = {
    "dest": "store",
    "metavar": "PATH|URL",
    "help": "where conversations are kept: an SQLite file (default: "
    "$XDG_DATA_HOME/trouper/conversations.db, ~/.local/share/... without it) or a Redis "
    "server, redis://host:port/db",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``trouper`` command."""
    parser = argparse.ArgumentParser(
        prog="trouper", description="LLM conversation pipelines as actors on trio."
    )
    parser.add_argument(
        "--version", action="version", version=f"trouper {__version__}", help="print the version"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chat = commands.add_parser(
        "chat",
        help="talk to a model (the embedded local model unless a server is configured)",
        description=(
            "Chat with streaming, tools and interruption. Backend: --base-url, --api-key,\n"
            "--model or OPENAI_BASE_URL, OPENAI_API_KEY; with none of them, the embedded\n"
            "local model (pulled and started automatically). At the prompt: line editing\n"
            "and history, kept in $XDG_DATA_HOME/trouper/chat_history (a line that holds a\n"
            "key or a token, or that starts with a space, is not kept)."
        ),
        epilog=_CHAT_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    chat.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://host:8080/v1")
    chat.add_argument("--api-key", help="API key (default: $OPENAI_API_KEY)")
    chat.add_argument("--model", help="model name (default: the server's / gpt-4o-mini)")
    chat.add_argument("--system", default=None, help="system prompt")
    chat.add_argument(
        "--temperature",
        type=_temperature,
        help="sampling temperature, 0 to 2 (default: 0.2 on the local model, else the server's)",
    )
    chat.add_argument("--max-tokens", type=_positive_int, help="answer length limit, in tokens")
    chat.add_argument(
        "--prompt",
        metavar="TEXT",
        help="answer this one prompt and exit (stdin that is not a terminal too)",
    )
    chat.add_argument(
        "--conversation",
        metavar="NAME",
        help="keep this conversation in the conversation store and continue it if it is "
        "there (its stored system prompt wins over --system)",
    )
    chat.add_argument("--store", "--db", **_STORE)
    chat.add_argument(
        "--lease-ttl",
        type=_seconds,
        default=DEFAULT_LEASE_TTL,
        metavar="SECONDS",
        help="how long the conversation stays reserved for this chat if it dies without "
        f"releasing it (renewed while it runs; default {DEFAULT_LEASE_TTL:g})",
    )
    chat.add_argument(
        "--context-window",
        type=_context_window,
        default="auto",
        metavar="TOKENS|auto|off",
        help="the most tokens a request holds: the oldest turns are left out of the requests "
        "(the conversation keeps them). auto (the default): on the local model, its context "
        "per conversation (2048 tokens); with --base-url, off",
    )
    chat.add_argument(
        "--summarize",
        action="store_true",
        help="send a summary of the turns left out of the requests, made by the model "
        "(one extra request each time turns are left out)",
    )
    chat.add_argument("--no-tools", action="store_true", help="offer no tools to the model")
    chat.add_argument(
        "--all-tools",
        action="store_true",
        help="offer every tool with every line (on the embedded model, by default, only the "
        "tools a line is about: time, arithmetic, units)",
    )
    chat.add_argument("--list-tools", action="store_true", help="list the built-in tools and exit")
    chat.add_argument(
        "--log-json",
        type=Path,
        metavar="FILE",
        help="append every actor's structured logs to FILE, as JSON lines",
    )
    chat.add_argument("-v", "--verbose", action="store_true", help="show the logs on stderr")
    conversations = commands.add_parser(
        "conversations",
        help="list, show or delete the conversations kept by chat --conversation",
        description="The conversations kept by `trouper chat --conversation NAME`.",
    )
    actions = conversations.add_subparsers(
        dest="conversations_command", required=True, metavar="ACTION"
    )
    listing = actions.add_parser(
        "list", help="one line per conversation: id, version, updated, messages, lease"
    )
    listing.add_argument("--store", **_STORE)
    show = actions.add_parser("show", help="print a conversation's messages")
    show.add_argument("name", metavar="NAME")
    show.add_argument("--store", **_STORE)
    delete = actions.add_parser(
        "delete", help="forget a conversation (refused while a chat holds it)"
    )
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--store", **_STORE)

    worker = commands.add_parser(
        "worker",
        help="serve conversations as a worker of a cluster on Redis (docs/scale-out.md)",
        description="Host the conversations the cluster places on this process, built by "
        "the pipeline factory MODULE:FACTORY (called with an actors.cluster.HostedConversation, "
        "it returns a PipelineTask). Stops gracefully on SIGTERM or Ctrl-C.",
    )
    worker.add_argument("--redis", required=True, metavar="URL", help="the cluster's Redis")
    worker.add_argument(
        "--pipeline", required=True, metavar="MODULE:FACTORY", help="the conversation factory"
    )
    worker.add_argument(
        "--storage", metavar="URL", help="where conversations are stored (default: --redis)"
    )
    worker.add_argument("--prefix", default="trouper:cluster:", help="the cluster's key prefix")
    worker.add_argument(
        "--storage-prefix", default="trouper:", help="the conversation storage's key prefix"
    )
    worker.add_argument(
        "--lease-ttl",
        type=float,
        default=10.0,
        metavar="SECS",
        help="how long a dead worker's conversations wait before moving (default 10)",
    )
    worker.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECS",
        help="stop a conversation idle this long (default 300; it stays in storage)",
    )
    worker.add_argument(
        "--gc-young",
        type=int,
        default=None,
        metavar="N",
        help="the garbage collector's youngest threshold for this process (default: "
        "runtime.tune_gc's, for fewer full collections with many conversations; 0: Python's "
        "own)",
    )
    worker.add_argument("--log-json", action="store_true", help="log JSON lines on stderr")
    worker.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    cluster = commands.add_parser("cluster", help="show a cluster of workers on Redis")
    cluster_commands = cluster.add_subparsers(
        dest="cluster_command", required=True, metavar="ACTION"
    )
    status = cluster_commands.add_parser(
        "status", help="the live workers, their load and the conversations they own"
    )
    status.add_argument("--redis", required=True, metavar="URL", help="the cluster's Redis")
    status.add_argument("--prefix", default="trouper:cluster:", help="the cluster's key prefix")
    status.add_argument("--json", action="store_true", help="print JSON")

    model = commands.add_parser("model", help="manage and serve the embedded local model")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    pull = model_commands.add_parser(
        "pull", help="download and verify the local model (~490 MB; no-op when cached)"
    )
    pull.add_argument("--force", action="store_true", help="download again even if cached")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    for name, text in (
        ("build", "build llama-server for this machine's CPU baseline (no-op when up to date)"),
        ("rebuild", "build llama-server again, in place (the fix for a server that crashes)"),
    ):
        build = model_commands.add_parser(name, help=text)
        build.add_argument(
            "--baseline",
            choices=[b.name for b in BASELINES],
            help="CPU baseline to build for (default: the highest this machine runs)",
        )
        build.add_argument(
            "--no-check", action="store_true", help="skip the self-check after the build"
        )
        build.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    doctor = model_commands.add_parser(
        "doctor",
        help="check llama-server, its build, this CPU, the model and a one-token smoke run",
    )
    doctor.add_argument("--model", type=Path, help="check this GGUF file instead")
    doctor.add_argument(
        "--no-smoke", action="store_true", help="do not start the server for a smoke run"
    )

    serve = model_commands.add_parser(
        "serve", help="run llama-server on the local model in the foreground until Ctrl-C"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=_port, default=8080, help="TCP port (default 8080; 0 picks a free one)"
    )
    serve.add_argument("--model", type=Path, help="serve this GGUF file instead")
    serve.add_argument(
        "-v", "--verbose", action="store_true", help="show llama-server's output here"
    )
    return parser


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)  # whatever sys.stderr is at the time


def _configure_logging() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=_stderr_logger,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trouper`` command; returns the exit code.

    Everything written to stdout and stderr meanwhile is redacted
    (:func:`actors.client.redaction.redact`): no secret the process knows is shown.
    """
    with redacted_output():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "chat":
        return _chat(args)
    if args.command == "conversations":
        from ._conversations import ConversationsOptions, conversations_main

        return conversations_main(
            ConversationsOptions(
                args.conversations_command, getattr(args, "name", None), args.store
            )
        )
    if args.command == "worker":
        from ._cluster import WorkerOptions, run_worker

        return run_worker(
            WorkerOptions(
                redis=args.redis,
                pipeline=args.pipeline,
                storage=args.storage,
                prefix=args.prefix,
                storage_prefix=args.storage_prefix,
                lease_ttl=args.lease_ttl,
                idle_timeout=args.idle_timeout,
                log_json=args.log_json,
                log_level=args.log_level,
                gc_young=args.gc_young,
            )
        )
    if args.command == "cluster":
        from ._cluster import run_status

        return run_status(args.redis, args.prefix, as_json=args.json)
    _configure_logging()
    if args.command == "model" and args.model_command == "pull":
        return model_pull(PullOptions(force=args.force, quiet=args.quiet))
    if args.command == "model" and args.model_command in ("build", "rebuild"):
        return model_build(
            BuildOptions(
                force=args.model_command == "rebuild",
                baseline=args.baseline,
                check=not args.no_check,
                quiet=args.quiet,
            )
        )
    if args.command == "model" and args.model_command == "doctor":
        return model_doctor(args.model, smoke=not args.no_smoke)
    if args.command == "model" and args.model_command == "serve":
        return model_serve(
            ServeOptions(
                host=args.host,
                port=args.port or None,
                model=args.model,
                verbose=args.verbose,
            )
        )
    raise AssertionError(f"unhandled command {args}")  # argparse rejects anything else


def _chat(args: argparse.Namespace) -> int:
    from ._chat import DEFAULT_SYSTEM, ChatOptions, list_tools, run_chat

    if args.list_tools:
        return list_tools()
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
        if not prompt:
            print("trouper chat: stdin is not a terminal and holds no prompt", file=sys.stderr)
            return 2
    if args.store is not None and args.conversation is None:
        print("trouper chat: --store needs --conversation NAME", file=sys.stderr)
        return 2
    options = ChatOptions(
        conversation=args.conversation,
        store=args.store,
        lease_ttl=args.lease_ttl,
        base_url=args.base_url,
        api_key=args.api_key,
        model=args.model,
        system=args.system or DEFAULT_SYSTEM,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        context_window=args.context_window,
        summarize=args.summarize,
        prompt=prompt,
        tools=not args.no_tools,
        all_tools=args.all_tools,
        log_json=args.log_json,
        verbose=args.verbose,
    )
    try:
        return trio.run(run_chat, options)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the line the terminal's "^C" is on
        return 130
