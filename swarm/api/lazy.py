"""Modules loaded on first use: for a large dependency only some nodes use
(dnspython: the agent's DNS responder, needed once a task on an overlay
network runs), so a process that never uses it never pays its memory.

lazy_modules(package, names) imports the package itself (its __init__ must
be cheap) and puts each submodule into sys.modules and onto the package as
a module whose code runs at its first attribute access
(importlib.util.LazyLoader), so `package.sub.thing` works as after a plain
`import package.sub`. A name already imported is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from types import ModuleType


def lazy_modules(package: str, names: Iterable[str]) -> ModuleType:
    """The package, with the named submodules loaded lazily."""
    parent = importlib.import_module(package)
    for name in names:
        full = f"{package}.{name}"
        module = sys.modules.get(full)
        if module is None:
            spec = importlib.util.find_spec(full)
            if spec is None or spec.loader is None:
                raise ImportError(f"no module named {full!r}")
            loader = importlib.util.LazyLoader(spec.loader)
            spec.loader = loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[full] = module
            loader.exec_module(module)
        setattr(parent, name, module)
    return parent
