"""einhorn.extension: another package's C module without that package, and without registering it (issue 14)."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

import einhorn.core
from einhorn.extension import c_module


def run(probe: str) -> str:
    """`probe` in a fresh interpreter (what it has imported is the point): its output."""
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def test_the_master_holds_the_c_map_without_the_immutables_package() -> None:
    """immutables' `__init__` imports typing (over half a megabyte of RSS) for protocols the master never uses."""
    probe = """
import sys
import einhorn.cli
from einhorn.core.indexed import Children
print(type(Children.of({})._map).__module__, sorted({"typing", "immutables", "immutables._map", "immutables._protocols"} & set(sys.modules)))
"""
    assert run(probe) == "immutables._map []"


PACKAGE_AFTERWARDS = """
import collections.abc, pickle, sys
from einhorn.core.indexed import Children
ours = Children.of({})._map
import immutables
from immutables import Map, MapItems, MapKeys, MapMutation, MapValues
print(immutables.__spec__.origin == immutables.__file__ and immutables.__file__.endswith("/immutables/__init__.py"))
print("immutables._protocols" in sys.modules, immutables.__version__ == sys.modules["immutables._version"].__version__)
print(type(ours) is Map is sys.modules["immutables._map"].Map, sys.modules["immutables._map"].__spec__.name)
print(isinstance(ours, collections.abc.Mapping), pickle.loads(pickle.dumps(ours.set(1, "a"))) == Map({1: "a"}))
mutation = Map(a=1).mutate()
mutation["b"] = 2
print(Map(a=1).set("b", 2) == Map(a=1, b=2) == mutation.finish(), MapMutation.__module__, list(Map(a=1).keys()))
"""


def test_a_later_import_gets_the_real_package_with_the_same_map_type() -> None:
    """The C module is single-phase: Python initialises it once per process. Loaded privately, then
    imported with its package: the package is the real one, complete, and its `Map` the master's own."""
    assert run(PACKAGE_AFTERWARDS).splitlines() == ["True", "True True", "True immutables._map", "True True", "True immutables._protocols ['a']"]


def test_an_already_imported_immutables_is_used() -> None:
    probe = """
import immutables, sys
from einhorn.core.indexed import Children
print(type(Children.of({})._map) is immutables.Map, "immutables._protocols" in sys.modules)
"""
    assert run(probe) == "True True"


def test_sys_modules_is_left_as_it_was() -> None:
    """setproctitle's C module is multi-phase, immutables' single-phase (it registers itself as it is made)."""
    probe = """
import sys
from einhorn.extension import c_module
before = set(sys.modules)
modules = [c_module("immutables", "_map"), c_module("setproctitle", "_setproctitle")]
print([module.__name__ for module in modules], sorted(set(sys.modules) - before - {"importlib", "importlib.machinery"}))
"""
    assert run(probe) == "['immutables._map', 'setproctitle._setproctitle'] []"


def test_a_package_without_that_c_module() -> None:
    assert c_module("einhorn", "no_such_module") is None
    assert c_module("no_such_package_here", "_map") is None


@pytest.mark.parametrize("value", [1, "x" * 300, None])
def test_assert_never_says_what_typing_says(value: object) -> None:
    with pytest.raises(AssertionError) as ours:
        einhorn.core.assert_never(value)  # type: ignore[arg-type]
    with pytest.raises(AssertionError) as theirs:
        typing.assert_never(value)  # type: ignore[arg-type]
    assert str(ours.value) == str(theirs.value)
