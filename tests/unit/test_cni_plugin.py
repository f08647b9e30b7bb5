"""kwire's `flannel` CNI plugin and the libcni-style invoker, with fake delegate plugins (no privileges needed).

The plugin runs as a subprocess exactly as a runtime runs it (environment + stdin); the "delegate" is a small
script on CNI_PATH that records what it was given and prints a canned result.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import kwire
from kwire.cni import flannel, invoke
from kwire.cni.invoke import CniConfig, CniError, RuntimeConf

ROOT = str(Path(kwire.__file__).resolve().parents[1])

SUBNET_ENV = "FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

CANNED_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"interface": 2, "address": "10.42.7.2/24", "gateway": "10.42.7.1"}],
    "routes": [{"dst": "10.42.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.42.7.1"}],
}

# A fake CNI plugin: logs (plugin, command, stdin config, CNI_* env) as a JSON line to $FAKE_LOG; FAKE_FAIL maps
# "plugin:COMMAND" to a CNI error object (printed, exit 1) or a string (written to stderr, exit 2); ADD prints
# prevResult (or $FAKE_RESULT) with the plugin's name appended to "chain".
FAKE_PLUGIN = """#!{python} -S
import json, os, sys
name = os.path.basename(sys.argv[0])
raw = sys.stdin.read()
conf = json.loads(raw) if raw.strip() else {{}}
cmd = os.environ.get("CNI_COMMAND", "")
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({{"plugin": name, "command": cmd, "conf": conf, "env": env}}) + "\\n")
fail = json.loads(os.environ.get("FAKE_FAIL") or "{{}}").get(name + ":" + cmd)
if isinstance(fail, str):
    sys.stderr.write(fail)
    sys.exit(2)
if fail is not None:
    print(json.dumps(fail))
    sys.exit(1)
if cmd == "ADD":
    result = dict(conf.get("prevResult") or json.loads(os.environ["FAKE_RESULT"]))
    result["chain"] = result.get("chain", []) + [name]
    print(json.dumps(result))
"""


class Fakes:
    def __init__(self, tmp: Path) -> None:
        self.bin = tmp / "fakebin"
        self.bin.mkdir()
        self.log = tmp / "calls.jsonl"
        self.subnet_env = tmp / "subnet.env"
        self.subnet_env.write_text(SUBNET_ENV)
        self.data_dir = tmp / "flannel"
        self.fail: dict[str, Any] = {}
        for name in ("bridge", "ipvlan", "first", "second", "third", "portmap", "bandwidth"):
            self.add(name)

    def add(self, name: str) -> None:
        p = self.bin / name
        p.write_text(FAKE_PLUGIN.format(python=sys.executable))
        p.chmod(0o755)

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def env(self) -> dict[str, str]:
        """What the fake plugins need in their environment (the plugin passes its own on to the delegate)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "FAKE_LOG": str(self.log),
            "FAKE_RESULT": json.dumps(CANNED_RESULT),
            "FAKE_FAIL": json.dumps(self.fail),
        }


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    f = Fakes(tmp_path)
    # invoke.exec_plugin passes the process environment on to plugins, as libcni does.
    for k, v in f.env().items():
        monkeypatch.setenv(k, v)
    yield f


def flannel_conf(fakes: Fakes, **extra: Any) -> dict[str, Any]:
    """The flannel entry of K3s's conflist as libcni hands it to the plugin (name and cniVersion injected)."""
    conf: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(fakes.subnet_env),
        "dataDir": str(fakes.data_dir),
        "delegate": {"hairpinMode": True, "forceAddress": True, "isDefaultGateway": True},
    }
    conf.update(extra)
    return conf


def run_plugin(
    fakes: Fakes, command: str | None, stdin: bytes | dict[str, Any], *, container_id: str = "c1", **env: str
) -> tuple[int, Any, str]:
    full = fakes.env()
    full["PYTHONPATH"] = ROOT
    full.update(
        CNI_CONTAINERID=container_id,
        CNI_NETNS="/run/netns/kwire-test-pod",
        CNI_IFNAME="eth0",
        CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web",
        CNI_PATH=f"{fakes.bin}:/nonexistent",
    )
    if command is not None:
        full["CNI_COMMAND"] = command
    for k, v in env.items():
        if v == "":
            full.pop(k, None)
        else:
            full[k] = v
    data = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "kwire.cni"], input=data, capture_output=True, env=full, cwd="/", timeout=30
    )
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, stderr


EXPECTED_DELEGATE = {
    "cniVersion": "1.0.0",
    "name": "cbr0",
    "type": "bridge",
    "bridge": "cni0",
    "mtu": 1450,
    "ipMasq": False,
    "isGateway": True,
    "isDefaultGateway": True,
    "hairpinMode": True,
    "forceAddress": True,
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.42.7.0/24"}]],
        "routes": [{"dst": "10.42.0.0/16"}],
    },
}


# ---------------------------------------------------------------------------------------------- delegate config


def test_build_delegate_matches_k3s(fakes: Fakes) -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV)
    got = flannel.build_delegate(flannel_conf(fakes), env)
    want = json.loads(json.dumps(EXPECTED_DELEGATE))
    want["ipam"]["dataDir"] = str(fakes.data_dir / "ipam")
    assert got == want


def test_build_delegate_defaults_and_overrides() -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false"))
    base = {"cniVersion": "0.4.0", "name": "net"}
    d = flannel.build_delegate(base, env)
    # flannel does not masquerade, so the bridge must; defaults when no `delegate` and no dataDir are given
    assert d["ipMasq"] is True and d["mtu"] == 1450 and d["type"] == "bridge" and d["cniVersion"] == "0.4.0"
    assert d["isGateway"] and d["hairpinMode"] and d["forceAddress"] and "isDefaultGateway" not in d
    assert d["ipam"]["dataDir"] == "/var/lib/cni/flannel/ipam"

    d = flannel.build_delegate({**base, "delegate": {"mtu": 1400, "ipMasq": False, "hairpinMode": False}}, env)
    assert (d["mtu"], d["ipMasq"], d["hairpinMode"]) == (1400, False, False)

    d = flannel.build_delegate({**base, "delegate": {"type": "ipvlan", "master": "eth0"}}, env)
    assert d["type"] == "ipvlan" and d["master"] == "eth0"
    assert not {"bridge", "isGateway", "hairpinMode", "forceAddress"} & d.keys()

    d = flannel.build_delegate({**base, "runtimeConfig": {"portMappings": []}}, env)
    assert d["runtimeConfig"] == {"portMappings": []}


def test_build_delegate_outer_ipam_and_dual_stack() -> None:
    env = flannel.parse_subnet_env(
        "FLANNEL_NETWORK=10.42.0.0/16,10.44.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\n"
        "FLANNEL_IPV6_NETWORK=fd00:42::/56\nFLANNEL_IPV6_SUBNET=fd00:42:0:3::1/64\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    )
    conf = {"name": "n", "dataDir": "/d", "ipam": {"routes": [{"dst": "192.168.0.0/16"}], "dataDir": "/ipam"}}
    ipam = flannel.build_delegate(conf, env)["ipam"]
    assert ipam == {
        "type": "host-local",
        "dataDir": "/ipam",
        "ranges": [[{"subnet": "10.42.3.0/24"}], [{"subnet": "fd00:42:0:3::/64"}]],
        "routes": [
            {"dst": "192.168.0.0/16"},
            {"dst": "10.42.0.0/16"},
            {"dst": "10.44.0.0/16"},
            {"dst": "fd00:42::/56"},
        ],
    }


@pytest.mark.parametrize(
    "delegate, msg",
    [
        ({"name": "x"}, "must not have 'name'"),
        ({"ipam": {}}, "must not have 'ipam'"),
        ({"type": 3}, "(string) 'type'"),
        ("bridge", "must be an object"),
    ],
)
def test_build_delegate_rejects(delegate: Any, msg: str) -> None:
    env = flannel.parse_subnet_env(SUBNET_ENV)
    with pytest.raises(flannel.PluginError) as exc:
        flannel.build_delegate({"name": "n", "delegate": delegate}, env)
    assert exc.value.code == flannel.ERR_INVALID_CONFIG and msg in exc.value.msg


@pytest.mark.parametrize("key, read", [("dataDir", flannel.data_dir), ("subnetFile", flannel.subnet_file)])
def test_path_options_default_and_must_be_strings(key: str, read: Any) -> None:
    assert read({}) == read({key: ""}) != ""
    assert read({key: "/x/y"}) == "/x/y"
    with pytest.raises(flannel.PluginError) as exc:
        read({key: 5})
    assert exc.value.code == flannel.ERR_INVALID_CONFIG and exc.value.msg == f"'{key}' must be a string"


def test_subnet_env_errors() -> None:
    with pytest.raises(flannel.PluginError) as exc:
        flannel.parse_subnet_env("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.7.1/24\n", "/x/subnet.env")
    assert exc.value.code == flannel.ERR_SUBNET_FILE
    assert exc.value.msg == "/x/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ"
    for bad in ("FLANNEL_SUBNET=10.42.7.1", "FLANNEL_SUBNET=banana/24", "FLANNEL_MTU=big"):
        with pytest.raises(flannel.PluginError) as exc:
            flannel.parse_subnet_env(SUBNET_ENV + bad + "\n")
        assert exc.value.code == flannel.ERR_SUBNET_FILE


def test_explicit_route_gateways() -> None:
    result = {
        "ips": [{"address": "10.42.7.2/24", "gateway": "10.42.7.1"}, {"address": "fd00::2/64", "gateway": "fd00::1"}],
        "routes": [{"dst": "10.42.0.0/16"}, {"dst": "fd00:42::/56"}, {"dst": "0.0.0.0/0", "gw": "10.42.7.9"}],
    }
    out = flannel.explicit_route_gateways(result)
    assert out["routes"] == [
        {"dst": "10.42.0.0/16", "gw": "10.42.7.1"},
        {"dst": "fd00:42::/56", "gw": "fd00::1"},
        {"dst": "0.0.0.0/0", "gw": "10.42.7.9"},
    ]
    assert result["routes"][0] == {"dst": "10.42.0.0/16"}  # the input is not modified


def test_unexpected_exception_is_a_cni_error(monkeypatch: pytest.MonkeyPatch, fakes: Fakes) -> None:
    def boom(conf: Any, environ: Any) -> bytes:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(flannel, "cmd_add", boom)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0", "CNI_PATH": "/b"}
    code, out = flannel.run(env, json.dumps(flannel_conf(fakes)).encode())
    assert code == 1
    assert json.loads(out) == {"cniVersion": "1.0.0", "code": 999, "msg": "internal error: RuntimeError: disk on fire"}


# ---------------------------------------------------------------------------------------------- plugin process


def test_version(fakes: Fakes) -> None:
    code, out, _ = run_plugin(fakes, "VERSION", b"")
    assert code == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]}
    code, out, _ = run_plugin(fakes, "VERSION", {"cniVersion": "0.4.0"})
    assert code == 0 and out["cniVersion"] == "0.4.0"


def test_add_runs_delegate_and_saves_its_config(fakes: Fakes) -> None:
    code, out, stderr = run_plugin(fakes, "ADD", flannel_conf(fakes, runtimeConfig={"bandwidth": {"egressRate": 1}}))
    assert code == 0, out
    assert out == {**CANNED_RESULT, "chain": ["bridge"]}
    (call,) = fakes.calls()
    want = json.loads(json.dumps(EXPECTED_DELEGATE))
    want["ipam"]["dataDir"] = str(fakes.data_dir / "ipam")
    want["runtimeConfig"] = {"bandwidth": {"egressRate": 1}}
    assert call["plugin"] == "bridge" and call["command"] == "ADD"
    assert call["conf"] == want
    assert call["env"]["CNI_CONTAINERID"] == "c1" and call["env"]["CNI_NETNS"] == "/run/netns/kwire-test-pod"
    assert call["env"]["CNI_IFNAME"] == "eth0" and call["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=web"
    saved = fakes.data_dir / "c1"
    assert json.loads(saved.read_text()) == want
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert [p.name for p in fakes.data_dir.iterdir()] == ["c1"]  # no temporary files left behind
    assert "delegating to bridge" in stderr


def test_del_is_idempotent(fakes: Fakes) -> None:
    conf = flannel_conf(fakes)
    assert run_plugin(fakes, "ADD", conf)[0] == 0
    saved = json.loads((fakes.data_dir / "c1").read_text())
    prev = {**CANNED_RESULT, "chain": ["bridge"]}
    code, out, _ = run_plugin(fakes, "DEL", {**conf, "prevResult": prev}, CNI_NETNS="")
    assert (code, out) == (0, None)
    add, delete = fakes.calls()
    assert delete["command"] == "DEL" and delete["conf"] == {**saved, "prevResult": prev}
    assert not (fakes.data_dir / "c1").exists()
    # again, and for a container that was never added: success without calling the delegate
    assert run_plugin(fakes, "DEL", conf)[:2] == (0, None)
    assert run_plugin(fakes, "DEL", conf, container_id="never-added")[:2] == (0, None)
    assert len(fakes.calls()) == 2


def test_failed_del_keeps_saved_config_for_retry(fakes: Fakes) -> None:
    conf = flannel_conf(fakes)
    assert run_plugin(fakes, "ADD", conf)[0] == 0
    fakes.fail = {"bridge:DEL": {"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "retry"}}
    code, out, _ = run_plugin(fakes, "DEL", conf)
    assert code == 1 and out == {
        "cniVersion": "1.0.0",
        "code": 11,
        "msg": "delegate bridge DEL: busy",
        "details": "retry",
    }
    assert (fakes.data_dir / "c1").exists()
    fakes.fail = {}
    assert run_plugin(fakes, "DEL", conf)[:2] == (0, None)
    assert not (fakes.data_dir / "c1").exists()


def test_failed_add_passes_delegate_error_and_keeps_config_for_del(fakes: Fakes) -> None:
    fakes.fail = {"bridge:ADD": {"cniVersion": "1.0.0", "code": 7, "msg": "bad bridge"}}
    code, out, _ = run_plugin(fakes, "ADD", flannel_conf(fakes))
    assert code == 1 and out == {"cniVersion": "1.0.0", "code": 7, "msg": "delegate bridge ADD: bad bridge"}
    assert (fakes.data_dir / "c1").exists()  # so the runtime's DEL after a failed ADD releases the IP

    fakes.fail = {"bridge:ADD": "panic: runtime error\n"}
    code, out, _ = run_plugin(fakes, "ADD", flannel_conf(fakes))
    assert code == 1 and out["code"] == flannel.ERR_DELEGATE_EXEC and "exit status 2" in out["msg"]


def test_check_runs_delegate_check(fakes: Fakes) -> None:
    conf = flannel_conf(fakes)
    assert run_plugin(fakes, "ADD", conf)[0] == 0
    prev = {**CANNED_RESULT, "chain": ["bridge"]}
    assert run_plugin(fakes, "CHECK", {**conf, "prevResult": prev})[:2] == (0, None)
    check = fakes.calls()[-1]
    assert check["command"] == "CHECK"
    assert check["conf"]["prevResult"]["routes"] == [
        {"dst": "10.42.0.0/16", "gw": "10.42.7.1"},
        {"dst": "0.0.0.0/0", "gw": "10.42.7.1"},
    ]
    code, out, _ = run_plugin(fakes, "CHECK", {**conf, "prevResult": prev}, container_id="other")
    assert code == 1 and out["code"] == flannel.ERR_NOT_ADDED
    code, out, _ = run_plugin(fakes, "CHECK", {**conf, "cniVersion": "0.3.1"})
    assert code == 1 and out["code"] == flannel.ERR_INCOMPATIBLE_VERSION and out["cniVersion"] == "0.3.1"


@pytest.mark.parametrize(
    "command, stdin, env, code, msg",
    [
        ("ADD", b"{not json", {}, 6, "decoding version from network config"),
        ("ADD", b"[1, 2]", {}, 6, "not a JSON object"),
        (None, b"{}", {}, 4, "required env variables [CNI_COMMAND] missing"),
        ("FROB", b"{}", {}, 4, "unknown CNI_COMMAND: FROB"),
        ("ADD", None, {"CNI_NETNS": ""}, 4, "required env variables [CNI_NETNS] missing"),
        ("DEL", None, {"CNI_PATH": "", "CNI_IFNAME": ""}, 4, "required env variables [CNI_IFNAME,CNI_PATH] missing"),
        ("ADD", None, {"CNI_CONTAINERID": "../../etc/passwd"}, 4, "invalid characters in containerID"),
        ("ADD", None, {"CNI_IFNAME": "eth0:1"}, 4, "interface name contains"),
        ("ADD", {"cniVersion": "9.9.9"}, {}, 1, "incompatible CNI versions"),
        ("ADD", {"name": ""}, {}, 7, "missing network name"),
        ("ADD", {"subnetFile": "/nonexistent/subnet.env"}, {}, 11, "open /nonexistent/subnet.env"),
        ("ADD", {"delegate": {"type": "nosuch"}}, {}, 102, "failed to find plugin 'nosuch'"),
        ("ADD", {"delegate": {"type": "../bridge"}}, {}, 7, "invalid delegate plugin type"),
    ],
)
def test_errors_are_cni_error_json(
    fakes: Fakes, command: str | None, stdin: Any, env: dict[str, str], code: int, msg: str
) -> None:
    if stdin is None:
        stdin = flannel_conf(fakes)
    elif isinstance(stdin, dict):
        stdin = flannel_conf(fakes, **stdin)
    rc, out, _ = run_plugin(fakes, command, stdin, **env)
    assert rc == 1
    assert out["code"] == code and msg in out["msg"], out
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert fakes.calls() == []


def test_state_dir_failure(fakes: Fakes, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, out, _ = run_plugin(fakes, "ADD", flannel_conf(fakes, dataDir=str(blocker / "sub")))
    assert rc == 1 and out["code"] == flannel.ERR_STATE


# ---------------------------------------------------------------------------------------------- invoker


def chain_conflist(*plugins: dict[str, Any], version: str = "1.0.0") -> dict[str, Any]:
    return invoke.parse_conflist(json.dumps({"cniVersion": version, "name": "testnet", "plugins": list(plugins)}))


def test_load_conflist(tmp_path: Path) -> None:
    p = tmp_path / "net.conflist"
    p.write_text(json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "bridge"}]}))
    assert invoke.load_conflist(p)["plugins"] == [{"type": "bridge"}]
    single = invoke.parse_conflist(json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "bridge"}))
    assert single["name"] == "n" and single["cniVersion"] == "0.4.0" and single["plugins"][0]["type"] == "bridge"
    for body, code in [
        ("{", 6),
        ('{"name": "n", "plugins": []}', 7),
        ('{"name": "bad name", "plugins": [{"type": "x"}]}', 7),
        ('{"name": "n", "plugins": [{"kind": "x"}]}', 7),
    ]:
        with pytest.raises(CniError) as exc:
            invoke.parse_conflist(body)
        assert exc.value.code == code
    with pytest.raises(FileNotFoundError):
        invoke.load_conflist(tmp_path / "missing")


def test_add_chains_results_and_capabilities(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist(
        {"type": "first", "x": 1},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True, "portMappings": False}},
    )
    pm = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    bw = {"ingressRate": 1000, "ingressBurst": 2000}
    net = CniConfig([fakes.bin, "/usr/lib/cni"], cache_dir=tmp_path / "cache")
    args = {"IgnoreUnknown": "1", "K8S_POD_NAME": "web"}
    caps = {"portMappings": pm, "bandwidth": bw, "ipRanges": []}
    result = net.add_network(conflist, RuntimeConf("pod1", "/run/netns/p1", args=args, capability_args=caps))
    assert result["chain"] == ["first", "portmap", "bandwidth"]
    first, portmap, bandwidth = fakes.calls()
    assert first["conf"] == {"type": "first", "x": 1, "name": "testnet", "cniVersion": "1.0.0"}
    assert portmap["conf"]["prevResult"] == {**CANNED_RESULT, "chain": ["first"]}
    assert portmap["conf"]["runtimeConfig"] == {"portMappings": pm}
    assert bandwidth["conf"]["runtimeConfig"] == {"bandwidth": bw}
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "pod1",
        "CNI_NETNS": "/run/netns/p1",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
        "CNI_PATH": f"{fakes.bin}:/usr/lib/cni",
    }
    cache = tmp_path / "cache" / "results" / "testnet-pod1-eth0"
    cached = json.loads(cache.read_text())
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert cached["kind"] == "cniCacheV1" and cached["result"] == result
    assert json.loads(base64.b64decode(cached["config"])) == conflist
    assert cached["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "web"]]
    assert cached["capabilityArgs"]["portMappings"] == pm
    assert net.get_cached(conflist, RuntimeConf("pod1")) == cached


def test_del_uses_cache_in_reverse_and_is_idempotent(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist({"type": "first"}, {"type": "portmap", "capabilities": {"portMappings": True}})
    pm = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    net = CniConfig([fakes.bin], cache_dir=tmp_path / "c")
    result = net.add_network(conflist, RuntimeConf("pod1", "/n", args={"A": "1"}, capability_args={"portMappings": pm}))
    fakes.log.unlink()
    net.del_network(conflist, RuntimeConf("pod1", "/n"))
    dels = fakes.calls()
    assert [(c["plugin"], c["command"]) for c in dels] == [("portmap", "DEL"), ("first", "DEL")]
    assert all(c["conf"]["prevResult"] == result for c in dels)
    assert dels[0]["conf"]["runtimeConfig"] == {"portMappings": pm}  # cached capability args
    assert dels[0]["env"]["CNI_ARGS"] == "A=1"
    assert not (tmp_path / "c" / "results" / "testnet-pod1-eth0").exists()
    fakes.log.unlink()
    net.del_network(conflist, RuntimeConf("pod1", ""))  # again: no cache, no prevResult, still fine
    assert [("prevResult" in c["conf"], c["env"]["CNI_NETNS"]) for c in fakes.calls()] == [(False, ""), (False, "")]


def test_failed_add_raises_plugin_error_and_undoes(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist({"type": "first"}, {"type": "second"}, {"type": "third"})
    fakes.fail = {"second:ADD": {"cniVersion": "1.0.0", "code": 11, "msg": "try later", "details": "lock held"}}
    os.environ["FAKE_FAIL"] = json.dumps(fakes.fail)
    with pytest.raises(CniError) as exc:
        CniConfig([fakes.bin], cache_dir=tmp_path).add_network(conflist, RuntimeConf("p", "/n"))
    e = exc.value
    assert (e.code, e.msg, e.details, e.plugin, e.command) == (11, "try later", "lock held", "second", "ADD")
    assert str(e) == "plugin second failed (ADD): try later (lock held) [code 11]"
    calls = [(c["plugin"], c["command"]) for c in fakes.calls()]
    assert calls == [("first", "ADD"), ("second", "ADD"), ("third", "DEL"), ("second", "DEL"), ("first", "DEL")]
    assert not (tmp_path / "results").exists()


def test_plugin_failures_without_cni_error(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist({"type": "first"})
    os.environ["FAKE_FAIL"] = json.dumps({"first:ADD": "panic: nil pointer\n"})
    with pytest.raises(CniError) as exc:
        CniConfig([fakes.bin], cache_dir=tmp_path).add_network(conflist, RuntimeConf("p", "/n"))
    assert exc.value.code == invoke.ERR_INTERNAL and "exit status 2" in exc.value.msg
    assert "panic: nil pointer" in exc.value.details
    with pytest.raises(CniError) as exc:
        CniConfig([fakes.bin], cache_dir=tmp_path).add_network(
            chain_conflist({"type": "missing"}), RuntimeConf("p", "/n")
        )
    assert "failed to find plugin 'missing'" in exc.value.msg
    with pytest.raises(CniError) as exc:
        CniConfig([fakes.bin], cache_dir=tmp_path).add_network(conflist, RuntimeConf("../p", "/n"))
    assert exc.value.code == invoke.ERR_INVALID_ENV


def test_check(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist(
        {"type": "first"},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    )
    net, rt = CniConfig([fakes.bin], cache_dir=tmp_path), RuntimeConf("p", "/n")
    with pytest.raises(CniError, match="no cached result"):
        net.check_network(conflist, rt)
    result = net.add_network(conflist, rt)
    fakes.log.unlink()
    net.check_network(conflist, rt)
    # bandwidth without limits is not CHECKed (its CHECK panics before plugins v1.9.1)
    assert [(c["plugin"], c["command"], c["conf"]["prevResult"]) for c in fakes.calls()] == [
        ("first", "CHECK", result),
        ("portmap", "CHECK", result),
    ]
    fakes.log.unlink()
    net.check_network(conflist, replace(rt, capability_args={"bandwidth": {"egressRate": 5}}))
    assert [c["plugin"] for c in fakes.calls()] == ["first", "portmap", "bandwidth"]

    with pytest.raises(CniError) as exc:
        net.check_network(chain_conflist({"type": "first"}, version="0.3.1"), rt)
    assert exc.value.code == invoke.ERR_INCOMPATIBLE_VERSION
    fakes.log.unlink()
    net.check_network({**conflist, "disableCheck": True}, rt)
    assert fakes.calls() == []


def test_check_tolerates_portmap_ipv6_bug_only_for_ipv4_pods(fakes: Fakes, tmp_path: Path) -> None:
    conflist = chain_conflist({"type": "first"}, {"type": "portmap", "capabilities": {"portMappings": True}})
    net, rt = CniConfig([fakes.bin], cache_dir=tmp_path), RuntimeConf("p", "/n")
    net.add_network(conflist, rt)
    v6 = {"cniVersion": "1.0.0", "code": 999, "msg": "could not check ipv6 dnat: chain CNI-DN-x not found"}
    os.environ["FAKE_FAIL"] = json.dumps({"portmap:CHECK": v6})
    net.check_network(conflist, rt)
    v4 = {**v6, "msg": "could not check ipv4 dnat: rule not found"}
    os.environ["FAKE_FAIL"] = json.dumps({"portmap:CHECK": v4})
    with pytest.raises(CniError, match="ipv4 dnat"):
        net.check_network(conflist, rt)
    # a dual-stack pod really should have the IPv6 chain
    os.environ["FAKE_FAIL"] = json.dumps({})
    os.environ["FAKE_RESULT"] = json.dumps({**CANNED_RESULT, "ips": [*CANNED_RESULT["ips"], {"address": "fd00::2/64"}]})
    net.add_network(conflist, replace(rt, container_id="q"))
    os.environ["FAKE_FAIL"] = json.dumps({"portmap:CHECK": v6})
    with pytest.raises(CniError, match="ipv6 dnat"):
        net.check_network(conflist, replace(rt, container_id="q"))


# ---------------------------------------------------------------------------------------------- install helpers


def test_write_conflist(tmp_path: Path) -> None:
    path = tmp_path / "net.d" / "10-flannel.conflist"
    invoke.write_conflist(path, subnet_file=tmp_path / "subnet.env", data_dir=tmp_path / "flannel")
    assert json.loads(path.read_text()) == {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": str(tmp_path / "subnet.env"),
                "dataDir": str(tmp_path / "flannel"),
                "delegate": {"hairpinMode": True, "forceAddress": True, "isDefaultGateway": True},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }
    assert invoke.load_conflist(path)["name"] == "cbr0"


def test_shim_runs_the_plugin_from_anywhere(tmp_path: Path) -> None:
    shim = invoke.install_plugin_shim(tmp_path / "bin")
    assert shim == tmp_path / "bin" / "flannel" and os.access(shim, os.X_OK)
    invoke.install_plugin_shim(tmp_path / "bin")  # idempotent
    env = {"PATH": "/usr/bin:/bin", "CNI_COMMAND": "VERSION"}
    proc = subprocess.run([shim], input=b"", capture_output=True, env=env, cwd=tmp_path, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.0.0"


def test_k3s_conflist_end_to_end_with_fake_reference_plugins(fakes: Fakes, tmp_path: Path) -> None:
    """The real flannel plugin (through the shim) under the invoker, with fake bridge/portmap/bandwidth."""
    path = tmp_path / "net.d" / "10-flannel.conflist"
    invoke.write_conflist(path, subnet_file=fakes.subnet_env, data_dir=fakes.data_dir)
    invoke.install_plugin_shim(tmp_path / "shim")
    conflist = invoke.load_conflist(path)
    net, rt = (
        CniConfig([tmp_path / "shim", fakes.bin], cache_dir=tmp_path / "cache"),
        RuntimeConf("uid-1", "/run/netns/p"),
    )
    pm = [{"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]
    result = net.add_network(conflist, replace(rt, capability_args={"portMappings": pm}))
    assert result["chain"] == ["bridge", "portmap", "bandwidth"]
    bridge = fakes.calls()[0]
    assert bridge["plugin"] == "bridge" and bridge["conf"]["isDefaultGateway"] is True
    assert bridge["conf"]["ipam"]["ranges"] == [[{"subnet": "10.42.7.0/24"}]]
    net.check_network(conflist, rt)
    net.del_network(conflist, rt)
    net.del_network(conflist, rt)
    assert not (fakes.data_dir / "uid-1").exists()
    assert [(c["plugin"], c["command"]) for c in fakes.calls()] == [
        ("bridge", "ADD"),
        ("portmap", "ADD"),
        ("bandwidth", "ADD"),
        ("bridge", "CHECK"),
        ("portmap", "CHECK"),
        ("bandwidth", "DEL"),
        ("portmap", "DEL"),
        ("bridge", "DEL"),
        ("bandwidth", "DEL"),
        ("portmap", "DEL"),
    ]
