"""The connection pool a chat client makes for itself when it is given none.

It is made on the client's first request, not with the client: a session that never asks
anything (a server holding a session per connected user, most of them idle) keeps no pool,
and starting thousands of sessions does not build thousands of pools up front (about twenty
objects and 20 µs each, and the collector's passes they set off).
"""

from __future__ import annotations

import os
import ssl
import sys

import httpx

__all__ = ["default_pool"]

#: The TLS context every default pool shares (made with the first one).
_shared_tls: ssl.SSLContext | None = None

#: The variables through which httpx takes a proxy from the environment (``no_proxy`` only
#: matters when one of them is set).
_PROXY_VARIABLES = ("all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy",
                    "HTTPS_PROXY")  # fmt: skip


def default_pool() -> httpx.AsyncClient:
    """A new pool: 100 connections at most, 20 kept alive, no redirects, and one TLS context
    shared by the whole process.

    httpx builds a fresh TLS context per client, loading the CA bundle each time: ~30-60 ms
    of CPU and ~1 MB of RSS per client, which dominated the cost of many concurrent
    sessions. The shared context is built like httpx's default (``verify=True``, honouring
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``), once, when the first pool is made.
    """
    global _shared_tls
    if _shared_tls is None:
        _shared_tls = httpx.create_ssl_context()
    return httpx.AsyncClient(
        verify=_shared_tls,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        follow_redirects=False,
        trust_env=_proxies_possible(),
    )


def _proxies_possible() -> bool:
    """Whether httpx may find a proxy in the environment (``trust_env``).

    With the TLS context given, a proxy is all ``trust_env`` still decides, and finding out
    costs httpx a walk over every environment variable (urllib's ``getproxies``): ~100 µs.
    On Linux the proxies come from the variables alone, so when none is set the walk is
    skipped; elsewhere the system's settings count too, and httpx looks as usual.
    """
    if not sys.platform.startswith("linux"):
        return True
    environ = os.environ
    return any(name in environ for name in _PROXY_VARIABLES)
