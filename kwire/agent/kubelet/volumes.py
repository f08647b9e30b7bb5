"""Pod volumes materialised on the node, as kubelet's volume plugins do, under `<data-dir>/pods/<uid>/volumes/`.

- configMap, secret, downwardAPI and projected volumes are written with kubelet's AtomicWriter layout: the files
  live in a timestamped directory `..2024_01_02_03_04_05.123`, `..data` is a symlink to it, and every visible
  entry is a symlink through `..data`; an update writes a new directory and swaps `..data` with one rename, so a
  reader sees the old set or the new one, never a mix. Re-synced periodically, so they follow ConfigMap/Secret
  changes (as kubelet's, within about a sync period). `items` (key -> path, mode), `defaultMode` and `optional`
  as in the API; a missing object that is not optional is a MountError with kubelet's FailedMount text.
- emptyDir: a directory that lives as long as the pod (`medium: Memory` too: the node's disk here).
- hostPath: the node's path (`DirectoryOrCreate`/`FileOrCreate` create it; `Directory`/`File` require it).
- persistentVolumeClaim: the claim's bound PersistentVolume's `hostPath` (or `local`) path, created if missing,
  as K3s's local-path provisioner hands out directories under its storage root.

The container sees them through its mount namespace (mounts.py) at each volumeMount's `mountPath`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import shutil
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kwire.agent.kubelet import podspec
from kwire.agent.kubelet.envconfig import field_values

Obj = dict[str, Any]
# get(kind, namespace, name) -> the object or None; kinds: configmap, secret, persistentvolumeclaim,
# persistentvolume (cluster-scoped: namespace "")
Getter = Callable[[str, str, str], Awaitable[Obj | None]]
DATA = "..data"


class MountError(Exception):
    """A volume cannot be set up; the message is kubelet's FailedMount event text."""


def _decode(kind: str, obj: Obj) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if kind == "configmap":
        for k, v in (obj.get("data") or {}).items():
            out[str(k)] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            try:
                out[str(k)] = base64.b64decode(str(v))
            except (binascii.Error, ValueError):
                continue
    else:
        for k, v in (obj.get("data") or {}).items():
            try:
                out[str(k)] = base64.b64decode(str(v))
            except (binascii.Error, ValueError):
                continue
    return out


def _mode(value: Any, default: int) -> int:
    return int(value) if isinstance(value, int) and 0 <= value <= 0o777 else default


async def _keyed(
    kind: str, src: Obj, *, ns: str, vol: str, get: Getter, default_mode: int
) -> dict[str, tuple[bytes, int]] | None:
    """The files of a configMap or secret source (None: optional and missing)."""
    name = str(src.get("name") or src.get("secretName") or "")
    obj = await get(kind, ns, name)
    if obj is None:
        if src.get("optional"):
            return None
        raise MountError(f'MountVolume.SetUp failed for volume "{vol}" : {kind} "{name}" not found')
    data = _decode(kind, obj)
    mode = _mode(src.get("defaultMode"), default_mode)
    items = src.get("items") or []
    if not items:
        return {k: (v, mode) for k, v in data.items()}
    out: dict[str, tuple[bytes, int]] = {}
    for it in items:
        key = str(it.get("key") or "")
        if key not in data:
            if src.get("optional"):
                continue
            label = "configmap" if kind == "configmap" else "secret"
            raise MountError(
                f'MountVolume.SetUp failed for volume "{vol}" : configmap references non-existent config key: {key}'
                if label == "configmap"
                else f'MountVolume.SetUp failed for volume "{vol}" : references non-existent secret key: {key}'
            )
        out[str(it.get("path") or key)] = (data[key], _mode(it.get("mode"), mode))
    return out


def _downward(
    items: list[Obj], pod: Obj, *, pod_ip: str, host_ip: str, default_mode: int
) -> dict[str, tuple[bytes, int]]:
    fields = field_values(pod, pod_ip=pod_ip, host_ip=host_ip)
    m = podspec.meta(pod)
    out: dict[str, tuple[bytes, int]] = {}
    for it in items:
        fp = str((it.get("fieldRef") or {}).get("fieldPath") or "")
        if fp in ("metadata.labels", "metadata.annotations"):
            d = m.get(fp.split(".", 1)[1]) or {}
            text = "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
        elif it.get("resourceFieldRef"):
            text = "0"
        else:
            text = fields.get(fp, "")
        out[str(it.get("path") or "")] = (text.encode(), _mode(it.get("mode"), default_mode))
    return out


def atomic_write_dir(target: Path, files: dict[str, tuple[bytes, int]]) -> bool:
    """kubelet's AtomicWriter: make `target` show exactly `files` (relative paths), swapping `..data` in one
    rename; nothing is written when the content is already there. True when it changed."""
    target.mkdir(parents=True, exist_ok=True)
    current = target / DATA
    if current.is_symlink():
        old_dir = target / os.readlink(current)
        try:
            same = all(
                (old_dir / rel).read_bytes() == data and (os.stat(old_dir / rel).st_mode & 0o777) == mode
                for rel, (data, mode) in files.items()
            ) and sum(1 for p in old_dir.rglob("*") if p.is_file()) == len(files)
        except OSError:
            same = False
        if same:
            return False
    else:
        old_dir = None
    stamp = dt.datetime.now(dt.UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    new_dir = target / stamp
    new_dir.mkdir()
    for rel, (data, mode) in files.items():
        if not rel or rel.startswith("/") or ".." in Path(rel).parts:
            continue
        p = new_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.chmod(p, mode)
    os.chmod(new_dir, 0o755)
    tmp = target / "..data_tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(stamp, tmp)
    os.replace(tmp, current)
    # visible entries: the top-level names, as symlinks through ..data
    tops = {Path(rel).parts[0] for rel in files if rel and not rel.startswith("/") and ".." not in Path(rel).parts}
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.name not in tops:
            entry.unlink(missing_ok=True)
    for top in tops:
        link = target / top
        if not link.is_symlink():
            os.symlink(f"{DATA}/{top}", link)
    if old_dir is not None and old_dir != new_dir:
        shutil.rmtree(old_dir, ignore_errors=True)
    return True


async def setup(pod: Obj, *, pod_dir: Path, get: Getter, pod_ip: str, host_ip: str) -> dict[str, str]:
    """Set up every volume of the pod (owned by its fsGroup, if any); volume name -> its path on the node. Raises
    MountError."""
    ns = str(podspec.meta(pod).get("namespace") or "default")
    fs = (podspec.spec(pod).get("securityContext") or {}).get("fsGroup")
    fs_group = int(fs) if fs is not None else None
    out: dict[str, str] = {}
    base = pod_dir / "volumes"
    for v in podspec.spec(pod).get("volumes") or []:
        name = str(v.get("name") or "")
        if not name or "/" in name or name.startswith("."):
            continue
        path = base / name
        if isinstance(v.get("configMap"), dict) or isinstance(v.get("secret"), dict):
            kind = "configmap" if isinstance(v.get("configMap"), dict) else "secret"
            src = v["configMap"] if kind == "configmap" else v["secret"]
            keyed = await _keyed(kind, src, ns=ns, vol=name, get=get, default_mode=0o644)
            atomic_write_dir(path, keyed or {})
        elif isinstance(v.get("downwardAPI"), dict):
            d = v["downwardAPI"]
            mode = _mode(d.get("defaultMode"), 0o644)
            atomic_write_dir(
                path, _downward(d.get("items") or [], pod, pod_ip=pod_ip, host_ip=host_ip, default_mode=mode)
            )
        elif isinstance(v.get("projected"), dict):
            p = v["projected"]
            mode = _mode(p.get("defaultMode"), 0o644)
            files: dict[str, tuple[bytes, int]] = {}
            for s in p.get("sources") or []:
                for key, kind in (("configMap", "configmap"), ("secret", "secret")):
                    if isinstance(s.get(key), dict):
                        files.update(await _keyed(kind, s[key], ns=ns, vol=name, get=get, default_mode=mode) or {})
                if isinstance(s.get("downwardAPI"), dict):
                    files.update(
                        _downward(
                            s["downwardAPI"].get("items") or [], pod, pod_ip=pod_ip, host_ip=host_ip, default_mode=mode
                        )
                    )
            atomic_write_dir(path, files)
        elif "emptyDir" in v:
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)
        elif isinstance(v.get("hostPath"), dict):
            out[name] = _host_path(name, str(v["hostPath"].get("path") or ""), str(v["hostPath"].get("type") or ""))
            continue
        elif isinstance(v.get("persistentVolumeClaim"), dict):
            out[name] = await _claim(name, str(v["persistentVolumeClaim"].get("claimName") or ""), ns=ns, get=get)
            continue
        else:
            continue  # a volume type kwire does not provide: nothing to mount
        if fs_group is not None:
            set_ownership(path, fs_group, writable="emptyDir" in v)
        out[name] = str(path)
    return out


def set_ownership(path: Path, gid: int, *, writable: bool) -> None:
    """fsGroup, as kubelet's SetVolumeOwnership: everything in the volume belongs to group `gid`, readable by it
    (and writable for a read-write volume), directories setgid so new files get the group too."""
    mask = 0o660 if writable else 0o440
    for root, dirs, files in os.walk(path):
        for d in [root, *(os.path.join(root, x) for x in dirs)]:
            if not os.path.islink(d):
                os.chown(d, -1, gid)
                os.chmod(d, os.stat(d).st_mode & 0o7777 | mask | 0o110 | stat.S_ISGID)
        for f in (os.path.join(root, x) for x in files):
            if not os.path.islink(f):
                os.chown(f, -1, gid)
                os.chmod(f, os.stat(f).st_mode & 0o7777 | mask)


def _host_path(vol: str, path: str, typ: str) -> str:
    p = Path(path)
    if not p.is_absolute():
        raise MountError(f'MountVolume.SetUp failed for volume "{vol}" : hostPath {path!r} is not absolute')
    if typ == "DirectoryOrCreate":
        p.mkdir(parents=True, exist_ok=True)
    elif typ == "FileOrCreate" and not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    elif typ in ("Directory", "File", "Socket", "CharDevice", "BlockDevice") and not p.exists():
        raise MountError(
            f'MountVolume.SetUp failed for volume "{vol}" : hostPath type check failed: {path} is not a {typ.lower()}'
        )
    return str(p)


async def _claim(vol: str, claim: str, *, ns: str, get: Getter) -> str:
    pvc = await get("persistentvolumeclaim", ns, claim)
    if pvc is None:
        raise MountError(f'persistentvolumeclaim "{claim}" not found')
    pv_name = str((pvc.get("spec") or {}).get("volumeName") or "")
    pv = await get("persistentvolume", "", pv_name) if pv_name else None
    if pv is None:
        raise MountError(f'MountVolume.SetUp failed for volume "{vol}" : persistentvolumeclaim "{claim}" is not bound')
    spec = pv.get("spec") or {}
    path = str((spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path") or "")
    if not path.startswith("/"):
        raise MountError(f'MountVolume.SetUp failed for volume "{vol}" : PersistentVolume {pv_name} has no local path')
    Path(path).mkdir(parents=True, exist_ok=True, mode=0o777)
    return path


def needs_resync(pod: Obj) -> bool:
    """Whether the pod has volumes that follow API objects (kept current by periodic re-syncs)."""
    return any(
        any(k in v for k in ("configMap", "secret", "downwardAPI", "projected"))
        for v in podspec.spec(pod).get("volumes") or []
    )
