"""A stand-in for llama-server in unit tests: serves ``/health`` on ``--host``/``--port``.

Its behaviour is picked by the ``FAKE_LLAMA_MODE`` environment variable:
``ok`` (default), ``exit`` (fails at once with code 3), ``exit1`` (an error message, code 1),
``sigill`` / ``sigsegv`` (dies by that signal while starting, as a build for the wrong CPU
does), ``sigill_on_completion`` (healthy, then dies by SIGILL at its first completion),
``bad_completion`` (completions answer HTTP 500), ``never_ready`` (``/health`` stays 503),
``ignore_term`` (ignores SIGTERM), ``bind_fail`` (reports the port taken and exits).
Like llama-server it prints a ``system_info`` line (``FAKE_LLAMA_SYSTEM_INFO`` replaces its CPU
part). It writes its pid to ``FAKE_LLAMA_PIDFILE`` when that is set.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NoReturn


class Handler(BaseHTTPRequestHandler):
    """Answers ``/health`` (200, or 503 in ``never_ready`` mode) and ``/v1/models``."""

    def do_GET(self) -> None:
        mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
        if self.path == "/health":
            code = 503 if mode == "never_ready" else 200
            body = b'{"status":"ok"}' if code == 200 else b'{"status":"loading"}'
        elif self.path == "/v1/models":
            code, body = 200, b'{"data":[{"id":"fake"}]}'
        else:
            code, body = 404, b"{}"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if self.path == "/v1/completions" and mode == "sigill_on_completion":
            die_by(signal.SIGILL)
        if self.path != "/v1/completions":
            code, body = 404, b"{}"
        elif mode == "bad_completion":
            code, body = 500, b'{"error":{"code":500,"message":"compute failed"}}'
        else:
            answer = {"object": "text_completion", "choices": [{"index": 0, "text": "Hello"}]}
            code, body = 200, json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        print("request:", format % args, flush=True)


def die_by(signum: signal.Signals) -> NoReturn:
    """End this process by ``signum``, as a crashing native server would (no core file).

    The signal goes to the calling thread (``pthread_kill``), so it is delivered before this
    thread runs another line: ``os.kill`` would let a handler thread go on and answer its
    request while the kernel picked another thread to die in (a loaded machine showed it).
    """
    sys.stdout.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.pthread_kill(threading.get_ident(), signum)  # main() left it at its default action
    while True:  # never reached: the default action ends the whole process
        time.sleep(1)


DEFAULT_CPU = (
    "SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | OPENMP = 1"
)


def main() -> int:
    """Parse the llama-server options the tests use and behave as ``FAKE_LLAMA_MODE`` says."""
    args = sys.argv[1:]
    host = args[args.index("--host") + 1]
    port = int(args[args.index("--port") + 1])
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    for crash in (signal.SIGILL, signal.SIGSEGV):  # only the main thread may set these
        signal.signal(crash, signal.SIG_DFL)
    pidfile = os.environ.get("FAKE_LLAMA_PIDFILE")
    if pidfile:
        with open(pidfile, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    print(f"fake llama-server starting: {' '.join(args)}", flush=True)
    cpu = os.environ.get("FAKE_LLAMA_SYSTEM_INFO", DEFAULT_CPU)
    print(f"system_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : {cpu} |", flush=True)
    if mode in ("sigill", "sigsegv"):
        print("init: llama threadpool init, n_threads = 2", flush=True)
        die_by(signal.SIGILL if mode == "sigill" else signal.SIGSEGV)
    if mode == "exit1":
        print("error: invalid argument: --no-such-option", file=sys.stderr, flush=True)
        return 1
    if mode == "exit":
        print("error: failed to load model 'nonsense.gguf'", file=sys.stderr, flush=True)
        return 3
    if mode == "bind_fail":
        print(f"couldn't bind HTTP server socket, hostname: {host}, port: {port}", flush=True)
        return 1
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"server is listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
