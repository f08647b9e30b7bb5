"""Writing files so that readers never see half of one: a temporary file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one rename (its directory is created if missing)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_if_changed(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> bool:
    """atomic_write unless the file already holds exactly `data`; True when it wrote."""
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        if p.read_bytes() == raw:
            return False
    except FileNotFoundError:
        pass
    atomic_write(p, raw, mode=mode)
    return True
