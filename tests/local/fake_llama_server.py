"""A stand-in for llama-server in unit tests: serves ``/health`` on ``--host``/``--port``.

Its behaviour is picked by the ``FAKE_LLAMA_MODE`` environment variable:
``ok`` (default), ``exit`` (fails at once), ``never_ready`` (``/health`` stays 503),
``ignore_term`` (ignores SIGTERM), ``bind_fail`` (reports the port taken and exits).
It writes its pid to ``FAKE_LLAMA_PIDFILE`` when that is set.
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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

    def log_message(self, format: str, *args: object) -> None:
        print("request:", format % args, flush=True)


def main() -> int:
    """Parse the llama-server options the tests use and behave as ``FAKE_LLAMA_MODE`` says."""
    args = sys.argv[1:]
    host = args[args.index("--host") + 1]
    port = int(args[args.index("--port") + 1])
    mode = os.environ.get("FAKE_LLAMA_MODE", "ok")
    pidfile = os.environ.get("FAKE_LLAMA_PIDFILE")
    if pidfile:
        with open(pidfile, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    print(f"fake llama-server starting: {' '.join(args)}", flush=True)
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
