"""The conversation: ``OpenAILLMContext`` (owned by the context store; Pipecat 1.x's name for
it, ``LLMContext``, is the same class) and its snapshots."""

from __future__ import annotations

import base64
import copy
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ._advertised import AdvertisedHandler, lookup_handler
from ._frozen import FrozenDict, frozen_copy
from ._planner import PROTECTED_ROLES, request_messages
from ._schemas import ToolsSchema, prepare_tools

if TYPE_CHECKING:
    from ._handlers import FunctionRegistration

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "ContextSnapshot",
    "LLMContext",
    "OpenAILLMContext",
    "check_messages",
    "encode_image",
    "restore_context",
    "validate_messages",
]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})

#: Largest encoded image accepted in a message (OpenAI's own limit is 20 MB per image).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024


def check_messages(messages: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Check OpenAI-format messages without copying them; the messages, as a list.

    Raises:
        TypeError: a message is not a mapping.
        ValueError: a message has no valid ``role``, or a ``tool`` message no ``tool_call_id``.
    """
    if isinstance(messages, Mapping | str | bytes):
        raise TypeError("messages must be a list of message dicts, not a single value")
    out: list[Mapping[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"message {i} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role not in _ROLES:
            raise ValueError(
                f"message {i} has role {role!r}; use one of {', '.join(sorted(_ROLES))}"
            )
        if role == "tool" and not message.get("tool_call_id"):
            raise ValueError(f"message {i} is a tool message without 'tool_call_id'")
        if role in ("system", "developer", "user", "tool") and "content" not in message:
            raise ValueError(f"message {i} ({role}) has no 'content'")
        out.append(message)
    return out


def validate_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check OpenAI-format messages (:func:`check_messages`) and return private deep copies.

    Raises:
        TypeError: a message is not a mapping.
        ValueError: a message has no valid ``role``, or a ``tool`` message no ``tool_call_id``.
    """
    return [copy.deepcopy(dict(message)) for message in check_messages(messages)]


def _read_only_messages(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`validate_messages`, but the copies are read-only (what a context keeps: its
    snapshots share them)."""
    return [frozen_copy(dict(message)) for message in check_messages(messages)]


def _check_tool_choice(choice: object) -> Any:
    # A dict is unhashable: test membership on strings only.
    if choice is None or (isinstance(choice, str) and choice in _TOOL_CHOICES):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") in (
        "function",
        "allowed_tools",
        "custom",
    ):
        return copy.deepcopy(dict(choice))
    raise ValueError(
        f"tool_choice {choice!r} is invalid: use 'none', 'auto', 'required' or "
        "{'type': 'function', 'function': {'name': ...}}"
    )


def encode_image(
    format: str | None,
    size: tuple[int, int],
    image: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> str:
    """Return a ``data:`` URL for an image.

    ``format`` starting with ``image/`` means ``image`` is already encoded (passed through);
    otherwise it is a Pillow mode (``"RGB"``, ``"RGBA"``, ``"L"``; default RGB) and the raw
    pixels are JPEG-encoded.

    Raises:
        ValueError: empty image, pixel data that does not match ``size``/``format``, or an
            encoded image larger than ``max_bytes``.
    """
    if not image:
        raise ValueError("the image is empty (0 bytes)")
    if format and format.startswith("image/"):
        data, mime = bytes(image), format
    else:
        from PIL import Image

        mode = format or "RGB"
        try:
            width, height = size
            picture = Image.frombytes(mode, (int(width), int(height)), bytes(image))
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"raw image does not match size {size!r} and format {mode!r}: {exc} "
                f"(got {len(image)} bytes)"
            ) from None
        if picture.mode not in ("RGB", "L"):
            picture = picture.convert("RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=85)
        data, mime = buffer.getvalue(), "image/jpeg"
    if len(data) > max_bytes:
        raise ValueError(
            f"the image is {len(data):,} bytes encoded, over the limit of {max_bytes:,} bytes; "
            "send a smaller image"
        )
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _elide(value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith("data:") and ";base64," in value:
            head = value.split(",", 1)[0]
            return f"{head},...({len(value)} chars)"
        return value
    if isinstance(value, Mapping):
        return {k: _elide(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_elide(v) for v in value]
    return value


def _messages_for_logging(messages: Iterable[Mapping[str, Any]]) -> str:
    return json.dumps([_elide(m) for m in messages], ensure_ascii=False, default=str)


def _read_only_all(values: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """The messages (or tools) of a snapshot, read-only: those a context shares already are,
    anything else is copied (see ``actors._frozen``)."""
    return tuple(v if type(v) is FrozenDict else frozen_copy(v) for v in values)


@attrs.frozen
class ContextSnapshot:
    """An immutable view of the conversation at one moment.

    Its messages and tools are read-only (a ``dict``/``list`` that refuses changes,
    ``TypeError``): a context and the snapshots it takes share them, each copied once.
    :meth:`get_messages` returns changeable copies: changing them changes nothing anywhere
    else. The LLM receives snapshots; tool handlers see one in ``params.context``.

    ``handlers`` names the handlers that came with the tools (``FunctionSchema(handler=...)``,
    plain functions) as ``(function name, token)`` pairs: the snapshot carries no callable.
    The tool executor runs a call with :meth:`handler_for`. It plays no part in equality.

    With a context window (:class:`~actors.ContextWindow`), ``messages`` is still the whole
    conversation; the request sent to the model is :meth:`request_messages`: from
    ``window_start`` on, after the ``system``/``developer`` messages before it and the
    ``summary`` of what it leaves out (:attr:`omitted`). ``window_start`` is ``None`` when
    no window applies.
    """

    messages: tuple[dict[str, Any], ...] = attrs.field(converter=_read_only_all)
    tools: tuple[dict[str, Any], ...] | None = attrs.field(
        default=None, converter=attrs.converters.optional(_read_only_all)
    )
    tool_choice: Any = None
    interrupted: frozenset[int] = frozenset()
    handlers: tuple[tuple[str, str], ...] = attrs.field(default=(), eq=False, repr=False)
    window_start: int | None = None
    summary: str | None = None

    def request_messages(self) -> tuple[dict[str, Any], ...]:
        """The messages of the request to the model: all of them without a window, else the
        window's (see the class documentation). Shared, not copied: do not change them."""
        if not self.window_start and self.summary is None:
            return self.messages
        return request_messages(self.messages, self.window_start or 0, self.summary)

    @property
    def omitted(self) -> tuple[int, ...]:
        """Indices of the messages the request leaves out (the oldest turns)."""
        if not self.window_start:
            return ()
        return tuple(
            i
            for i in range(self.window_start)
            if self.messages[i].get("role") not in PROTECTED_ROLES
        )

    def with_window(self, start: int | None, summary: str | None) -> ContextSnapshot:
        """This snapshot with another window (``start`` ``None``: no window)."""
        return attrs.evolve(self, window_start=start, summary=summary)

    def handler_for(self, function_name: str) -> FunctionRegistration | None:
        """The handler that came with the tool ``function_name``, while something in this
        process (the conversation, the schema) still holds it; else ``None``."""
        for name, token in self.handlers:
            if name == function_name:
                advertised = lookup_handler(token)
                return None if advertised is None else advertised.registration
        return None

    def get_messages(self) -> list[dict[str, Any]]:
        """Copies of the messages, ready for a request."""
        return copy.deepcopy(list(self.messages))

    def get_messages_for_logging(self) -> str:
        """The messages as JSON with base64 image data elided."""
        return _messages_for_logging(self.messages)

    def tools_for_api(self) -> list[dict[str, Any]] | None:
        """The request's ``tools`` list (``None``: no tools)."""
        return copy.deepcopy(list(self.tools)) if self.tools else None

    def is_interrupted(self, index: int) -> bool:
        """Whether message ``index`` is an assistant answer cut short by an interruption."""
        return index in self.interrupted

    def __len__(self) -> int:
        return len(self.messages)


class OpenAILLMContext:
    """The conversation: messages, tools and tool choice (Pipecat-compatible API).

    While a session runs, the context store actor is its only owner; everyone else works with
    :class:`ContextSnapshot` objects. Before the session starts (and after it ends) you may use
    it directly.

    ``LLMContext`` (Pipecat 1.x's name) is this class.

    Args:
        messages: Initial OpenAI-format messages (copied).
        tools: A ``ToolsSchema``, a list of ``FunctionSchema`` / plain ``async def fn(params,
            ...)`` functions / OpenAI tool dicts, or None. A tool that comes with a handler (a
            ``FunctionSchema(handler=...)``, a plain function) needs no ``register_function``:
            its calls run that handler (a handler registered with the LLM service for the same
            name wins).
        tool_choice: ``"none"``, ``"auto"``, ``"required"``, a function choice dict, or None.

    Raises:
        ValueError, TypeError: malformed messages, tools or tool choice (the message says which).
    """

    def __init__(
        self,
        messages: Sequence[Mapping[str, Any]] | None = None,
        tools: ToolsSchema | Sequence[Any] | None = None,
        tool_choice: Any = None,
    ) -> None:
        #: Read-only copies (``actors._frozen``): every snapshot shares them, so a snapshot
        #: costs a tuple, not a copy of the conversation. Changing a message replaces it.
        self._messages: list[dict[str, Any]] = _read_only_messages(messages or [])
        self._interrupted: list[bool] = [False] * len(self._messages)
        self._tools_source: Any = tools
        prepared = prepare_tools(tools)
        self._tools = prepared.api
        #: The handlers of the current tools, by function name.
        self._handlers: dict[str, AdvertisedHandler] = prepared.handlers
        #: Every handler the tools ever came with, by token: a call the model asked for just
        #: before the tools changed still finds its handler.
        self._kept: dict[str, AdvertisedHandler] = {h.token: h for h in prepared.handlers.values()}
        self._tool_choice = _check_tool_choice(tool_choice)
        #: Read-only copies of the tools for the snapshots, made by the first one after
        #: the tools were set.
        self._shared_tools: tuple[dict[str, Any], ...] | None = None

    @staticmethod
    def from_messages(messages: Sequence[Mapping[str, Any]]) -> OpenAILLMContext:
        """A context holding copies of ``messages``."""
        return OpenAILLMContext(messages=messages)

    @staticmethod
    def from_snapshot(snapshot: ContextSnapshot) -> OpenAILLMContext:
        """A context equal to ``snapshot``: its messages, tools, tool choice and which
        assistant answers were interrupted (validated like any other input)."""
        context = OpenAILLMContext(
            messages=snapshot.messages,
            tools=list(snapshot.tools) if snapshot.tools else None,
            tool_choice=snapshot.tool_choice,
        )
        context._adopt_handlers(snapshot.handlers)
        for index in snapshot.interrupted:
            if not 0 <= index < len(context._interrupted):
                raise ValueError(
                    f"snapshot marks message {index} as interrupted, but it has "
                    f"{len(context._interrupted)} messages"
                )
            context._interrupted[index] = True
        return context

    # ----------------------------------------------------------------- reading

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Copies of the messages."""
        return self.get_messages()

    def get_messages(self) -> list[dict[str, Any]]:
        """Copies of the messages, ready for a request."""
        return copy.deepcopy(self._messages)

    def get_messages_for_logging(self) -> str:
        """The messages as JSON with base64 image data elided."""
        return _messages_for_logging(self._messages)

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """The tools in OpenAI format (``None``: no tools)."""
        return copy.deepcopy(self._tools)

    @property
    def tool_choice(self) -> Any:
        """The tool choice (``None``: the server's default)."""
        return copy.deepcopy(self._tool_choice)

    def is_interrupted(self, index: int) -> bool:
        """Whether message ``index`` is an assistant answer cut short by an interruption."""
        return 0 <= index < len(self._interrupted) and self._interrupted[index]

    @property
    def tool_handlers(self) -> list[str]:
        """Names of the tools that came with their handler."""
        return sorted(self._handlers)

    def snapshot(self) -> ContextSnapshot:
        """An immutable copy of the conversation. Its messages and tools are read-only
        copies that the snapshots of this context share (each made once); change a copy of
        them (:meth:`ContextSnapshot.get_messages`)."""
        tools = self._shared_tools
        if tools is None and self._tools:
            tools = self._shared_tools = tuple(frozen_copy(t) for t in self._tools)
        return ContextSnapshot(
            messages=tuple(self._messages),
            tools=tools if self._tools else None,
            tool_choice=copy.deepcopy(self._tool_choice),
            interrupted=frozenset(i for i, flag in enumerate(self._interrupted) if flag),
            handlers=tuple((name, h.token) for name, h in sorted(self._handlers.items())),
        )

    def __len__(self) -> int:
        return len(self._messages)

    # ----------------------------------------------------------------- writing

    def add_message(self, message: Mapping[str, Any], *, interrupted: bool = False) -> None:
        """Append one message (validated, copied)."""
        self._messages.extend(_read_only_messages([message]))
        self._interrupted.append(interrupted)

    def add_messages(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Append several messages (all validated before any is added)."""
        checked = _read_only_messages(messages)
        self._messages.extend(checked)
        self._interrupted.extend([False] * len(checked))

    def set_messages(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Replace every message (validated before anything changes)."""
        checked = _read_only_messages(messages)
        self._messages = checked
        self._interrupted = [False] * len(checked)

    def set_tools(self, tools: ToolsSchema | Sequence[Any] | None) -> None:
        """Replace the tools (an empty list means no tools); their handlers come with them
        (see the class docs)."""
        prepared = prepare_tools(tools)
        self._tools_source = tools
        self._tools = prepared.api
        self._shared_tools = None
        self._handlers = prepared.handlers
        self._kept.update((h.token, h) for h in prepared.handlers.values())

    def _adopt_handlers(self, handlers: Iterable[tuple[str, str]]) -> None:
        """Take over the handlers a snapshot names, those still alive in this process."""
        for name, token in handlers:
            advertised = lookup_handler(token)
            if advertised is not None and self._tools is not None:
                self._handlers[name] = advertised
                self._kept[token] = advertised

    def set_tool_choice(self, tool_choice: Any) -> None:
        """Set the tool choice (validated)."""
        self._tool_choice = _check_tool_choice(tool_choice)

    def add_image_frame_message(
        self,
        format: str | None,
        size: tuple[int, int],
        image: bytes,
        text: str | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        """Append a user message with the optional text and the image as a data URL.

        Raises:
            ValueError: see :func:`encode_image`.
        """
        self.add_message(image_message(format, size, image, text, max_bytes=max_bytes))

    # ----------------------------------------------------------------- tool bookkeeping

    def add_tool_calls(
        self, calls: Sequence[tuple[str, str, str]], *, content: str | None = None
    ) -> None:
        """Record one assistant message with ``tool_calls`` and an ``IN_PROGRESS`` placeholder
        ``tool`` message per call. ``calls`` are ``(tool_call_id, name, arguments_json)``."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ],
        }
        self.add_message(message)
        for cid, _, _ in calls:
            self.add_message({"role": "tool", "tool_call_id": cid, "content": "IN_PROGRESS"})

    def set_tool_result(self, tool_call_id: str, content: str) -> bool:
        """Write ``content`` into the ``tool`` message of ``tool_call_id``; False if none."""
        messages = self._messages
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message.get("role") == "tool" and message.get("tool_call_id") == tool_call_id:
                # A new message: the snapshots that hold the old one keep it as it was.
                messages[index] = FrozenDict({**message, "content": content})
                return True
        return False

    def open_tool_calls(self) -> list[str]:
        """Ids of calls whose ``tool`` message still holds the ``IN_PROGRESS`` placeholder."""
        return [
            m["tool_call_id"]
            for m in self._messages
            if m.get("role") == "tool" and m.get("content") == "IN_PROGRESS"
        ]


def image_message(
    format: str | None,
    size: tuple[int, int],
    image: bytes,
    text: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> dict[str, Any]:
    """A user message holding the optional text and the image (see :func:`encode_image`)."""
    url = encode_image(format, size, image, max_bytes=max_bytes)
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    content.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": content}


def restore_context(context: OpenAILLMContext, snapshot: ContextSnapshot) -> None:
    """Make ``context`` equal to ``snapshot`` in place (validated before anything changes):
    how the context store resumes a stored conversation into the context it was given.

    The one place outside the class that sets the context's private state (the conversation
    storage of the store calls it), so no other module reaches into it.
    """
    loaded = OpenAILLMContext.from_snapshot(snapshot)
    context._messages, context._interrupted = loaded._messages, loaded._interrupted
    context._tools_source, context._tools = loaded._tools_source, loaded._tools
    context._tool_choice = loaded._tool_choice
    context._shared_tools = None


#: Pipecat 1.x's name for the conversation.
LLMContext = OpenAILLMContext
