"""Frame serialization (cattrs, JSON) and session recordings."""

from __future__ import annotations

import enum
import json
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import (
    DataFrame,
    ErrorFrame,
    Frame,
    FrameDirection,
    MetricsData,
    MetricsFrame,
    PipelineParams,
    PipelineTask,
    SystemFrame,
)
from runtime.serialization import (
    NOT_SERIALIZED,
    TYPE_KEY,
    FrameRecorder,
    SerializationError,
    check_serializable,
    converter,
    dumps,
    frame_from_dict,
    frame_to_dict,
    loads,
    read_recording,
    register_tagged_base,
)
from runtime.testing import capture_logs, run_frames

from .runtime_helpers import Count, Incr, Kind, Latency, Ping, Text, numbers

# --------------------------------------------------------------------------- test frames


class Mood(enum.Enum):
    """A plain enum with string values."""

    CALM = "calm"
    ANGRY = "angry"


class Priority(enum.IntEnum):
    """An int enum."""

    LOW = 1
    HIGH = 2


@attrs.frozen
class Attachment:
    """A nested (untagged) attrs value."""

    name: str
    data: bytes = b""


@attrs.frozen
class Shape:
    """A polymorphic base registered with ``register_tagged_base``."""

    label: str = ""


@attrs.frozen
class Circle(Shape):
    radius: float = 1.0


@attrs.frozen
class Square(Shape):
    side: int = 1


register_tagged_base(Shape)


@attrs.frozen
class RichFrame(DataFrame):
    """Exercises every kind of field the serializer handles."""

    payload: bytes
    numbers: tuple[int, ...] = ()
    pair: tuple[str, float] = ("", 0.0)
    names: Sequence[str] = attrs.field(factory=tuple, converter=tuple)
    tags: frozenset[str] = frozenset()
    mood: Mood = Mood.CALM
    priority: Priority = Priority.LOW
    direction: FrameDirection = FrameDirection.DOWNSTREAM
    attachment: Attachment | None = None
    shapes: tuple[Shape, ...] = ()
    inner: Frame | None = None
    extra: Any = None
    scores: dict[str, int] = attrs.field(factory=dict)
    callback: Callable[[], None] | None = attrs.field(
        default=None, eq=False, metadata=NOT_SERIALIZED
    )


@attrs.frozen
class CarriesExceptions(SystemFrame):
    """An exception field left undeclared: serializing must fail, not drop it silently."""

    error: BaseException | None = None


@attrs.frozen
class CarriesCallable(DataFrame):
    """A callable field left undeclared."""

    callback: Callable[[], None] | None = None


@attrs.frozen
class NoDefault(DataFrame):
    """A field declared not serialized but without a default to read it back with."""

    handle: object = attrs.field(metadata=NOT_SERIALIZED)


if typing.TYPE_CHECKING:
    from collections import OrderedDict


@attrs.frozen
class UsesUnknownName(DataFrame):
    """Annotated with a name only imported for type checking."""

    table: OrderedDict[str, int] | None = None


@attrs.frozen
class Options:
    """A nested value with an undeclared callable."""

    on_done: Callable[[], None] | None = None


@attrs.frozen
class WithOptions(DataFrame):
    """A frame holding such a value."""

    options: Options = Options()


_BROKEN = {CarriesExceptions, CarriesCallable, NoDefault, UsesUnknownName, WithOptions}


def all_frame_classes() -> list[type[Frame]]:
    """Every frame class of the runtime and of this module (the broken ones left out).

    The conversation stages' frames (``actors``) validate their fields in ways a generic
    strategy cannot satisfy; their own tests cover them (``check_serializable`` for the
    field types, their own strategies for instances).
    """
    found: dict[type[Frame], None] = {}
    todo: list[type[Frame]] = [Frame]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "__attrs_base_of_slotted__" in cls.__dict__ or cls in _BROKEN:
            continue
        if cls.__module__.startswith("runtime.") or cls.__module__ == __name__:
            found[cls] = None
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)

leaf_frames = st.builds(Text, st.text(), turn=st.none() | st.integers(0, 5))


def concrete_subclasses(base: type[Any]) -> list[type[Any]]:
    todo, found = [base], []
    while todo:
        cls = todo.pop()
        if "__attrs_base_of_slotted__" not in cls.__dict__:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def strategy_for(t: Any) -> st.SearchStrategy[Any]:
    """Values for a field annotated ``t``."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any or t is object:
        return json_values
    if t is type(None):
        return st.none()
    if t is bool:
        return st.booleans()
    if t is int:
        return st.integers()
    if t is float:
        return st.floats(allow_nan=False)
    if t is str:
        return st.text()
    if t is bytes:
        return st.binary(max_size=20)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return st.sampled_from(list(t))
    if isinstance(t, type) and issubclass(t, BaseException):
        return st.builds(t, st.text())
    if isinstance(t, type) and issubclass(t, Frame):
        return leaf_frames
    if isinstance(t, type) and issubclass(t, PipelineParams):
        # The session settings a StartFrame carries (subclasses included): a mailbox holds
        # at least one frame.
        return st.one_of(
            [builds(c, mailbox_size=st.integers(1, 10_000)) for c in concrete_subclasses(t)]
        )
    if isinstance(t, type) and attrs.has(t):
        return st.one_of([builds(c) for c in concrete_subclasses(t)])
    if origin is typing.Union or origin is __import__("types").UnionType:
        return st.one_of([strategy_for(a) for a in args])
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
        return st.tuples(*[strategy_for(a) for a in args])
    if origin in (list, Sequence, __import__("collections.abc").abc.Sequence):
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin in (frozenset, set):
        return st.frozensets(strategy_for(args[0]), max_size=3)
    if origin in (dict, Mapping, __import__("collections.abc").abc.Mapping):
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if origin is not None and origin.__name__ == "Callable":
        return st.just(lambda: None)
    if t is Callable:
        return st.just(lambda: None)
    raise NotImplementedError(f"no strategy for {t!r}")


def builds(cls: type[Any], **given: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Instances of the attrs class ``cls`` with every init field generated from its type
    (or by the strategy ``given`` for it)."""
    hints = typing.get_type_hints(cls)
    kwargs = {
        field.alias: given[field.alias] if field.alias in given else strategy_for(hints[field.name])
        for field in attrs.fields(cls)
        if field.init
    }
    return st.builds(cls, **kwargs)


def runtime_fields(frame: Frame) -> tuple[object, ...]:
    """The fields frame equality ignores, compared separately."""
    return (type(frame), frame.id, frame.created_at, frame.turn, frame.interruptible)


def same_frame(a: Frame, b: Frame) -> bool:
    return a == b and runtime_fields(a) == runtime_fields(b)


# --------------------------------------------------------------------------- tests


class TestRoundTrip:
    @pytest.mark.parametrize("cls", all_frame_classes(), ids=lambda c: c.__qualname__)
    @settings(max_examples=15, deadline=None)
    @given(data=st.data())
    def test_every_frame_class_round_trips_through_dicts_and_json(
        self, cls: type[Frame], data: st.DataObject
    ) -> None:
        """For every frame class and generated field values, ``frame_from_dict(frame_to_dict
        (f)) == f`` (runtime fields included), also through JSON text."""
        frame = data.draw(builds(cls))
        as_dict = frame_to_dict(frame)
        assert as_dict[TYPE_KEY] == cls.__name__
        text = json.dumps(as_dict)  # JSON-compatible as it is
        assert same_frame(frame_from_dict(as_dict), frame)
        assert same_frame(frame_from_dict(json.loads(text)), frame)
        assert same_frame(loads(dumps(frame)), frame)

    @pytest.mark.parametrize("cls", all_frame_classes(), ids=lambda c: c.__qualname__)
    def test_every_frame_class_passes_the_static_check(self, cls: type[Frame]) -> None:
        """``check_serializable`` accepts every frame class under test."""
        check_serializable(cls)

    def test_check_serializable_names_the_first_field_that_cannot_be_written(self) -> None:
        """The static check finds undeclared callables, also in nested attrs classes, and
        annotations it cannot resolve."""
        with pytest.raises(SerializationError, match=r"Options\.on_done holds a callable"):
            check_serializable(WithOptions)
        with pytest.raises(SerializationError, match="cannot resolve the field annotations"):
            check_serializable(UsesUnknownName)
        with pytest.raises(TypeError, match="takes an attrs class"):
            check_serializable(int)

    def test_the_classes_under_test_include_the_runtime_frames(self) -> None:
        """The property test covers every frame class of the runtime."""
        import runtime

        public = {
            obj
            for name in runtime.__all__
            if isinstance(obj := getattr(runtime, name), type) and issubclass(obj, Frame)
        }
        assert public <= set(all_frame_classes())
        assert RichFrame in all_frame_classes()

    def test_the_wire_format_is_plain_json(self) -> None:
        """bytes are base64, enums their values, tuples lists, nested polymorphic values
        tagged, and the runtime fields are kept."""
        frame = RichFrame(
            b"\x00\xff",
            numbers=(1, 2),
            tags=frozenset({"x"}),
            mood=Mood.ANGRY,
            priority=Priority.HIGH,
            direction=FrameDirection.UPSTREAM,
            attachment=Attachment("a.png", b"png"),
            shapes=(Circle("c", 2.0), Square("s", 3)),
            inner=Text("hi"),
            extra={"k": [1, "two", None]},
            turn=4,
            interruptible=False,
        )
        data = frame_to_dict(frame)
        assert data["_type"] == "RichFrame"
        assert data["payload"] == "AP8="
        assert data["numbers"] == [1, 2]
        assert data["tags"] == ["x"]
        assert (data["mood"], data["priority"], data["direction"]) == ("angry", 2, 2)
        assert type(data["priority"]) is int
        assert data["attachment"] == {"name": "a.png", "data": "cG5n"}
        assert data["shapes"] == [
            {"_type": "Circle", "label": "c", "radius": 2.0},
            {"_type": "Square", "label": "s", "side": 3},
        ]
        assert data["inner"]["_type"] == "Text"
        assert data["inner"]["text"] == "hi"
        assert (data["id"], data["turn"], data["interruptible"]) == (frame.id, 4, False)
        assert "callback" not in data
        back = frame_from_dict(data)
        assert isinstance(back, RichFrame)
        assert [type(s) for s in back.shapes] == [Circle, Square]

    def test_metrics_data_keep_their_concrete_type(self) -> None:
        """The items of ``MetricsFrame.data`` come back as the subclasses they were."""
        frame = MetricsFrame(data=[Latency("llm", value=0.25, label="m"), Count("llm")])
        back = loads(dumps(frame))
        assert isinstance(back, MetricsFrame)
        assert [type(d) for d in back.data] == [Latency, Count]
        assert back == frame
        assert isinstance(back.data, tuple)
        assert converter.structure(converter.unstructure(back.data[0], MetricsData), MetricsData)


class TestWhatIsNotSerialized:
    def test_an_error_frame_loses_its_exception_but_keeps_the_text(self) -> None:
        """``ErrorFrame.exception`` is declared not serialized: it comes back as ``None``;
        the message, category and flags survive."""
        frame = ErrorFrame(
            "boom: timeout",
            fatal=True,
            exception=TimeoutError("boom"),
            category=Kind.TIMEOUT,
            source="llm",
        )
        data = frame_to_dict(frame)
        assert "exception" not in data
        back = frame_from_dict(data)
        assert isinstance(back, ErrorFrame)
        assert back.exception is None
        assert (back.error, back.fatal, back.category, back.source) == (
            "boom: timeout",
            True,
            Kind.TIMEOUT,
            "llm",
        )

    def test_a_field_declared_not_serialized_comes_back_as_its_default(self) -> None:
        """A ``NOT_SERIALIZED`` field is left out and read back with its default."""
        back = loads(dumps(RichFrame(b"", callback=lambda: None)))
        assert isinstance(back, RichFrame)
        assert back.callback is None

    def test_undeclared_exception_and_callable_fields_are_refused(self) -> None:
        """Exception or callable fields that are not declared ``NOT_SERIALIZED`` raise a
        ``SerializationError`` naming the field, instead of being dropped."""
        with pytest.raises(SerializationError, match=r"CarriesExceptions\.error holds an exc"):
            frame_to_dict(CarriesExceptions(ValueError("x")))
        with pytest.raises(SerializationError, match=r"CarriesCallable\.callback holds a call"):
            frame_to_dict(CarriesCallable())
        with pytest.raises(SerializationError, match="NOT_SERIALIZED but has no default"):
            frame_to_dict(NoDefault(object()))

    def test_any_fields_must_hold_json_data(self) -> None:
        """An ``Any`` field holding something that is not JSON data is refused, naming the
        field; tuples inside it come back as lists."""
        with pytest.raises(SerializationError, match=r"RichFrame\.extra\['k'\] holds a set"):
            frame_to_dict(RichFrame(b"", extra={"k": {1}}))
        with pytest.raises(SerializationError, match="non-string key 1"):
            frame_to_dict(RichFrame(b"", extra={1: 2}))
        back = loads(dumps(RichFrame(b"", extra=(1, (2, 3)))))
        assert isinstance(back, RichFrame)
        assert back.extra == [1, [2, 3]]

    def test_bad_input_gives_clear_errors(self) -> None:
        """Unknown types, missing fields, bad base64 and non-JSON text are reported clearly."""
        with pytest.raises(SerializationError, match="unknown Frame type 'NoSuchFrame'"):
            frame_from_dict({"_type": "NoSuchFrame"})
        with pytest.raises(SerializationError, match="needs a string '_type' key"):
            frame_from_dict({"text": "hi"})
        with pytest.raises(SerializationError, match="cannot read a Text"):
            frame_from_dict({"_type": "Text"})
        with pytest.raises(SerializationError, match="invalid base64"):
            frame_from_dict({"_type": "RichFrame", "payload": "***"})
        with pytest.raises(SerializationError, match="not JSON"):
            loads("{nope")
        with pytest.raises(SerializationError, match="a JSON object"):
            loads("[1, 2]")
        with pytest.raises(SerializationError, match="expected a Text, got 'Ping'"):
            converter.structure(frame_to_dict(Ping(1)), Text)
        with pytest.raises(TypeError, match="takes a Frame"):
            frame_to_dict("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes an attrs class"):
            register_tagged_base(int)


class TestRegistry:
    def test_frames_defined_later_are_found_without_registration(self) -> None:
        """A frame class defined after the first (de)serialization works at once."""
        assert loads(dumps(Text("warm up"))) == Text("warm up")

        @attrs.frozen
        class LateFrame(DataFrame):
            value: int = 0

        assert loads(dumps(LateFrame(3))) == LateFrame(3)
        assert frame_from_dict({"_type": "LateFrame", "value": 5}) == LateFrame(5)

    def test_classes_sharing_a_name_use_their_qualified_name(self) -> None:
        """When two live frame classes share a name, both are tagged with their qualified
        name so neither is mistaken for the other."""

        def make(kind: str) -> type[Any]:
            @attrs.frozen
            class Twin(DataFrame):
                kind: str = ""

            Twin.__qualname__ = f"Twin{kind}.Twin"
            return Twin

        first, second = make("A"), make("B")
        a, b = first("a"), second("b")
        tag_a, tag_b = frame_to_dict(a)[TYPE_KEY], frame_to_dict(b)[TYPE_KEY]
        assert tag_a != tag_b
        assert tag_a.endswith("TwinA.Twin")
        assert type(loads(dumps(a))) is first
        assert type(loads(dumps(b))) is second
        with pytest.raises(SerializationError, match="several classes are called 'Twin'"):
            frame_from_dict({"_type": "Twin", "kind": "?"})


class TestRecording:
    async def test_a_recorded_session_reads_back_and_replays(
        self, tmp_path: Path, autojump_clock: object
    ) -> None:
        """``FrameRecorder`` writes what reaches both ends as JSON lines; ``read_recording``
        yields the same frames, and feeding them to a new task replays the session."""
        path = tmp_path / "session.jsonl"
        frames: list[Frame] = [Ping(1), Text("t"), Ping(2)]
        task = PipelineTask(Incr())
        with FrameRecorder(path) as recorder:
            recorder.attach(task)
            await task.queue_frames(frames)
            await task.queue_frame(Ping(9), FrameDirection.UPSTREAM)
            await task.end()
            await task.run()
        assert recorder.written >= 5  # start, 2 pings, text, upstream ping, end
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert {line["direction"] for line in lines} == {"downstream", "upstream"}
        assert all(isinstance(line["time"], float) for line in lines)
        recorded = list(read_recording(path, direction=FrameDirection.DOWNSTREAM))
        assert [type(f).__name__ for f in recorded] == [
            "StartFrame",
            "Ping",
            "Text",
            "Ping",
            "EndFrame",
        ]
        assert numbers(recorded) == [2, 3]
        upstream = list(read_recording(path, direction=FrameDirection.UPSTREAM))
        assert numbers(upstream) == [10]  # Incr handles upstream pings too
        replayed = await run_frames([Incr()], [f for f in recorded if isinstance(f, Ping)])
        assert numbers(replayed.downstream) == [3, 4]

    async def test_a_frame_that_cannot_be_recorded_is_skipped_with_a_warning(
        self, tmp_path: Path, autojump_clock: object
    ) -> None:
        """Recording never breaks a session: an unserializable frame is skipped, counted and
        logged (unless ``strict=True``)."""
        path = tmp_path / "r.jsonl"
        with capture_logs() as logs, FrameRecorder(path) as recorder:
            await run_frames([Incr()], [CarriesCallable(), Ping(1)])
            task = PipelineTask(Incr())
            recorder.attach(task, (FrameDirection.DOWNSTREAM,))
            await task.queue_frames([CarriesCallable(), Ping(1)])
            await task.end()
            await task.run()
        assert recorder.skipped == 1
        assert any(e["event"] == "frame not recorded" for e in logs)
        assert numbers(list(read_recording(path))) == [2]
        strict = FrameRecorder(tmp_path / "strict.jsonl", strict=True)
        with pytest.raises(SerializationError):
            strict(CarriesCallable(), FrameDirection.DOWNSTREAM)
        strict.close()
        strict.close()
        strict(Ping(1), FrameDirection.DOWNSTREAM)
        assert strict.skipped == 1

    def test_a_damaged_recording_names_the_line(self, tmp_path: Path) -> None:
        """A line that is not a recorded frame raises with its line number."""
        path = tmp_path / "bad.jsonl"
        good = json.dumps({"direction": "downstream", "time": 0.0, "frame": frame_to_dict(Ping())})
        path.write_text(good + "\n\n" + '{"direction": "sideways"}\n')
        with pytest.raises(SerializationError, match=r"bad\.jsonl:3: not a recorded frame"):
            list(read_recording(path))
