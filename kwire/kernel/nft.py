"""nftables transactions: a whole ruleset text applied with one `nft -f -` (atomic: all of it or none of it).

Each kwire concern owns one table (`kwire-proxy`, `kwire-flannel`, ...). A full sync re-creates its table in one
transaction (`add table` + `delete table` + the new contents), so no partial state is ever visible.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from typing import Any

log = logging.getLogger(__name__)

NFT = shutil.which("nft") or "/usr/sbin/nft"


class NftError(RuntimeError):
    pass


def apply(script: str, *, check_only: bool = False) -> None:
    """Run an nft script as one transaction in the calling process's network namespace."""
    cmd = [NFT, "-c", "-f", "-"] if check_only else [NFT, "-f", "-"]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True)
    if res.returncode != 0:
        raise NftError(f"nft failed ({res.returncode}): {res.stderr.strip()}")


def replace_table(family: str, table: str, body: str) -> str:
    """The script that atomically replaces table `family table` with `body` (its chains, sets, maps)."""
    # `add table` first makes `delete table` safe when the table does not exist yet.
    return f"add table {family} {table}\ndelete table {family} {table}\ntable {family} {table} {{\n{body}\n}}\n"


def delete_table_script(family: str, table: str) -> str:
    return f"add table {family} {table}\ndelete table {family} {table}\n"


def list_table(family: str, table: str) -> dict[str, Any] | None:
    """The table as nft's JSON (None when it does not exist)."""
    res = subprocess.run([NFT, "-j", "list", "table", family, table], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def table_names() -> list[tuple[str, str]]:
    res = subprocess.run([NFT, "-j", "list", "tables"], capture_output=True, text=True)
    if res.returncode != 0:
        return []
    out = []
    for item in json.loads(res.stdout).get("nftables", []):
        t = item.get("table")
        if t:
            out.append((t["family"], t["name"]))
    return out
