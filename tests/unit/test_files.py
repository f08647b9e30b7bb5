"""Atomic file writes: contents, mode, directories created, and unchanged files left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kwire.base.files import atomic_write, write_if_changed


def test_atomic_write_and_write_if_changed(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "token"
    atomic_write(p, "secret\n", mode=0o600)
    assert p.read_text() == "secret\n" and stat.S_IMODE(p.stat().st_mode) == 0o600
    before = p.stat().st_ino
    assert write_if_changed(p, b"secret\n", mode=0o600) is False
    assert p.stat().st_ino == before  # not rewritten
    assert write_if_changed(p, "new\n", mode=0o600) is True
    assert p.read_text() == "new\n" and p.stat().st_ino != before
    assert sorted(os.listdir(p.parent)) == ["token"]  # no temporary files left behind
