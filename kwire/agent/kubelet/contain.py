"""A container's confinement, applied between the runtime and the container's program: what runc's container
init does. Run as `python3 -S contain.py SPEC_JSON -- PROGRAM [ARGS...]`; stdlib only (starts in ~20 ms).

The runtime starts it in the pod's network namespace with a private mount namespace (`ip netns exec`, or `unshare
--mount` for hostNetwork pods; `/` is rslave there, so nothing made here reaches the node), in the pod's UTS
namespace and, unless the pod has hostPID, as PID 1 of a PID namespace of its own (`unshare --pid --fork`). Here:

1. The node's root filesystem is the container's image: every mount is made read-only (mount_setattr with
   AT_RECURSIVE), with a private writable tmpfs on /tmp and /var/tmp unless readOnlyRootFilesystem.
2. A fresh /proc for the PID namespace; /dev a tmpfs with runc's default devices (null, zero, full, random,
   urandom, tty, a new devpts instance with ptmx, shm); /sys read-only. A privileged container keeps the node's
   /dev and a writable /sys, as runc gives it.
3. The container's volumes at their mountPaths (mounts.py), nodev unless privileged (with /dev read-only, a
   device node made with CAP_MKNOD never opens: runc leaves that to the device cgroup, and kwire has none).
4. Masked paths, as runc's maskedPaths/readonlyPaths: kwire's data, the node's namespaces and other pods' files
   (the `masks` the kubelet names: /var/lib/kwire, /etc/kwire, /run/netns, the agent's data dir, ...) and /proc's
   kcore, keys, timer_list, sysrq-trigger, ... get an empty read-only tmpfs (a file gets /dev/null).
5. pivot_root when the volumes needed a new root (a mountPath under a directory the node lacks), so no chroot
   is left to escape from.
6. Identity: supplementary groups, gid, uid (setres*), the capability bounding set cut to the container's set,
   inheritable and ambient emptied (so a root process execs with exactly that set as effective and permitted, and
   a non-root one with none, as under runc), no_new_privs when asked.
7. exec: the program, under tini (Docker's --init) when this process is its PID namespace's init, so signals are
   forwarded and orphans reaped.

`"mode": "exec"` applies only step 6, for `kubectl exec`, hooks and exec probes entered with `nsenter -t PID`.
With `"console": true` (a `tty: true` container) the terminal is opened in the container's own devpts and its
master sent to the runtime with the ready byte, as runc's console socket does.

Hand-written with ctypes (prctl, capset, mount_setattr, pivot_root) rather than python-prctl or libcap bindings:
this script runs as `python -S` with the stdlib only, for a ~20 ms start per container, and those bindings are
compiled extensions of a package last released years ago; util-linux `setpriv` could drop capabilities but not
build the mounts, and one more exec per start buys nothing.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import socket
import stat
import struct
import sys
import termios
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

if __package__:
    from kwire.agent.kubelet.mounts import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, View, _mount
else:  # run as a script: mounts.py is beside this file, on sys.path[0]
    from mounts import MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, View, _mount  # type: ignore[import-not-found,no-redef]

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 1
MOUNT_ATTR_NODEV = 4
SYS_MOUNT_SETATTR = 442  # x86_64 and arm64 alike (the unified syscall table)
SYS_PIVOT_ROOT = 155 if os.uname().machine == "x86_64" else 41
MNT_DETACH = 2
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
TINI = shutil.which("tini") or "/usr/bin/tini"
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")  # runc's default devices (with ptmx and pts)
PROC_MASKED = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
PROC_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_libc = ctypes.CDLL(None, use_errno=True)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def set_readonly(path: str, *, readonly: bool, nodev: bool = False) -> None:
    """Make the mount at `path` and every mount below it read-only (or writable again), and with `nodev` unable
    to open device nodes (what the device cgroup ensures under runc: kwire has none)."""
    flag = MOUNT_ATTR_NODEV if nodev else 0
    attr = MountAttr((MOUNT_ATTR_RDONLY if readonly else 0) | flag, 0 if readonly else MOUNT_ATTR_RDONLY, 0, 0)
    rc = _libc.syscall(
        SYS_MOUNT_SETATTR, AT_FDCWD, path.encode(), AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(rc, f"mount_setattr {path}")


def make_dev(stage: str, real: str) -> None:
    """A minimal /dev at `real` (runc's default devices), built on the stage's tmpfs."""
    dev = os.path.join(stage, "dev")
    os.mkdir(dev, 0o755)
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in DEVICES:
        dst = os.path.join(dev, name)
        open(dst, "a").close()  # noqa: SIM115 - a placeholder to bind the node's device onto
        _mount(f"/dev/{name}", dst, None, MS_BIND)
    os.mkdir(os.path.join(dev, "pts"), 0o755)
    _mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    os.mkdir(os.path.join(dev, "shm"), 0o1777)
    _mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, os.path.join(dev, name))
    os.symlink("/proc/self/fd/2", os.path.join(dev, "stderr"))
    _mount(dev, dev, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "mode=755,size=65536k")  # no new device nodes
    _mount(dev, real, None, MS_BIND | MS_REC)


def mask(real: str, *, keep: list[str] = []) -> None:  # noqa: B006 - never mutated
    """Hide what is at `real`: an empty read-only tmpfs over a directory, /dev/null over a file. Paths of `keep`
    below it (the interpreter kwire's images run, under a masked home) stay visible, read-only."""
    try:
        st = os.stat(real)
    except OSError:
        return  # nothing there to hide
    if not stat.S_ISDIR(st.st_mode):
        _mount("/dev/null", real, None, MS_BIND)
        return
    inside = [k for k in keep if k.startswith(real.rstrip("/") + "/") and os.path.isdir(k)]
    if not inside:
        _mount("tmpfs", real, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=755")
        return
    fds = [os.open(k, os.O_PATH | os.O_DIRECTORY) for k in inside]  # reachable once `real` is covered
    try:
        _mount("tmpfs", real, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for k, fd in zip(inside, fds, strict=True):
            os.makedirs(k, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
            _mount(k, k, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        _mount(real, real, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    finally:
        for fd in fds:
            os.close(fd)


def readonly(real: str) -> None:
    if os.path.exists(real):
        _mount(real, real, None, MS_BIND | MS_REC)
        _mount(real, real, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def pivot(root: str) -> None:
    """pivot_root into `root` (a mount point) and detach the old root, as runc does."""
    _mount(root, root, None, MS_BIND | MS_REC)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")


def build_view(spec: dict[str, Any]) -> None:
    """Steps 1 to 5 of the module docstring."""
    stage = str(spec["stage"])
    privileged = bool(spec.get("privileged"))
    # the volumes' sources, held open: /tmp (a hostPath there) is about to be covered by the container's own
    sources = [
        (os.open(str(src), os.O_PATH), os.path.normpath(str(dst)), bool(ro))
        for src, dst, ro in spec.get("mounts") or []
    ]
    set_readonly("/", readonly=True)
    _mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, "mode=700")  # the mirrors' home (a new root's too)
    stage = f"/proc/self/fd/{os.open(stage, os.O_PATH | os.O_DIRECTORY)}"  # reachable whatever covers its path
    if privileged:
        set_readonly("/dev", readonly=False)
        set_readonly("/sys", readonly=False)
    else:
        make_dev(stage, "/dev")
    if spec.get("pidns"):
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    if not spec.get("readOnlyRoot"):
        for tmp in ("/tmp", "/var/tmp"):
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                _mount("tmpfs", tmp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    view = View(stage)
    for fd, dst, ro in sources:
        view.bind(f"/proc/self/fd/{fd}", dst, read_only=ro)
        os.close(fd)
        # the bind copied the read-only flag step 1 gave every mount: a writable volume is writable again; a device
        # node made in a volume opens only in a privileged container
        if not ro or not privileged:
            set_readonly(view._real(view.resolve(dst)), readonly=ro, nodev=not privileged)
    masks = [str(m) for m in spec.get("masks") or []]
    if not privileged:
        masks += PROC_MASKED
    # the interpreter and the kwire checkout that kwire's built-in images run are part of the "image"
    here = os.path.dirname(os.path.abspath(__file__))
    keep = [
        view._real(os.path.realpath(k))
        for k in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(os.path.dirname(here))))
    ]
    for path in masks:
        try:
            real = view._real(view.resolve(os.path.normpath(path)))
        except OSError:
            continue
        mask(real, keep=keep)
    if not privileged:
        for path in PROC_READONLY:
            readonly(view._real(path))
    if view.root:
        pivot(view.root)
    else:
        os.chdir("/")


def open_console() -> int:
    """`tty: true`: a terminal of the container's devpts as this process's stdin, stdout, stderr and controlling
    terminal, in a session of its own; its master, for the runtime (as runc's console socket hands it over).
    (kwire/base/pty.py's open_pty does the same for exec; this script imports nothing of kwire.)"""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR)
    try:
        os.setsid()
    except PermissionError:
        pass  # already a session leader (the first process of the runtime's new session)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)
    return master


def held() -> set[int]:
    """The capabilities this process holds (what it can keep; the node's runtime may lack some itself)."""
    for line in open("/proc/self/status"):  # noqa: SIM115 - read once at start-up
        if line.startswith("CapBnd:"):
            bits = int(line.split()[1], 16)
            return {c for c in range(64) if bits >> c & 1}
    return set()


def become(spec: dict[str, Any]) -> None:
    """Step 6: groups, gid, capabilities, uid, no_new_privs."""
    keep = {int(c) for c in spec.get("caps") or []} & held()
    last = int(open("/proc/sys/kernel/cap_last_cap").read())  # noqa: SIM115 - read once at start-up
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on kernels without ambient: none then
    mask_lo = sum(1 << c for c in keep if c < 32)
    mask_hi = sum(1 << (c - 32) for c in keep if c >= 32)
    header = CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (CapData * 2)(CapData(mask_lo, mask_lo, 0), CapData(mask_hi, mask_hi, 0))
    gid, uid = int(spec.get("gid") or 0), int(spec.get("uid") or 0)
    os.setgroups([int(g) for g in spec.get("groups") or []])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # a non-root uid loses its permitted and effective sets here, as under runc
    if uid == 0:
        _check(_libc.capset(ctypes.byref(header), data), "capset")
    if spec.get("noNewPrivs"):
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: contain.py SPEC_JSON -- PROGRAM [ARGS...]\n")
        return 2
    spec = json.loads(argv[0])
    program = argv[2:]
    console = -1
    try:
        if spec.get("mode") != "exec":
            build_view(spec)
            if spec.get("console"):
                console = open_console()
        become(spec)
    except OSError as exc:
        sys.stderr.write(f"kwire: cannot set up the container: {exc}\n")
        return 128
    ready = int(spec.get("readyFd", -1))
    if ready >= 0:
        # the runtime counts the run as started from here (a forking `unshare` above holds the socket open too,
        # so its end would come only when the container ends), and takes the terminal's master
        try:
            with socket.socket(fileno=ready) as sock:
                socket.send_fds(sock, [b"1"], [console] if console >= 0 else [])
        except OSError:
            pass
        if console >= 0:
            os.close(console)
    if spec.get("mode") != "exec" and spec.get("pidns") and os.getpid() == 1:
        program = [TINI, "-g", "--", *program]
    try:
        os.execvp(program[0], program)
    except OSError as exc:
        sys.stderr.write(f'exec: "{program[0]}": {exc.strerror}\n')
        return 128


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
