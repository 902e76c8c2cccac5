"""Secrets never leak: one redaction, applied wherever text leaves.

A :class:`Redactor` replaces with :data:`REDACTED`:

- the **secrets it was given** (an API key, the value of a credential header, the password of
  a URL, a ``?key=`` value...), in every form they travel in: as given, percent-encoded and
  decoded, without surrounding whitespace, and, for URL credentials, as the ``Basic``
  credential an HTTP client sends for them;
- **secret shapes**, known or not: ``Bearer`` credentials, the value of an ``Authorization``
  or ``api-key`` header written out, URL userinfo (``scheme://user:pass@``), the value of a
  query parameter named like a secret (``?key=``, ``&access_token=``...), and tokens of
  well-known formats (``sk-…``, JWTs ``eyJ….…``, ``AIza…``, ``ghp_…``, ``hf_…``, ``xox…-``,
  ``AKIA…``);
- in structured values, every string under a key named like a secret (``api_key``,
  ``authorization``, ``password``, ``token``...).

Code that holds secrets registers them (:meth:`Redactor.register`) for as long as it lives.
:func:`redact` then hides every secret registered in the process. The client depends on nothing
of the runtime: ``import actors`` hands this process-wide redaction (:data:`PROCESS_REDACTOR`)
to the runtime as a scrubber (``runtime.add_scrubber``), so every line
``runtime.logging.configure`` writes is redacted whatever put the secret in it, and
``Actor.push_error`` redacts every ``ErrorFrame``'s text and exception.

Applications that configure structlog themselves add the runtime's ``scrub_event`` and
``ScrubbingRenderer`` (:mod:`runtime.logging`), which apply it; standard-library loggers or
handlers take a :class:`RedactingFilter`.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import itertools
import logging
import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs

__all__ = [
    "MIN_SECRET_LENGTH",
    "PROCESS_REDACTOR",
    "REDACTED",
    "ProcessRedactor",
    "RedactingFilter",
    "Redactor",
    "header_secrets",
    "is_secret_name",
    "redact",
    "redact_exception",
    "safe_url",
    "url_secrets",
]

REDACTED = "[REDACTED]"
"""What a secret is replaced with."""

MIN_SECRET_LENGTH = 8
"""Given secrets shorter than this are not searched for as such (hiding every ``"test"`` or
``"EMPTY"`` would mangle ordinary text); the shapes above still apply to them."""

_SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "key",
        "passwd",
        "password",
        "pwd",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
_NAME_PARTS = re.compile(r"[-_.\s]+")

#: Whole-match shapes: a ``Bearer`` credential and tokens of well-known formats.
_TOKENS = re.compile(
    r"(?i:\bbearer\s+[^\s\"',;]+)"
    r"|\bsk-[A-Za-z0-9_\-]{16,}"  # OpenAI (sk-, sk-proj-...), Anthropic (sk-ant-...)
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]*)?"  # JWT
    r"|\bAIza[0-9A-Za-z_\-]{30,}"  # Google
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
)
#: ``scheme://userinfo@``: the userinfo is masked.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@\"'<>]+@")
#: ``?name=value`` / ``&name=value``: the value is masked when the name is a secret's.
_QUERY_PARAM = re.compile(r"([?&;])([A-Za-z0-9_.\-]+)=([^&#\s\"'<>]*)")
#: A credential header written out (``Authorization: Basic …``, ``"api-key": "…"``).
_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|api_key|apikey|x-goog-api-key)"
    r"([\"']?\s*[:=]\s*[\"']?)((?:bearer|basic|token)\s+)?([^\s\"',;&]+)"
)

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


def is_secret_name(name: str) -> bool:
    """Whether a header, parameter or field name names a secret.

    A name is a secret's when it, or one of its ``-``/``_``/``.``-separated words, is one of
    ``key``, ``apikey``, ``token``, ``secret``, ``password``, ``passwd``, ``pwd``, ``auth``,
    ``authorization``, ``credential(s)``, ``signature``, ``sig``: ``api-key``, ``x-api-key``,
    ``Authorization``, ``access_token``, ``client_secret`` are; ``max_tokens``,
    ``api-version``, ``OpenAI-Organization`` are not.

    Args:
        name: The name.

    Returns:
        Whether values under this name are hidden.
    """
    lowered = name.strip().lower()
    return lowered in _SECRET_WORDS or any(
        part in _SECRET_WORDS for part in _NAME_PARTS.split(lowered)
    )


def _forms(secret: str) -> Iterator[str]:
    """The forms a secret travels in: as given, stripped, percent-decoded and -encoded."""
    for value in {secret, secret.strip()}:
        yield value
        yield unquote(value)
        yield quote(value, safe="")


def _usable_secrets(values: Iterable[str]) -> tuple[str, ...]:
    forms = {
        form
        for value in values
        if isinstance(value, str)
        for form in _forms(value)
        if len(form) >= MIN_SECRET_LENGTH
    }
    # Longest first, so that a secret containing another one is replaced whole.
    return tuple(sorted(forms, key=lambda s: (-len(s), s)))


def _mask_query_param(match: re.Match[str]) -> str:
    if match.group(3) and is_secret_name(unquote(match.group(2))):
        return f"{match.group(1)}{match.group(2)}={REDACTED}"
    return match.group(0)


def _mask_header(match: re.Match[str]) -> str:
    if match.group(4) == REDACTED:
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{match.group(3) or ''}{REDACTED}"


@attrs.frozen(weakref_slot=True)
class Redactor:
    """Replaces known secrets and secret shapes with :data:`REDACTED`.

    Args:
        secrets: Exact strings to hide (e.g. the API key), in every form they travel in (see
            the module's documentation). Strings shorter than :data:`MIN_SECRET_LENGTH` are
            not searched for as such.
    """

    secrets: tuple[str, ...] = attrs.field(default=(), converter=_usable_secrets, repr=False)

    def text(self, value: str) -> str:
        """Redact a string.

        Args:
            value: Any text that may contain a secret.

        Returns:
            The text with every secret and secret shape replaced.
        """
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        value = _TOKENS.sub(REDACTED, value)
        if "://" in value:
            value = _USERINFO.sub(rf"\1{REDACTED}@", value)
        if "=" in value:
            value = _QUERY_PARAM.sub(_mask_query_param, value)
        return _HEADER.sub(_mask_header, value)

    def value(self, value: T) -> T:
        """Redact every string inside a value: mappings, lists and tuples are copied (of the
        same kind), strings under a key named like a secret (:func:`is_secret_name`) are
        replaced whole, and anything else is returned as it is (enum members too, ``str``
        enums included: they are constants of the code, such as an error's category).

        Args:
            value: A JSON-like value, a log event dict...

        Returns:
            The same structure with every string redacted.
        """
        result: Any
        if isinstance(value, enum.Enum):
            result = value
        elif isinstance(value, str):
            result = self.text(value)
        elif isinstance(value, Mapping):
            result = {
                (self.text(k) if isinstance(k, str) else k): (
                    REDACTED
                    if isinstance(k, str) and isinstance(v, str) and v and is_secret_name(k)
                    else self.value(v)
                )
                for k, v in value.items()
            }
        elif isinstance(value, tuple) and not hasattr(value, "_fields"):
            result = tuple(self.value(v) for v in value)
        elif isinstance(value, list):
            result = [self.value(v) for v in value]
        else:
            result = value
        return result  # type: ignore[no-any-return]

    def exception(self, error: E) -> E:
        """Redact an exception in place, with its whole chain: the ``args``, notes and every
        string, mapping, list or tuple attribute of the exception, of its ``__cause__`` and
        ``__context__`` (recursively) and of the members of exception groups.

        The message of an exception group cannot change once it is built: a group whose
        message (or one of whose members) had to change is replaced by a redacted copy, in
        the chain that holds it and as the return value.

        Args:
            error: The exception.

        Returns:
            ``error`` itself, or its redacted copy if it is such a group.
        """
        return self._scrub(error, {})

    def _scrub(self, error: E, done: dict[int, BaseException]) -> E:
        if id(error) in done:
            return done[id(error)]  # type: ignore[return-value]
        done[id(error)] = error
        error.args = tuple(
            self.value(a) if isinstance(a, (str, Mapping, list, tuple)) else a for a in error.args
        )
        notes = getattr(error, "__notes__", None)
        if isinstance(notes, list):
            error.__notes__ = [self.text(n) if isinstance(n, str) else n for n in notes]
        for name, attribute in list(getattr(error, "__dict__", {}).items()):
            if name != "__notes__" and isinstance(attribute, (str, Mapping, list, tuple)):
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(error, name, self.value(attribute))
        suppress_context = error.__suppress_context__
        for link in ("__cause__", "__context__"):
            linked = getattr(error, link)
            if linked is not None:
                scrubbed = self._scrub(linked, done)
                if scrubbed is not linked:
                    setattr(error, link, scrubbed)
        error.__suppress_context__ = suppress_context  # setting __cause__ changes it
        if isinstance(error, BaseExceptionGroup):
            members = [self._scrub(member, done) for member in error.exceptions]
            message = self.text(error.message)
            changed = any(
                new is not old for new, old in zip(members, error.exceptions, strict=True)
            )
            if message != error.message or changed:
                copy = _regrouped(error, message, members)
                done[id(error)] = copy
                return copy  # type: ignore[return-value]
        return error

    def register(self) -> Redactor:
        """Make this redactor's secrets known to the process-wide :func:`redact` (logs,
        ``ErrorFrame`` texts, the CLI's output) for as long as this redactor lives.

        Returns:
            The redactor itself.
        """
        if self.secrets:
            token = next(_tokens)
            _registered[token] = self.secrets
            registration = _Registration(self, _forget)
            registration.token = token
            _live[token] = registration
            _changed()
        return self


def _regrouped(
    group: BaseExceptionGroup[Any], message: str, members: list[BaseException]
) -> BaseExceptionGroup[Any]:
    """A copy of ``group`` with another message and members, keeping its chain, traceback,
    notes and attributes."""
    try:
        copy = type(group)(message, members)
    except Exception:  # a subclass with another signature
        copy = BaseExceptionGroup(message, members)
    copy.__cause__, copy.__context__ = group.__cause__, group.__context__
    copy.__suppress_context__ = group.__suppress_context__
    copy.__traceback__ = group.__traceback__
    for name, value in vars(group).items():
        with contextlib.suppress(AttributeError, TypeError):
            setattr(copy, name, value)
    return copy


# --------------------------------------------------------------------------- the process


class _Registration(weakref.ref[Redactor]):
    """What forgets a registered redactor's secrets when it dies: one object per
    registration (a ``weakref.finalize`` would make three)."""

    __slots__ = ("token",)
    token: int


_registered: dict[int, tuple[str, ...]] = {}
_live: dict[int, _Registration] = {}  # (keeps each weak reference, so its callback runs)
_tokens = itertools.count()
_combined: list[Redactor] = []


def _changed() -> None:
    _combined.clear()


def _forget(registration: weakref.ref[Redactor]) -> None:
    assert isinstance(registration, _Registration)
    _registered.pop(registration.token, None)
    _live.pop(registration.token, None)
    _changed()


def _process_redactor() -> Redactor:
    if not _combined:
        _combined.append(Redactor(tuple(s for group in list(_registered.values()) for s in group)))
    return _combined[0]


def redact(value: T) -> T:
    """Redact a string (or every string of a structure) with every secret registered in the
    process (:meth:`Redactor.register`) and the secret shapes.

    Args:
        value: Text, or a JSON-like value.

    Returns:
        The redacted copy.
    """
    return _process_redactor().value(value)


def redact_exception(error: E) -> E:
    """Redact an exception and its chain in place (:meth:`Redactor.exception`) with every
    secret registered in the process and the secret shapes.

    Args:
        error: The exception.

    Returns:
        ``error`` itself.
    """
    return _process_redactor().exception(error)


@attrs.frozen
class ProcessRedactor:
    """The process-wide redaction as one object: :meth:`value` is :func:`redact` and
    :meth:`exception` is :func:`redact_exception`, with the secrets registered at each call.

    It has the shape of the runtime's ``Scrubber``; ``import actors`` registers
    :data:`PROCESS_REDACTOR` with ``runtime.add_scrubber``.
    """

    def value(self, value: T) -> T:
        """Redact a string or every string of a structure (:func:`redact`)."""
        return redact(value)

    def exception(self, error: E) -> E:
        """Redact an exception and its chain in place (:func:`redact_exception`)."""
        return redact_exception(error)


PROCESS_REDACTOR = ProcessRedactor()
"""The process-wide redaction that ``import actors`` gives the runtime as its scrubber."""


class RedactingFilter(logging.Filter):
    """A standard-library logging filter that redacts (:func:`redact`) the message of every
    record it sees. Add it to a logger or handler whose lines may carry secrets; the chat
    client adds it to httpx's logger, whose ``HTTP Request: POST <url>`` lines name the URL with
    its credentials.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message in place; never drops the record."""
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


# --------------------------------------------------------------------------- URLs and headers


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets a URL carries: its userinfo's password (or its user, when it has no
    password: a token used as user name), ``user:password``, the ``Basic`` credential an HTTP
    client sends for them, and the values of query parameters named like a secret.

    Args:
        url: An absolute URL.

    Returns:
        The secrets, as written and percent-decoded.
    """
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at and userinfo:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            plain = f"{unquote(user)}:{unquote(password)}"
            found += [password, userinfo, plain]
            found.append(base64.b64encode(plain.encode()).decode())
        else:
            found.append(user)
    for name, _, value in (p.partition("=") for p in re.split(r"[&;]", parts.query) if p):
        if value and is_secret_name(unquote(name)):
            found.append(value)
    return tuple(found)


def header_secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The secrets among HTTP headers: the values of headers named like a secret
    (:func:`is_secret_name`), and the credential after an auth scheme (``Bearer X``: ``X``).

    Args:
        headers: Header names and values.

    Returns:
        The secrets.
    """
    found: list[str] = []
    for name, value in headers.items():
        if isinstance(value, str) and is_secret_name(name):
            found.append(value)
            _scheme, space, credential = value.strip().partition(" ")
            if space and credential:
                found.append(credential.strip())
    return tuple(found)


def safe_url(url: str) -> str:
    """A URL fit to show: its userinfo and the values of its secret query parameters masked.

    Args:
        url: A URL.

    Returns:
        ``http://[REDACTED]@host/v1?key=[REDACTED]&api-version=2024-06-01`` for
        ``http://user:pass@host/v1?key=K&api-version=2024-06-01``.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return Redactor().text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = _QUERY_PARAM.sub(_mask_query_param, f"?{parts.query}")[1:] if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))
