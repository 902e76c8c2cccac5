"""Handlers that come with their tool schemas (``FunctionSchema(handler=...)``, plain
functions in the tools), and how the tool executor finds them without a callable travelling
in a frame.

A handler given with a schema is checked and wrapped in an :class:`AdvertisedHandler` with a
random token. The conversation keeps the handlers of its tools; its snapshots (what the
frames carry) hold only ``(function name, token)`` pairs. The tool executor turns a token
back into the handler through this module's table, which holds each handler only as long as
something else does (the schema, the conversation): nothing here keeps a conversation's
handlers alive after it is gone. A token read back from a recording in another process
resolves to nothing, and the call is answered as one without a handler.
"""

from __future__ import annotations

import secrets
import weakref
from typing import Any

import attrs

from ._handlers import FunctionRegistration

__all__ = ["AdvertisedHandler", "advertise", "lookup_handler"]

_TABLE: weakref.WeakValueDictionary[str, AdvertisedHandler] = weakref.WeakValueDictionary()


@attrs.frozen(eq=False)
class AdvertisedHandler:
    """A handler that came with a tool schema, and the token that names it in snapshots.

    Attributes:
        registration: The handler, registered under the function's name with the default
            options (cancelled on interruption, the service's default timeout).
        token: A random id, unique in the process.
    """

    registration: FunctionRegistration
    token: str = attrs.field(factory=lambda: secrets.token_hex(12))

    @property
    def name(self) -> str:
        """The function's name."""
        return str(self.registration.name)


def advertise(name: str, handler: Any) -> AdvertisedHandler:
    """Check ``handler`` for function ``name`` and enter it in the table.

    Raises:
        TypeError: ``handler`` is not an ``async def`` function (see ``register_function``).
    """
    advertised = AdvertisedHandler(FunctionRegistration(name, handler))
    _TABLE[advertised.token] = advertised
    return advertised


def lookup_handler(token: str) -> AdvertisedHandler | None:
    """The handler a token names, or ``None`` once nothing holds it (or in another process)."""
    return _TABLE.get(token)
