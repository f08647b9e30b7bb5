"""pyroute2's netlink classes that kwire uses, imported without running pyroute2's package `__init__`.

`import pyroute2` (and so any `from pyroute2.x import y`, which imports the package first) runs an `__init__`
that imports every protocol pyroute2 speaks: NDB (with sqlite3), IPDB, nl80211, IPVS, devlink, plan9, WireGuard,
taskstats, ... About 22 MB of RSS per process, where the families kwire uses (rtnetlink, conntrack, ethtool,
network namespaces) cost about 8 MB. Every agent and the lab pay it, so this module registers the package
without its `__init__` (pyroute2's submodules import what they need by their full names) and imports only the
submodules below. Nothing else breaks: the package gets a module `__getattr__` (PEP 562) that imports a
submodule by its name (`pyroute2.netns`) and, for any other top-level name (`pyroute2.NDB`), runs pyroute2's own
`__init__` at that moment. It only takes effect when this module is the first to import pyroute2 in the
process, which is why every kwire module imports pyroute2's names from here and never from `pyroute2` itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any


def _register_without_init() -> None:
    if "pyroute2" in sys.modules:
        return  # imported already (by a test, or by a library): nothing to save, nothing to change
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None:  # pragma: no cover - pyroute2 is a dependency
        return
    loader = spec.loader
    pkg: ModuleType = importlib.util.module_from_spec(spec)

    def __getattr__(name: str) -> Any:  # noqa: N807 - PEP 562's name
        try:
            return importlib.import_module(f"pyroute2.{name}")
        except ModuleNotFoundError:
            pass
        del pkg.__getattr__  # the real __init__ below defines every other name
        loader.exec_module(pkg)
        return getattr(pkg, name)

    pkg.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules["pyroute2"] = pkg


_register_without_init()

from pyroute2 import netns  # noqa: E402
from pyroute2.conntrack import Conntrack  # noqa: E402
from pyroute2.ethtool import Ethtool  # noqa: E402
from pyroute2.iproute import IPRoute  # noqa: E402
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple  # noqa: E402
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT  # noqa: E402

__all__ = ["NUD_PERMANENT", "Conntrack", "Ethtool", "IPRoute", "NFCTAttrTuple", "netns"]
