"""The binding to the kernel's nftables: an nft script run as one transaction (atomic: all of it or none of it)
through libnftables (ctypes) or the `nft` command, and table listing. Scripts come from `diff.py` only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import shutil
import subprocess
import threading
from typing import Any

log = logging.getLogger(__name__)

NFT = shutil.which("nft") or "/usr/sbin/nft"


class NftError(RuntimeError):
    pass


class _Libnftables:
    """libnftables (the library behind the `nft` command, from Debian's libnftables1) through ctypes.

    One context is kept for the life of the process: it saves starting `nft` for every sync and lets the library
    reuse what it already knows of the ruleset, which is what dominates a small update of a large table (a partial
    proxy sync at 10,000 services: ~105 ms with `nft -f`, well under half that here). The context's netlink socket
    belongs to the network namespace of the thread that created it. (Debian's python3-nftables binding is the same
    ctypes approach, but it is packaged for the system Python only, not for a virtualenv.)
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, script: str) -> None:
        with self.lock:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
            self.lib.nft_ctx_get_output_buffer(self.ctx)  # drain
        if rc != 0:
            raise NftError(f"nft failed: {err.strip()}")


_lib: _Libnftables | None = None
_lib_failed = False


def _library() -> _Libnftables | None:
    global _lib, _lib_failed
    if _lib is None and not _lib_failed:
        try:
            _lib = _Libnftables()
        except (OSError, AttributeError) as exc:
            log.info("libnftables unavailable (%s); using the nft command", exc)
            _lib_failed = True
    return _lib


def apply(script: str, *, check_only: bool = False, use_library: bool = False) -> None:
    """Run an nft script as one transaction in the calling process's network namespace.

    `use_library` runs it through a long-lived libnftables context (for frequent syncs of large tables); only use
    it from a process that stays in one network namespace.
    """
    lib = _library() if use_library and not check_only else None
    if lib is not None:
        lib.run(script)
        return
    cmd = [NFT, "-c", "-f", "-"] if check_only else [NFT, "-f", "-"]
    res = subprocess.run(cmd, input=script, capture_output=True, text=True)
    if res.returncode != 0:
        raise NftError(f"nft failed ({res.returncode}): {res.stderr.strip()}")


def list_table(family: str, table: str) -> dict[str, Any] | None:
    """The table as nft's JSON (None when it does not exist)."""
    res = subprocess.run([NFT, "-j", "list", "table", family, table], capture_output=True, text=True)
    if res.returncode != 0:
        return None
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def table_exists(family: str, table: str) -> bool:
    """Whether the table is there. kube-proxy's iptables mode keeps canary chains to notice that someone flushed
    its rules (a host firewall's `flush ruleset`, say); an nft table of our own is its own canary."""
    return (family, table) in table_names()


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
