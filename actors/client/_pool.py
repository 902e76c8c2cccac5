"""How a chat client sends its requests: through a connection pool it makes for itself, or
through the ``httpx.AsyncClient`` it was given.

The pool is made at the client's first request, not with the client: a session that never
asks anything (a server holding a session per connected user, most of them idle) keeps no
pool, and starting thousands of sessions does not build thousands of pools up front.

A pool of its own is a bare ``httpx.AsyncHTTPTransport``, and requests go straight to it.
``httpx.AsyncClient`` adds layers a chat client does not use (base URL and header merging,
cookies, auth and redirect generators, event hooks, a log line per request): about 0.1 ms to
make one and 0.3 ms per request on a slow CPU, paid by every session's every turn. Where
those layers do something, the client is used as before: a proxy named in the environment,
and credentials in the URL (``https://user:pass@host/v1``, sent as basic auth).
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

import attrs
import httpx

__all__ = ["Sender", "default_pool"]

#: The TLS context every pool of the process shares (made with the first one).
_shared_tls: ssl.SSLContext | None = None

#: The variables through which httpx takes a proxy from the environment (``no_proxy`` only
#: matters when one of them is set).
_PROXY_VARIABLES = ("all_proxy", "ALL_PROXY", "http_proxy", "HTTP_PROXY", "https_proxy",
                    "HTTPS_PROXY")  # fmt: skip

#: A pool's size: 100 connections at most, 20 kept alive.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


def _tls() -> ssl.SSLContext:
    """The shared TLS context, built like httpx's default (``verify=True``, honouring
    ``SSL_CERT_FILE``/``SSL_CERT_DIR``) when the first pool is made.

    httpx builds a fresh TLS context per client, loading the CA bundle each time: ~30-60 ms
    of CPU and ~1 MB of RSS per client, which dominated the cost of many concurrent sessions.
    """
    global _shared_tls
    if _shared_tls is None:
        _shared_tls = httpx.create_ssl_context()
    return _shared_tls


def default_pool() -> httpx.AsyncClient:
    """A new ``httpx.AsyncClient``: the pool's limits, no redirects, the shared TLS context,
    and the environment's proxy if it may name one."""
    return httpx.AsyncClient(
        verify=_tls(), limits=_LIMITS, follow_redirects=False, trust_env=_proxies_possible()
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


@attrs.define(eq=False)
class Sender:
    """A chat client's way to send: the ``httpx.AsyncClient`` it was given, or a pool of its
    own, made at the first request (see the module's docstring).

    Args:
        given: The user's client (not closed by :meth:`aclose`), or ``None``.
        root: A URL the requests go to (credentials in it decide the kind of pool).
    """

    _given: httpx.AsyncClient | None
    _root: str = attrs.field(repr=False)
    _client: httpx.AsyncClient | None = attrs.field(default=None, init=False, repr=False)
    _transport: httpx.AsyncHTTPTransport | None = attrs.field(default=None, init=False, repr=False)
    #: The last URL a request went to, as given and parsed (a chat client sends to one
    #: endpoint).
    _url_text: str = attrs.field(default="", init=False, repr=False)
    _url: httpx.URL | None = attrs.field(default=None, init=False, repr=False)

    def request(
        self,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        timeout: Mapping[str, float | None],
    ) -> httpx.Request:
        """A ``POST`` of ``body`` to ``url`` with ``headers``, and httpx's per-phase
        ``timeout`` (``connect``, ``read``, ``write``, ``pool``)."""
        client = self._given if self._given is not None else self._client
        if client is None and self._transport is None:
            client = self._open()
        if client is not None:
            return client.build_request(
                "POST", url, content=body, headers=headers, timeout=httpx.Timeout(**timeout)
            )
        parsed = self._url
        if parsed is None or url != self._url_text:
            parsed = self._url = httpx.URL(url)
            self._url_text = url
        return httpx.Request(
            "POST", parsed, content=body, headers=headers, extensions={"timeout": dict(timeout)}
        )

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` (made by :meth:`request`); the response's body is not read yet.

        Raises:
            httpx.TransportError: The request could not be sent, or no response came.
        """
        client = self._given if self._given is not None else self._client
        if client is not None:
            return await client.send(request, stream=True)
        assert self._transport is not None  # (made by `request`)
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def aclose(self) -> None:
        """Close the pool this sender made, if any (the given client stays open)."""
        client, transport, self._client, self._transport = self._client, self._transport, None, None
        if client is not None:
            await client.aclose()
        if transport is not None:
            await transport.aclose()

    def _open(self) -> httpx.AsyncClient | None:
        """Make the pool: a bare transport, or a client where its layers are needed."""
        if _proxies_possible() or urlsplit(self._root).username is not None:
            self._client = default_pool()
            return self._client
        self._transport = httpx.AsyncHTTPTransport(verify=_tls(), limits=_LIMITS)
        return None
