"""Frame serialization: lossless round trips through JSON-compatible data (cattrs).

Every frame class, from any module, converts to a plain ``dict`` and back::

    from runtime.serialization import dumps, frame_from_dict, frame_to_dict, loads

    data = frame_to_dict(EndFrame("done"))   # {"_type": "EndFrame", "reason": "done", "id": ...}
    frame = frame_from_dict(data)            # EndFrame("done"), same id, turn and created_at
    frame = loads(dumps(EndFrame("done")))   # through JSON text

Rules:

* The dict carries the class name under ``"_type"``. The registry of names is built from the
  live subclasses of :class:`~runtime.Frame` when first needed and rebuilt when a name or class
  it does not know shows up, so frames defined later (the ``actors`` frames, your own) work
  without registration. If two live frame classes share a name, both are written with their
  qualified name (``"module.QualName"``) instead; the qualified name is always accepted.
* Every field of the frame is written, the runtime's ``id``, ``created_at``, ``turn`` and
  ``interruptible`` included, so a read frame is the frame that was written.
* ``bytes`` become base64 text, enums their value, tuples, sets and other collections lists,
  nested attrs classes dicts (and the attrs field types turn them back on the way in).
* Polymorphic nested values keep their concrete type: an attrs class whose base is registered
  with :func:`register_tagged_base` is written with its own ``"_type"`` tag. ``MetricsData``
  is registered, so the items of ``MetricsFrame.data`` come back as the subclasses they were
  (frames nested inside frames are tagged too). So is
  :class:`~runtime.PipelineParams`: a ``StartFrame``'s ``params`` come back as the subclass
  the task was given.
* Fields annotated ``Any`` (or ``object``) must hold JSON data (``None``, ``bool``, ``int``,
  ``float``, ``str``, lists and ``str``-keyed dicts of those; tuples are accepted and come
  back as lists); anything else raises :class:`SerializationError` naming the frame and
  field.
* A field that cannot be serialized (an exception, a callable, a live object) must be
  declared with ``metadata=NOT_SERIALIZED``; it is left out and a read frame gets the field's
  default. :class:`~runtime.ErrorFrame` does this for ``exception``: it comes back as
  ``None`` while ``error`` keeps the text. A field annotated with an exception or callable
  type that is *not* declared so raises :class:`SerializationError`: nothing is dropped
  silently.

Recording: :class:`FrameRecorder` is a listener for :meth:`~runtime.PipelineTask.add_listener`
that appends every frame reaching an end of the topology to a JSON-lines file;
:func:`read_recording` reads the frames back (to inspect a session or replay its input).
"""

from __future__ import annotations

import base64
import enum
import json
import os
import typing
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

import attrs
import cattrs
import structlog
import trio
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from ._frames import _NOT_SERIALIZED, Frame, FrameDirection, MetricsData
from ._params import PipelineParams

if TYPE_CHECKING:
    from ._task import PipelineTask

__all__ = [
    "NOT_SERIALIZED",
    "TYPE_KEY",
    "FrameRecorder",
    "SerializationError",
    "check_serializable",
    "converter",
    "dumps",
    "frame_from_dict",
    "frame_to_dict",
    "loads",
    "read_recording",
    "register_tagged_base",
]

#: Key of the type tag in a serialized frame (and in other tagged attrs values).
TYPE_KEY = "_type"

#: attrs field metadata for a field that is not serialized::
#:
#:     callback: Callable[[], None] | None = attrs.field(default=None, metadata=NOT_SERIALIZED)
#:
#: The field is left out of the dict; reading the frame back gives it its default (the field
#: must have one).
NOT_SERIALIZED: Mapping[str, object] = _NOT_SERIALIZED

_SERIALIZE_KEY = next(iter(_NOT_SERIALIZED))

_logger = structlog.get_logger("trouper.runtime")


class SerializationError(ValueError):
    """A frame (or a dict or JSON text) cannot be converted; the message says which field."""


# --------------------------------------------------------------------------- tagged families


@attrs.define(eq=False)
class _Family:
    """The concrete attrs subclasses of one polymorphic base, tagged by class name."""

    base: type[Any]
    _by_class: dict[type[Any], str] = attrs.field(factory=dict)
    _by_tag: dict[str, type[Any]] = attrs.field(factory=dict)
    _unstructure: dict[type[Any], Callable[[Any], dict[str, Any]]] = attrs.field(factory=dict)
    _structure: dict[type[Any], Callable[[Mapping[str, Any], Any], Any]] = attrs.field(factory=dict)

    def refresh(self) -> None:
        """Rebuild the tag registry from the live subclasses of the base."""
        classes = [c for c in _live_subclasses(self.base) if attrs.has(c)]
        names: dict[str, list[type[Any]]] = {}
        for cls in classes:
            names.setdefault(cls.__name__, []).append(cls)
        by_class: dict[type[Any], str] = {}
        by_tag: dict[str, type[Any]] = {}
        for cls in classes:
            qualified = f"{cls.__module__}.{cls.__qualname__}"
            tag = cls.__name__ if len(names[cls.__name__]) == 1 else qualified
            by_class[cls] = tag
            by_tag[tag] = cls
            by_tag.setdefault(qualified, cls)
        self._by_class, self._by_tag = by_class, by_tag

    def tag_of(self, cls: type[Any]) -> str:
        try:
            return self._by_class[cls]
        except KeyError:
            self.refresh()
        try:
            return self._by_class[cls]
        except KeyError:
            raise SerializationError(
                f"{cls.__qualname__} is not an attrs subclass of {self.base.__name__}; "
                "it cannot be serialized"
            ) from None

    def class_of(self, tag: object) -> type[Any]:
        if not isinstance(tag, str):
            raise SerializationError(
                f"a serialized {self.base.__name__} needs a string {TYPE_KEY!r} key, got {tag!r}"
            )
        cls = self._by_tag.get(tag)
        if cls is None:
            self.refresh()
            cls = self._by_tag.get(tag)
        if cls is None:
            same = [t for t in self._by_tag if t.rsplit(".", 1)[-1] == tag]
            hint = (
                f"; several classes are called {tag!r}, use one of {sorted(same)}"
                if same
                else " (is the module that defines it imported?)"
            )
            raise SerializationError(f"unknown {self.base.__name__} type {tag!r}{hint}")
        return cls

    def unstructure(self, obj: Any) -> dict[str, Any]:
        cls = type(obj)
        tag = self._by_class.get(cls) or self.tag_of(cls)
        fn = self._unstructure.get(cls)
        if fn is None:
            fn = self._unstructure[cls] = _make_unstructure(cls)
        return {TYPE_KEY: tag, **fn(obj)}

    def structure(self, data: Any, wanted: Any) -> Any:
        if not isinstance(data, Mapping):
            raise SerializationError(
                f"a serialized {self.base.__name__} is a mapping, got {type(data).__name__}"
            )
        cls = self.class_of(data.get(TYPE_KEY))
        if isinstance(wanted, type) and not issubclass(cls, wanted):
            raise SerializationError(
                f"expected a {wanted.__name__}, got {data.get(TYPE_KEY)!r} ({cls.__qualname__})"
            )
        fn = self._structure.get(cls)
        if fn is None:
            fn = self._structure[cls] = _make_structure(cls)
        return fn(data, cls)


def _live_subclasses(base: type[Any]) -> list[type[Any]]:
    seen: dict[type[Any], None] = {}
    todo = [base]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        # attrs replaces a slotted class by a new one; the original lingers in
        # __subclasses__() until collected and is marked with this attribute.
        if "__attrs_base_of_slotted__" not in cls.__dict__:
            seen[cls] = None
        todo.extend(cls.__subclasses__())
    return list(seen)


_families: list[_Family] = []


def _family_for(t: Any) -> _Family | None:
    if not isinstance(t, type):
        return None
    for family in reversed(_families):
        if issubclass(t, family.base):
            return family
    return None


def register_tagged_base(base: type[Any]) -> None:
    """Serialize every attrs subclass of ``base`` with a ``"_type"`` tag.

    Use it for polymorphic values held by frame fields (a field annotated with the base class,
    holding subclasses), so each value comes back with its concrete type. ``Frame``,
    ``MetricsData`` and ``PipelineParams`` are registered already; registering a base twice
    does nothing.

    Args:
        base: An attrs class.

    Raises:
        TypeError: ``base`` is not an attrs class.
    """
    if not (isinstance(base, type) and attrs.has(base)):
        raise TypeError(f"register_tagged_base takes an attrs class, got {base!r}")
    if any(f.base is base for f in _families):
        return
    _families.append(_Family(base))
    # Hooks are cached per type: forget them so the new base takes effect everywhere.
    converter._unstructure_func.clear_cache()
    converter._structure_func.clear_cache()


# --------------------------------------------------------------------------- per-class hooks


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        raise SerializationError(
            f"cannot resolve the field annotations of {cls.__qualname__} ({exc}); define the "
            "names they use at module level"
        ) from exc


def _unsupported(t: Any) -> str | None:
    """Why a field of type ``t`` cannot be serialized, or None."""
    origin = typing.get_origin(t)
    if t is Callable or origin is Callable:
        return "a callable"
    if isinstance(t, type) and issubclass(t, BaseException):
        return "an exception"
    for arg in typing.get_args(t):
        if arg is not Ellipsis and not isinstance(arg, list):
            reason = _unsupported(arg)
            if reason is not None:
                return reason
    return None


def _serialized_fields(cls: type[Any]) -> tuple[list[str], list[str], list[str]]:
    """(omitted, json-checked, plain) field names of ``cls``; raises if one cannot be written."""
    hints = _type_hints(cls)
    omitted: list[str] = []
    checked: list[str] = []
    plain: list[str] = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        if field.metadata.get(_SERIALIZE_KEY) is False:
            if field.default is attrs.NOTHING:
                raise SerializationError(
                    f"{cls.__qualname__}.{field.name} is declared NOT_SERIALIZED but has no "
                    "default to read it back with"
                )
            omitted.append(field.name)
            continue
        t = hints.get(field.name, Any)
        reason = _unsupported(t)
        if reason is not None:
            raise SerializationError(
                f"{cls.__qualname__}.{field.name} holds {reason} ({t}), which cannot be "
                "serialized; declare the field with metadata=runtime.serialization."
                "NOT_SERIALIZED (it is then read back as its default)"
            )
        if t is Any or t is object:
            checked.append(field.name)
        else:
            plain.append(field.name)
    return omitted, checked, plain


def _make_unstructure(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    omitted, checked, _ = _serialized_fields(cls)
    overrides: dict[str, Any] = {name: override(omit=True) for name in omitted}
    for name in checked:
        overrides[name] = override(unstruct_hook=_json_checker(cls.__qualname__, name))
    return make_dict_unstructure_fn(cls, converter, **overrides)


def _make_structure(cls: type[Any]) -> Callable[[Mapping[str, Any], Any], Any]:
    omitted, checked, _ = _serialized_fields(cls)
    overrides: dict[str, Any] = {name: override(omit=True) for name in omitted}
    for name in checked:
        overrides[name] = override(struct_hook=_passthrough)
    fn = make_dict_structure_fn(cls, converter, **overrides)

    def structure(data: Mapping[str, Any], t: Any) -> Any:
        try:
            return fn(data, t)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"cannot read a {cls.__qualname__} from {dict(data)!r}: {_describe(exc)}"
            ) from exc

    return structure


def _passthrough(value: Any, _: Any) -> Any:
    return value


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def _json_checker(owner: str, name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        return _json_value(value, f"{owner}.{name}")

    return check


def _json_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SerializationError(f"{where} has a non-string key {k!r}; JSON needs str")
            out[k] = _json_value(v, f"{where}[{k!r}]")
        return out
    raise SerializationError(
        f"{where} holds a {type(value).__name__}, which is not JSON data; annotate the field "
        "with a serializable type or declare it NOT_SERIALIZED"
    )


# --------------------------------------------------------------------------- the converter


def _make_converter() -> cattrs.Converter:
    conv = make_converter()
    conv.register_unstructure_hook(bytes, lambda v: base64.b64encode(v).decode("ascii"))
    conv.register_structure_hook(bytes, _structure_bytes)
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda v: v.value
    )
    # Every attrs class gets the same field rules as frames (NOT_SERIALIZED, JSON-only Any,
    # no exceptions or callables); registered before the tagged bases, which take precedence.
    conv.register_unstructure_hook_factory(_plain_attrs, _make_unstructure)
    conv.register_structure_hook_factory(_plain_attrs, _make_structure)
    conv.register_unstructure_hook_func(
        lambda t: _family_for(t) is not None, lambda obj: _unstructure_tagged(obj)
    )
    conv.register_structure_hook_func(lambda t: _family_for(t) is not None, _structure_tagged)
    return conv


def _plain_attrs(t: Any) -> bool:
    return isinstance(t, type) and attrs.has(t)


def _structure_bytes(value: Any, _: Any) -> bytes:
    if not isinstance(value, str):
        raise SerializationError(f"bytes are serialized as base64 text, got {value!r}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except ValueError as exc:
        raise SerializationError(f"invalid base64 for a bytes field: {exc}") from exc


def _unstructure_tagged(obj: Any) -> dict[str, Any]:
    family = _family_for(type(obj))
    assert family is not None
    return family.unstructure(obj)


def _structure_tagged(data: Any, t: Any) -> Any:
    family = _family_for(t)
    assert family is not None
    return family.structure(data, t)


#: The cattrs converter behind this module (JSON preset; base64 bytes; tagged frames and
#: registered bases). Use it for your own attrs values next to frames.
converter: cattrs.Converter = _make_converter()

register_tagged_base(Frame)
register_tagged_base(MetricsData)
# A StartFrame's settings keep their class (a stage package's PipelineParams subclass).
register_tagged_base(PipelineParams)


# --------------------------------------------------------------------------- public API


def check_serializable(cls: type[Any]) -> None:
    """Check, without an instance, that the attrs class ``cls`` (a frame or a value held by
    one) can be serialized: every field, and those of nested attrs classes, either has a
    serializable type or is declared ``NOT_SERIALIZED`` with a default.

    ``Any`` fields can only be checked when a value is written. Useful in a test over all the
    frame classes of a package.

    Raises:
        SerializationError: the first field that cannot be serialized, by name.
        TypeError: ``cls`` is not an attrs class.
    """
    if not _plain_attrs(cls):
        raise TypeError(f"check_serializable takes an attrs class, got {cls!r}")
    try:
        _make_unstructure(cls)
        _make_structure(cls)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"{cls.__qualname__} cannot be serialized: {_describe(exc)}"
        ) from exc


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """Convert ``frame`` to JSON-compatible data with a ``"_type"`` tag.

    Raises:
        SerializationError: a field cannot be serialized (see the module docs).
        TypeError: ``frame`` is not a frame.
    """
    if not isinstance(frame, Frame):
        raise TypeError(f"frame_to_dict takes a Frame, got {type(frame).__name__}")
    data: dict[str, Any] = converter.unstructure(frame, Frame)
    return data


def frame_from_dict(data: Mapping[str, Any]) -> Frame:
    """Rebuild the frame :func:`frame_to_dict` made (same class, fields, id and turn).

    Raises:
        SerializationError: unknown ``"_type"``, or data that does not fit the class.
    """
    frame: Frame = converter.structure(data, Frame)
    return frame


def dumps(frame: Frame, **json_kwargs: Any) -> str:
    """JSON text of ``frame`` (``json_kwargs`` go to :func:`json.dumps`).

    Raises:
        SerializationError: a field cannot be serialized.
    """
    return json.dumps(frame_to_dict(frame), **json_kwargs)


def loads(text: str | bytes) -> Frame:
    """The frame in JSON text made by :func:`dumps`.

    Raises:
        SerializationError: the text is not JSON or not a serialized frame.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SerializationError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise SerializationError(f"a serialized frame is a JSON object, got {type(data).__name__}")
    return frame_from_dict(data)


# --------------------------------------------------------------------------- recording


class FrameRecorder:
    """Append every frame that reaches an end of a :class:`~runtime.PipelineTask` to a
    JSON-lines file, one ``{"direction", "time", "frame"}`` object a line.

    Attach it with :meth:`attach` (both directions) or ``task.add_listener(recorder,
    direction)``; read the file back with :func:`read_recording`. ``time`` is trio's clock
    (virtual in tests). Each line is written and flushed synchronously when the frame arrives,
    so a crashed session still leaves a complete file; it is meant for debugging, tests and
    replay, not for hot paths.

    A frame that cannot be serialized is skipped with a warning log (counted in
    :attr:`skipped`), so recording never breaks the session; with ``strict=True`` the
    :class:`SerializationError` propagates (and crashes the session).

    Args:
        path: The file (created, or appended to with ``append=True``).
        append: Keep what the file holds.
        strict: Raise instead of skipping frames that cannot be serialized.

    Example::

        with FrameRecorder("session.jsonl") as recorder:
            recorder.attach(task)
            await task.run()
        frames = list(read_recording("session.jsonl"))
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = False, strict: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self.strict = strict
        self.written = 0
        self.skipped = 0
        self._file: IO[str] | None = open(  # noqa: SIM115 - closed by close()
            self.path, "a" if append else "w", encoding="utf-8"
        )

    def attach(
        self,
        task: PipelineTask,
        directions: tuple[FrameDirection, ...] = (
            FrameDirection.DOWNSTREAM,
            FrameDirection.UPSTREAM,
        ),
    ) -> FrameRecorder:
        """Listen to ``task`` at the ends of ``directions`` (default both); returns self."""
        for direction in directions:
            task.add_listener(self, direction)
        return self

    def __call__(self, frame: Frame, direction: FrameDirection) -> None:
        """Write one frame (the listener protocol)."""
        if self._file is None:
            self.skipped += 1
            return
        try:
            line = json.dumps(
                {
                    "direction": direction.name.lower(),
                    "time": _now(),
                    "frame": frame_to_dict(frame),
                }
            )
        except (SerializationError, TypeError, ValueError) as exc:
            if self.strict:
                raise
            self.skipped += 1
            _logger.warning(
                "frame not recorded", frame=frame.name, error=f"{type(exc).__name__}: {exc}"
            )
            return
        self._file.write(line + "\n")
        self._file.flush()
        self.written += 1

    def close(self) -> None:
        """Close the file; later frames are counted as skipped. Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> FrameRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _now() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:  # outside trio
        return None


def read_recording(
    path: str | os.PathLike[str], *, direction: FrameDirection | None = None
) -> Iterator[Frame]:
    """Yield the frames of a file written by :class:`FrameRecorder`, in order.

    A plain (synchronous) generator: it reads a local file line by line.

    Args:
        path: The JSON-lines file.
        direction: Only the frames that reached this end (default: all).

    Raises:
        SerializationError: a line is not a recorded frame (the message gives its number).
    """
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                recorded = FrameDirection[str(entry["direction"]).upper()]
                if direction is not None and recorded is not direction:
                    continue
                frame = frame_from_dict(entry["frame"])
            except (ValueError, KeyError, TypeError) as exc:
                raise SerializationError(
                    f"{os.fspath(path)}:{number}: not a recorded frame ({_describe(exc)})"
                ) from exc
            yield frame
