"""What long-lived processes import: each heavy package kept out of a process that does not need it is several MB
of RSS in every lab node (bench/lab.py reports the memory per role). A fresh interpreter imports the process's
entry modules and reports which of the heavy packages got loaded."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(sys.modules)))
"""


def _modules(*entry: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *entry], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return set(json.loads(out))


def test_the_lab_supervisor_imports_neither_asyncio_nor_the_api_stack() -> None:
    loaded = _modules("kwire.cli.main", "kwire.lab.supervisor")
    for heavy in ("asyncio", "ssl", "aiohttp", "cryptography", "jwt", "celpy", "pyroute2", "dns", "croniter"):
        assert heavy not in loaded, f"the supervisor imports {heavy}"


def test_the_agent_imports_no_cryptography_and_only_the_netlink_parts_of_pyroute2() -> None:
    loaded = _modules("kwire.cli.main", "kwire.agent.agent")
    assert "pyroute2.iproute" in loaded  # it does program links and routes
    for heavy in ("cryptography", "jwt", "celpy", "croniter", "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.nl80211"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in loaded), f"the agent imports {heavy}"


def test_pyroute2_names_outside_kwires_subset_still_resolve() -> None:
    """kwire/kernel/pyroute.py skips pyroute2's package __init__; any other name runs it on first use."""
    probe = "import kwire.kernel.pyroute, pyroute2; from pyroute2 import NDB; print(NDB.__name__, pyroute2.IPRoute)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.startswith("NDB <class 'pyroute2.iproute.linux.IPRoute'>")
