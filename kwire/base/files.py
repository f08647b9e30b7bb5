"""Writing files so that readers never see half of one: a temporary file in the same directory, fsync, rename; and
private directories and files (0700/0600, as K3s keeps its data dir, keys, tokens and datastore)."""

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


def private_dir(path: str | Path, *subdirs: str) -> Path:
    """`path` (created if missing) and each of `subdirs` under it, readable by their owner only (0700)."""
    p = Path(path)
    for d in (p, *(p / s for s in subdirs)):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    return p


def private_file(path: str | Path, *siblings: str) -> None:
    """Create `path` empty if missing, and make it and the `siblings` that exist (`-wal`, `-shm` suffixes) 0600."""
    p = Path(path)
    os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    for f in (p, *(Path(f"{p}{s}") for s in siblings)):
        with contextlib.suppress(FileNotFoundError):
            f.chmod(0o600)
