"""einhorn.core.record behaves as `dataclasses` for everything einhorn uses (the type checker sees dataclasses)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from einhorn.core import record

IMPLEMENTATIONS = [pytest.param(dataclasses, id="dataclasses"), pytest.param(record, id="record")]


def shapes(mod: ModuleType) -> dict[str, Any]:
    """The same classes, made by either module."""

    @mod.dataclass(frozen=True, slots=True)
    class Point:
        """A point."""

        x: int
        y: str = "y"
        tags: tuple[str, ...] = mod.field(default=())
        note: str = mod.field(default="", compare=False)

        @property
        def twice(self) -> int:
            return self.x * 2

    @mod.dataclass(frozen=True)
    class Derived:
        base: int
        double: int = mod.field(init=False, repr=False, compare=False)

        def __post_init__(self) -> None:
            object.__setattr__(self, "double", self.base * 2)

    @mod.dataclass
    class Mutable:
        items: list[int] = mod.field(default_factory=list)
        name: str = "m"

    @mod.dataclass(slots=True, eq=False)
    class Identity:
        value: int

    @mod.dataclass(frozen=True, slots=True)
    class Empty:
        pass

    @mod.dataclass(frozen=True, slots=True)
    class OwnRepr:
        value: int

        def __repr__(self) -> str:
            return "mine"

    return {"Point": Point, "Derived": Derived, "Mutable": Mutable, "Identity": Identity, "Empty": Empty, "OwnRepr": OwnRepr}


def outcome(action: Callable[[], object]) -> tuple[str, object]:
    try:
        return ("ok", repr(action()))  # repr: each module made its own classes
    except Exception as error:  # the comparison is of the error's kind and text
        kind = "FrozenInstanceError" if isinstance(error, dataclasses.FrozenInstanceError | record.FrozenInstanceError) else type(error).__name__
        return (kind, str(error).replace("Point.__init__()", "__init__()"))


def behaviour(mod: ModuleType) -> list[tuple[str, object]]:
    c = shapes(mod)
    point = c["Point"](1)
    other = c["Point"](1, "y", (), note="ignored by ==")
    mutable = c["Mutable"]()
    mutable.items.append(1)
    point_class = c["Point"]
    matched = None
    match point:
        case point_class(x, y):
            matched = (x, y)
    checks: list[Callable[[], object]] = [
        lambda: repr(point),
        lambda: repr(c["Derived"](3)),
        lambda: repr(mutable),
        lambda: repr(c["Empty"]()),
        lambda: repr(c["OwnRepr"](1)),
        lambda: point == other,
        lambda: hash(point) == hash(other),
        lambda: point == c["Point"](2),
        lambda: point == (1, "y"),
        lambda: c["Empty"]() == c["Empty"](),
        lambda: c["Derived"](3).double,
        lambda: c["Derived"](3) == c["Derived"](3),
        lambda: mutable == c["Mutable"]([1]),
        lambda: c["Mutable"]().items is not c["Mutable"]().items,
        lambda: c["Mutable"].__hash__ is None,
        lambda: c["Identity"](1) == c["Identity"](1),
        lambda: hasattr(point, "__dict__"),
        lambda: point.twice,
        lambda: c["Point"].__match_args__,
        lambda: matched,
        lambda: c["Point"].__doc__,
        lambda: c["Point"].__qualname__.rsplit(".", 1)[-1],
        lambda: setattr(point, "x", 5),
        lambda: delattr(point, "x"),
        lambda: mod.replace(point, y="z"),
        lambda: mod.replace(c["Derived"](3), base=4).double,
        lambda: mod.replace(point, nope=1),
        lambda: mod.replace(point, x=2, nope=1),
        lambda: mod.replace(point, y="z", x=3),
        lambda: mod.replace(point),
        lambda: c["Point"](),
        lambda: c["Point"](1, z=2),
        lambda: [f.name for f in mod.fields(point)],
        lambda: [f.name for f in mod.fields(c["Derived"])],
    ]
    return [outcome(check) for check in checks]


def test_record_behaves_as_dataclasses() -> None:
    expected = behaviour(dataclasses)
    got = behaviour(record)
    assert [(i, g) for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e] == []


@pytest.mark.parametrize("mod", IMPLEMENTATIONS)
def test_a_mutable_default_and_a_default_before_a_required_field_are_refused(mod: ModuleType) -> None:
    with pytest.raises(ValueError, match="mutable default"):

        @mod.dataclass
        class Bad:
            items: list[int] = []

    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        @mod.dataclass
        class Order:
            a: int = 0
            b: int


def test_record_replace_and_fields_also_take_real_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Real:
        a: int
        b: int = 2

    assert record.replace(Real(1), b=3) == Real(1, 3)
    assert [f.name for f in record.fields(Real)] == ["a", "b"]


def test_the_master_does_not_import_dataclasses_or_inspect() -> None:
    """`dataclasses` imports `inspect` (with ast, dis, tokenize: over 1.5 MiB of the master's RSS for its whole life)."""
    probe = "import sys, einhorn.cli, einhorn.core.record; print(sorted({'dataclasses', 'inspect', 'ast', 'dis'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_a_records_init_is_compiled_at_its_first_call_only() -> None:
    """Issue 14: compiling every record's `__init__` at import cost each start of the master (and of its
    upgrade check) ~7 ms, for classes most runs never make."""
    compiled: list[str] = []
    real = record._init_function  # type: ignore[attr-defined]

    def counting(cls: type, *args: object) -> object:
        compiled.append(cls.__name__)
        return real(cls, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record, "_init_function", counting)

        @record.dataclass(frozen=True, slots=True)
        class Lazy:
            a: int
            b: str = "b"

        assert compiled == []
        first, second = Lazy(1), Lazy(2, b="c")
    assert compiled == ["Lazy"]  # once: the first call put the compiled one in its place
    assert (first.a, first.b, second.a, second.b) == (1, "b", 2, "c")
    assert Lazy.__init__.__qualname__.endswith("Lazy.__init__") and "a" in Lazy.__init__.__annotations__
