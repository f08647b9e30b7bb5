"""A pod container's volumes bind-mounted at their `mountPath` in its own mount namespace: what the OCI runtime's
mounts are to a Kubernetes container.

contain.py applies it in the container's private mount namespace (`/` is rslave there: mounts do not propagate
to the node). Each mount is a bind mount (read-only when asked). The container's root is the node's filesystem, so a
mountPath whose directory does not exist on the node is made *in this namespace only*: the nearest existing parent
is replaced by a tmpfs "mirror" that bind-mounts each of its entries and adds the missing directory (for `/`
itself, the mirror becomes the container's root, which contain.py pivots into). Nothing is created on the node's
filesystem.

Stdlib only: contain.py, a script run with `python -S`, imports it from beside itself.
"""

from __future__ import annotations

import ctypes
import os
import stat

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = _libc.mount(
        src.encode(), dst.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")


class View:
    """The namespace's filesystem as this process builds it."""

    def __init__(self, stage: str) -> None:
        self.stage = stage  # an existing, private directory: the tmpfs mirrors are made under it
        self.ours: set[str] = set()  # directories on our own tmpfs, where creating entries touches no node file
        self.count = 0
        self.root = ""  # a mirror of "/" to chroot into at the end

    def resolve(self, path: str, depth: int = 0) -> str:
        """`path` with its symlinks followed inside this view (an absolute link target is taken from the view's
        root, as the container will see it once it is chrooted)."""
        if depth > 32:
            raise OSError(40, f"too many levels of symbolic links in {path}")
        cur = "/"
        for part in [p for p in path.split("/") if p]:
            nxt = os.path.join(cur, part)
            real = self._real(nxt)
            if os.path.islink(real):
                target = os.readlink(real)
                nxt = self.resolve(
                    os.path.normpath(target if target.startswith("/") else os.path.join(cur, target)), depth + 1
                )
            cur = nxt
        return cur

    def _real(self, path: str) -> str:
        """Where `path` (as the container will see it) is now reachable from this process."""
        return self.root + path if self.root else path

    def _mirror(self, parent: str) -> str:
        """Replace `parent` by a tmpfs holding binds of its entries; the tmpfs directory."""
        self.count += 1
        m = os.path.join(self.stage, f"m{self.count}")  # on the stage's tmpfs
        os.mkdir(m, 0o755)
        real_parent = self._real(parent)
        for e in os.scandir(real_parent):
            dst = os.path.join(m, e.name)
            if e.is_symlink():
                os.symlink(os.readlink(e.path), dst)
                continue
            if e.is_dir(follow_symlinks=False):
                os.mkdir(dst)
            else:
                open(dst, "a").close()  # noqa: SIM115 - a placeholder to bind onto
            _mount(e.path, dst, None, MS_BIND | MS_REC)
        if parent == "/":
            self.root = m
        else:
            _mount(m, real_parent, None, MS_BIND | MS_REC)
        self.ours.add(parent)
        return m

    def ensure(self, path: str, *, is_dir: bool) -> None:
        """Make `path` exist in this view, creating nothing on the node."""
        real = self._real(path)
        if os.path.lexists(real):
            return
        parent = os.path.dirname(path)
        self.ensure(parent, is_dir=True)
        if parent not in self.ours:
            self._mirror(parent)
        real = self._real(path)  # the view may have a new root now
        if is_dir:
            os.mkdir(real)
            self.ours.add(path)
        else:
            open(real, "a").close()  # noqa: SIM115

    def bind(self, src: str, dst: str, *, read_only: bool) -> None:
        is_dir = stat.S_ISDIR(os.stat(src).st_mode)
        dst = self.resolve(dst)
        self.ensure(dst, is_dir=is_dir)
        real = self._real(dst)
        _mount(src, real, None, MS_BIND | MS_REC)
        if read_only:
            _mount(src, real, None, MS_BIND | MS_REMOUNT | MS_RDONLY)

    def enter(self) -> None:
        if self.root:
            os.chroot(self.root)
        os.chdir("/")
