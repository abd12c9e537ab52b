"""pyroute2 without its package __init__, for a long-lived agent.

`import pyroute2` runs an __init__ that imports every netlink family the
library knows (NDB with sqlite3, IPDB, IPVS, WireGuard, nl80211, plan9,
...): about 6 MiB of a process that uses IPRoute and Conntrack only.
bare_package() registers the package without running it, so the
submodules the caller names are imported alone. Anything later asking the
package for a name it did not get that way (`from pyroute2 import IPDB`)
runs the real __init__ then, into the same module object: nothing breaks,
it only costs what it would have. When pyroute2 is imported already, it is
left as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

PACKAGE = "pyroute2"


def bare_package(name: str = PACKAGE) -> ModuleType:
    """The package's module: registered without running its __init__ (if
    not imported yet), completing itself on the first unknown attribute."""
    found = sys.modules.get(name)
    if found is not None:
        return found
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}")
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attribute: str) -> Any:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        # `from pyroute2 import config` asks for a submodule: import it alone.
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        # A name only __init__ gives: run it now, once.
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module
    return module


bare_package()

from pyroute2.conntrack import Conntrack  # noqa: E402
from pyroute2.iproute.linux import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: E402
from pyroute2.netlink.rtnl import ndmsg  # noqa: E402

__all__ = ["Conntrack", "IPRoute", "NFCTAttrTuple", "NetlinkError", "bare_package", "ndmsg"]
