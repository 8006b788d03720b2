"""Another package's C extension module, loaded without that package and without registering it (issue 14).

Some packages' `__init__` imports far more than their C module needs: immutables' brings
`typing` (over half a megabyte for an idle master) for its protocols, setproctitle's brings
`logging` (and `threading`, `traceback`...). The master holds only the C module.

Privately: `sys.modules` is left exactly as it was, so a program that imports the package
afterwards (a preloaded app, `-p`) gets the real package, complete, by its own import. A C module
with single-phase initialisation (immutables' `_map`) puts itself into `sys.modules` as it is
created; it is taken out again. Python initialises such a module once per process and file: it
keeps a copy of the module's namespace, and a later import of the same file makes a new module
from that copy. So the package imported later holds the very `Map` type einhorn holds
(tests/unit/test_extension.py).

A leaf: the standard library only (the core's persistent map is built on it: einhorn/core/indexed.py).
"""

from __future__ import annotations

import sys
from importlib.machinery import ExtensionFileLoader, PathFinder
from types import ModuleType


def c_module(package: str, name: str) -> ModuleType | None:
    """The C module `package.name`, from where `import package` would find it, without running the
    package's `__init__`; the module already imported if it is; None when the package or its C
    module cannot be found on `sys.path` (the caller imports the package as usual)."""
    qualified = f"{package}.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    found = PathFinder.find_spec(package)
    if found is None or not found.submodule_search_locations:
        return None
    spec = PathFinder.find_spec(qualified, found.submodule_search_locations)
    if spec is None or not isinstance(spec.loader, ExtensionFileLoader):
        return None
    try:
        module = spec.loader.create_module(spec)
        spec.loader.exec_module(module)
    except ImportError:
        return None
    finally:
        sys.modules.pop(qualified, None)  # (single-phase initialisation registered it: not einhorn's name)
    return module
