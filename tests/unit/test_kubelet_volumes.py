"""Volumes as kubelet materialises them: the AtomicWriter layout and its swap, items and modes, kubelet's
FailedMount text, and the mount helper's view (in a private mount namespace, creating nothing on the node)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kwire.agent.kubelet import contain, security, volumes

OBJS: dict[tuple[str, str], dict[str, Any]] = {
    ("configmap", "app"): {"data": {"a.conf": "x=1", "mode": "prod"}},
    ("secret", "creds"): {"data": {"token": base64.b64encode(b"s3cret").decode()}},
}


async def _get(kind: str, _ns: str, name: str) -> dict[str, Any] | None:
    return OBJS.get((kind, name))


def _pod(volumes_: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
        "spec": {"volumes": volumes_},
    }


def test_atomic_writer_swaps_data_in_one_rename(tmp_path: Path) -> None:
    d = tmp_path / "v"
    assert volumes.atomic_write_dir(d, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})
    first = os.readlink(d / "..data")
    assert (d / "a").read_bytes() == b"1" and os.readlink(d / "a") == "..data/a"
    assert (d / "sub" / "b").read_bytes() == b"2" and oct(os.stat(d / "sub" / "b").st_mode & 0o777) == "0o600"
    assert not volumes.atomic_write_dir(d, {"a": (b"1", 0o644), "sub/b": (b"2", 0o600)})  # unchanged: no write
    assert volumes.atomic_write_dir(d, {"a": (b"3", 0o644)})
    assert os.readlink(d / "..data") != first and not (d / first).exists()
    assert (d / "a").read_bytes() == b"3" and not (d / "sub").exists()


async def test_setup_with_items_modes_and_kubelets_errors(tmp_path: Path) -> None:
    pod = _pod(
        [
            {
                "name": "cfg",
                "configMap": {"name": "app", "items": [{"key": "a.conf", "path": "conf/app.conf", "mode": 0o600}]},
            },
            {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
            {"name": "opt", "configMap": {"name": "gone", "optional": True}},
            {"name": "scratch", "emptyDir": {}},
        ]
    )
    paths = await volumes.setup(pod, pod_dir=tmp_path, get=_get, pod_ip="10.42.0.5", host_ip="192.168.77.11")
    assert (Path(paths["cfg"]) / "conf" / "app.conf").read_text() == "x=1"
    assert not (Path(paths["cfg"]) / "mode").exists()
    assert (Path(paths["sec"]) / "token").read_text() == "s3cret"
    assert oct(os.stat(Path(paths["sec"]) / "token").st_mode & 0o777) == "0o400"
    assert (Path(paths["info"]) / "labels").read_text() == 'app="web"'
    assert [n for n in os.listdir(paths["opt"]) if not n.startswith("..")] == []  # optional and missing: empty
    assert Path(paths["scratch"]).is_dir()
    with pytest.raises(volumes.MountError) as err:
        await volumes.setup(
            _pod([{"name": "cfg", "configMap": {"name": "nope"}}]), pod_dir=tmp_path, get=_get, pod_ip="", host_ip=""
        )
    assert str(err.value) == 'MountVolume.SetUp failed for volume "cfg" : configmap "nope" not found'
    missing_key = _pod([{"name": "cfg", "configMap": {"name": "app", "items": [{"key": "k", "path": "k"}]}}])
    with pytest.raises(volumes.MountError, match="configmap references non-existent config key: k"):
        await volumes.setup(missing_key, pod_dir=tmp_path, get=_get, pod_ip="", host_ip="")


def test_mounts_show_volumes_at_their_paths_and_create_nothing_on_the_node(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("hello")
    stage = tmp_path / "stage"
    stage.mkdir()
    spec = {
        "stage": str(stage),
        "mounts": [
            [str(vol), "/etc/kwire-test-volume", True],
            [str(vol), "/kwire-test-top/deeper", False],
            [str(vol), "/var/run/secrets/kwire-test", True],
        ],
        "caps": [security.CAPABILITIES.index(c) for c in security.DEFAULT_CAPABILITIES],
    }
    script = (
        "cat /etc/kwire-test-volume/f /kwire-test-top/deeper/f /var/run/secrets/kwire-test/f; "
        "touch /etc/kwire-test-volume/x 2>/dev/null || echo ' read-only'; hostname >/dev/null"
    )
    res = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            sys.executable,
            "-S",
            contain.__file__,
            json.dumps(spec),
            "--",
            "sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hellohellohello read-only\n"
    for p in ("/etc/kwire-test-volume", "/kwire-test-top", "/run/secrets/kwire-test"):
        assert not os.path.exists(p)


def test_fs_group_owns_the_volumes_files_as_kubelet_sets_them(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    (secret / "..data").mkdir(parents=True)
    (secret / "..data" / "key").write_text("s")
    os.chmod(secret / "..data" / "key", 0o400)
    volumes.set_ownership(secret, 4000, writable=False)
    st = os.stat(secret / "..data" / "key")
    assert st.st_gid == 4000 and st.st_mode & 0o777 == 0o440
    assert os.stat(secret / "..data").st_mode & 0o2000  # setgid: new files get the group too
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    volumes.set_ownership(scratch, 4000, writable=True)
    assert os.stat(scratch).st_gid == 4000 and os.stat(scratch).st_mode & 0o2770 == 0o2770
