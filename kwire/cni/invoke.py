"""A small libcni: run a CNI network configuration list (conflist) for one container, as containerd does.

The kubelet calls these synchronous functions from a worker thread (`asyncio.to_thread`):

    conflist = load_conflist(path)
    net = CniConfig([bin_dir, "/usr/lib/cni"], cache_dir=cache)
    rt = RuntimeConf(uid, "/run/netns/x", args={"K8S_POD_NAMESPACE": ns, ...}, capability_args={"portMappings": [...]})
    result = net.add_network(conflist, rt)
    net.check_network(conflist, rt)
    net.del_network(conflist, rt)

Behaviour follows libcni (containernetworking/cni `libcni/api.go`):

- every plugin gets the list's `name` and `cniVersion`, the previous plugin's result as `prevResult`, and a
  `runtimeConfig` holding only the capability arguments it declares in `capabilities` (`portMappings` for
  portmap, `bandwidth` for bandwidth);
- the final ADD result is cached in `<cache_dir>/results/<network>-<containerID>-<ifname>` (libcni's
  `cniCacheV1` format, with the CNI_ARGS and capability arguments); DEL runs the plugins in reverse order with
  the cached result as `prevResult` and the cached capability arguments when none are given, then drops the
  cache; CHECK runs the plugins in order against the cached result;
- a plugin failure raises `CniError` with the plugin's CNI error code, message and details.

One difference: when an ADD fails half-way, `CniConfig.add_network` runs DEL over the whole list before raising (the spec
asks runtimes to do this; libcni leaves it to its caller), so a failed pod start never leaks an IP.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kwire.base.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_TIMEOUT = 60.0
CACHE_KIND = "cniCacheV1"

# The spec's well-known codes that the invoker itself reports; plugins report their own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_INTERNAL = (
    999  # invoker-side failures: plugin missing, timed out, crashed without a CNI error (libcni's ErrInternal)
)

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")

PathLike = str | os.PathLike[str]
Obj = dict[str, Any]


class CniError(Exception):
    """A CNI operation failed: the code, msg and details of the plugin's CNI error object (or the invoker's own)."""

    def __init__(self, code: int, msg: str, details: str = "", *, plugin: str = "", command: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command

    def __str__(self) -> str:
        where = f"plugin {self.plugin} failed ({self.command}): " if self.plugin else ""
        extra = f" ({self.details})" if self.details else ""
        return f"{where}{self.msg}{extra} [code {self.code}]"

    def to_dict(self, cni_version: str = "1.0.0") -> Obj:
        out: Obj = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# ---------------------------------------------------------------------------------------------- configuration


def parse_conflist(data: bytes | str) -> Obj:
    """Parse and check a conflist (a single plugin .conf is wrapped into a one-plugin list, as libcni does)."""
    try:
        conf = json.loads(data)
    except ValueError as exc:
        raise CniError(ERR_DECODING, f"error parsing configuration list: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(ERR_DECODING, "error parsing configuration list: not a JSON object")
    if "plugins" not in conf and isinstance(conf.get("type"), str):
        conf = {"cniVersion": conf.get("cniVersion", ""), "name": conf.get("name", ""), "plugins": [conf]}
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(ERR_INVALID_CONFIG, "error parsing configuration list: no name")
    if not _NAME_RE.fullmatch(name):
        raise CniError(ERR_INVALID_CONFIG, "invalid characters found in network name", name)
    if not isinstance(conf.get("cniVersion", ""), str):
        raise CniError(ERR_INVALID_CONFIG, "error parsing configuration list: cniVersion must be a string")
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniError(ERR_INVALID_CONFIG, f"error parsing configuration list: no plugins in list {name!r}")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise CniError(ERR_INVALID_CONFIG, f"error parsing configuration list {name!r}: plugin {i} has no type")
        caps = p.get("capabilities", {})
        if not isinstance(caps, dict):
            raise CniError(ERR_INVALID_CONFIG, f"plugin {p['type']!r}: capabilities must be an object")
    return conf


def load_conflist(path: PathLike) -> Obj:
    """Read a conflist file. A missing file raises FileNotFoundError; a bad one raises CniError."""
    return parse_conflist(Path(path).read_bytes())


def k3s_conflist(*, subnet_file: PathLike, data_dir: PathLike) -> Obj:
    """K3s's 10-flannel.conflist: flannel (bridge + host-local underneath), then portmap and bandwidth."""
    return {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": str(subnet_file),
                "dataDir": str(data_dir),
                "delegate": {"hairpinMode": True, "forceAddress": True, "isDefaultGateway": True},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


def write_conflist(path: PathLike, *, subnet_file: PathLike, data_dir: PathLike) -> Obj:
    """Write the K3s-style conflist to `path` (atomically, parents created) and return it."""
    conf = k3s_conflist(subnet_file=subnet_file, data_dir=data_dir)
    atomic_write(Path(path), (json.dumps(conf, indent=2) + "\n").encode(), mode=0o644)
    return conf


def install_plugin_shim(bin_dir: PathLike) -> Path:
    """Write `<bin_dir>/flannel`, an executable that runs kwire's plugin (`python -m kwire.cni`) from this checkout.

    `-S` skips site-packages: the plugin is stdlib-only, and this saves start-up time on every pod event.
    """
    root = Path(__file__).resolve().parents[2]  # the directory holding the `kwire` package
    script = (
        "#!/bin/sh\n"
        "# kwire's flannel CNI plugin; written by kwire.cni.invoke.install_plugin_shim\n"
        f'PYTHONPATH={shlex.quote(str(root))}"${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        "export PYTHONPATH\n"
        f'exec {shlex.quote(sys.executable)} -S -m kwire.cni "$@"\n'
    )
    target = Path(bin_dir) / "flannel"
    atomic_write(target, script.encode(), mode=0o755)
    return target


# ---------------------------------------------------------------------------------------------- plugin execution


def find_plugin(plugin_type: str, cni_path: Sequence[PathLike]) -> str:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise CniError(ERR_INVALID_CONFIG, f"invalid plugin type {plugin_type!r}")
    for d in cni_path:
        candidate = os.path.join(os.fspath(d), plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_INTERNAL, f"failed to find plugin {plugin_type!r} in path {[os.fspath(d) for d in cni_path]}")


def _validate_runtime(container_id: str, ifname: str, args: Mapping[str, str]) -> None:
    if not _NAME_RE.fullmatch(container_id):
        raise CniError(ERR_INVALID_ENV, "invalid characters in containerID", container_id)
    if not ifname or len(ifname) > 15 or ifname in (".", "..") or any(c in "/:" or c.isspace() for c in ifname):
        raise CniError(ERR_INVALID_ENV, f"invalid interface name {ifname!r}")
    for k, v in args.items():
        if not k or any(c in k for c in "=;") or ";" in v:
            raise CniError(ERR_INVALID_ENV, f"invalid CNI_ARGS entry {k!r}={v!r}")


def _plugin_conf(list_conf: Obj, plugin: Obj, prev_result: Obj | None, capability_args: Mapping[str, Any]) -> Obj:
    """libcni's buildOneConfig: inject name, cniVersion, prevResult and the declared capabilities' arguments."""
    conf = dict(plugin)
    conf["name"] = list_conf["name"]
    conf["cniVersion"] = list_conf.get("cniVersion", "")
    if prev_result is not None:
        conf["prevResult"] = prev_result
    runtime = {
        cap: capability_args[cap]
        for cap, enabled in (plugin.get("capabilities") or {}).items()
        if enabled and cap in capability_args
    }
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def exec_plugin(
    command: str,
    conf: Obj,
    *,
    container_id: str,
    netns_path: str,
    ifname: str,
    cni_path: Sequence[PathLike],
    args: Mapping[str, str],
    timeout: float | None = DEFAULT_TIMEOUT,
) -> Obj | None:
    """Run one plugin with CNI_COMMAND=command and `conf` on stdin; return its parsed result (ADD) or None."""
    plugin_type = str(conf["type"])
    path = find_plugin(plugin_type, cni_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns_path,
        CNI_IFNAME=ifname,
        CNI_ARGS=";".join(f"{k}={v}" for k, v in args.items()),
        CNI_PATH=":".join(os.fspath(d) for d in cni_path),
    )
    try:
        proc = subprocess.run(
            [path], input=json.dumps(conf).encode(), capture_output=True, env=env, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise CniError(ERR_INTERNAL, f"timed out after {timeout}s", plugin=plugin_type, command=command) from None
    except OSError as exc:
        raise CniError(
            ERR_INTERNAL, f"cannot run {path}: {exc.strerror}", plugin=plugin_type, command=command
        ) from None
    stderr = proc.stderr.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        try:
            err = json.loads(proc.stdout)
        except ValueError:
            err = None
        if isinstance(err, dict) and isinstance(err.get("code"), int):
            raise CniError(
                err["code"], str(err.get("msg", "")), str(err.get("details") or ""), plugin=plugin_type, command=command
            )
        how = f"exit status {proc.returncode}" if proc.returncode > 0 else f"signal {-proc.returncode}"
        text = "\n".join(t for t in (proc.stdout.decode("utf-8", "replace").strip(), stderr) if t)
        raise CniError(ERR_INTERNAL, f"{how} without a CNI error", text, plugin=plugin_type, command=command)
    if stderr:
        log.debug("cni: %s %s stderr: %s", plugin_type, command, stderr)
    if command != "ADD":
        return None
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise CniError(ERR_DECODING, "plugin printed no JSON result", plugin=plugin_type, command=command)
    return result


# ---------------------------------------------------------------------------------------------- cache


def _read_cache(path: Path) -> Obj | None:
    try:
        cached = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cni: ignoring unreadable cache %s: %s", path, exc)
        return None
    if not isinstance(cached, dict) or cached.get("kind") != CACHE_KIND:
        log.warning("cni: ignoring cache %s of unknown kind", path)
        return None
    return cached


def _version_at_least(version: str, minimum: tuple[int, int, int]) -> bool:
    try:
        return tuple(int(p) for p in (version or "0.1.0").split(".")) >= minimum
    except ValueError:
        return False


def _runtime_from_cache(cached: Obj | None, rt: RuntimeConf) -> tuple[dict[str, str], dict[str, Any]]:
    """CNI_ARGS and capability args for DEL and CHECK: the caller's, or else the ones cached at ADD (libcni's
    DelNetworkList/CheckNetworkList read them back from the cached attachment)."""
    cached = cached or {}
    args = rt.args
    if args is None:
        args = {str(k): str(v) for k, v in cached.get("cniArgs") or []}
    caps = rt.capability_args if rt.capability_args is not None else cached.get("capabilityArgs") or {}
    return dict(args), dict(caps)


# ---------------------------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class RuntimeConf:
    """libcni's RuntimeConf: the container one operation is for. On DEL and CHECK, `args` (CNI_ARGS) and
    `capability_args` left None are the ones cached at ADD."""

    container_id: str
    netns_path: str = ""
    ifname: str = "eth0"
    args: Mapping[str, str] | None = None
    capability_args: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CniConfig:
    """libcni's CNIConfig: where the plugins are (CNI_PATH), where ADD results are cached, how long one plugin
    may run; its three operations take the conflist and a RuntimeConf."""

    cni_path: Sequence[PathLike]
    cache_dir: PathLike = DEFAULT_CACHE_DIR
    timeout: float | None = DEFAULT_TIMEOUT

    def add_network(self, conflist: Obj, rt: RuntimeConf) -> Obj:
        """ADD the container to the network: each plugin in order, chained by prevResult; return the final result.

        On failure the whole list is DEL'd (best effort) before the CniError is raised.
        """
        args = dict(rt.args or {})
        caps = dict(rt.capability_args or {})
        _validate_runtime(rt.container_id, rt.ifname, args)
        result: Obj | None = None
        try:
            for plugin in conflist["plugins"]:
                result = self._exec("ADD", _plugin_conf(conflist, plugin, result, caps), rt, args)
        except CniError as exc:
            log.warning("cni: ADD of %s to %s failed (%s); undoing it", rt.container_id, conflist["name"], exc)
            for plugin in reversed(conflist["plugins"]):
                try:
                    self._exec("DEL", _plugin_conf(conflist, plugin, None, caps), rt, args)
                except CniError as undo:
                    log.warning("cni: undoing failed ADD of %s: %s", rt.container_id, undo)
            raise
        assert result is not None
        cached = {
            "kind": CACHE_KIND,
            "containerId": rt.container_id,
            "config": base64.b64encode(json.dumps(conflist).encode()).decode(),
            "ifName": rt.ifname,
            "networkName": conflist["name"],
            "netns": rt.netns_path,
            "cniArgs": [[k, v] for k, v in args.items()],
            "capabilityArgs": caps,
            "result": result,
        }
        atomic_write(self._cache_path(conflist, rt), json.dumps(cached).encode(), mode=0o600)
        return result

    def del_network(self, conflist: Obj, rt: RuntimeConf) -> None:
        """DEL the container from the network: plugins in reverse order with the cached ADD result as prevResult.

        Idempotent: DEL of a container that was never added (or already deleted) succeeds as long as the plugins
        do. On failure the cache is kept for a retry.
        """
        path = self._cache_path(conflist, rt)
        cached = _read_cache(path) if _version_at_least(conflist.get("cniVersion", ""), (0, 4, 0)) else None
        args, caps = _runtime_from_cache(cached, rt)
        _validate_runtime(rt.container_id, rt.ifname, args)
        prev = (cached or {}).get("result")
        for plugin in reversed(conflist["plugins"]):
            self._exec("DEL", _plugin_conf(conflist, plugin, prev, caps), rt, args)
        path.unlink(missing_ok=True)

    def check_network(self, conflist: Obj, rt: RuntimeConf) -> None:
        """CHECK the container's attachment: plugins in order against the cached ADD result. Raises CniError."""
        version = conflist.get("cniVersion", "")
        if not _version_at_least(version, (0, 4, 0)):
            raise CniError(
                ERR_INCOMPATIBLE_VERSION, f"configuration version {version!r} does not support the CHECK command"
            )
        if conflist.get("disableCheck"):
            return
        cached = self.get_cached(conflist, rt)
        if cached is None or not isinstance(cached.get("result"), dict):
            raise CniError(
                ERR_INTERNAL, f"no cached result for {rt.container_id} on network {conflist['name']!r} (was it added?)"
            )
        args, caps = _runtime_from_cache(cached, rt)
        _validate_runtime(rt.container_id, rt.ifname, args)
        for plugin in conflist["plugins"]:
            conf = _plugin_conf(conflist, plugin, cached["result"], caps)
            if _bandwidth_unconfigured(conf):
                continue
            try:
                self._exec("CHECK", conf, rt, args)
            except CniError as exc:
                if not _portmap_ipv6_check_bug(exc, cached["result"]):
                    raise
                log.debug("cni: ignoring portmap's IPv6 CHECK of IPv4-only %s: %s", rt.container_id, exc)

    def get_cached(self, conflist: Obj, rt: RuntimeConf) -> Obj | None:
        """The cached attachment (libcni's cachedInfo: result, cniArgs, capabilityArgs, netns...) or None."""
        return _read_cache(self._cache_path(conflist, rt))

    def _cache_path(self, conflist: Obj, rt: RuntimeConf) -> Path:
        return Path(self.cache_dir) / "results" / f"{conflist['name']}-{rt.container_id}-{rt.ifname}"

    def _exec(self, command: str, conf: Obj, rt: RuntimeConf, args: Mapping[str, str]) -> Obj | None:
        return exec_plugin(
            command,
            conf,
            container_id=rt.container_id,
            netns_path=rt.netns_path,
            ifname=rt.ifname,
            cni_path=self.cni_path,
            args=args,
            timeout=self.timeout,
        )


_BANDWIDTH_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


def _bandwidth_unconfigured(conf: Obj) -> bool:
    """A bandwidth plugin with no limits: its ADD did nothing, so there is nothing to CHECK, and its CHECK
    dereferences the missing limits and panics before v1.9.1 (containernetworking/plugins#1221, fixed by #1222;
    K3s under CRI-O hit it). Skipping it is what a fixed plugin's CHECK amounts to."""
    if conf.get("type") != "bandwidth":
        return False
    runtime = conf.get("runtimeConfig") or {}
    return not runtime.get("bandwidth") and not any(conf.get(k) for k in _BANDWIDTH_KEYS)


def _portmap_ipv6_check_bug(exc: CniError, result: Obj) -> bool:
    """containernetworking/plugins#819 (portmap before v1.3.0; Debian 12 ships 1.1.1): CHECK of a pod with only
    IPv4 addresses also checks for an ip6tables DNAT chain that ADD never created, whenever ip6tables works.
    The IPv4 chain is checked first, so this error means the IPv4 check passed and there is nothing else."""
    if exc.plugin != "portmap" or not exc.msg.startswith("could not check ipv6 dnat"):
        return False
    addresses = [str(ip.get("address", "")) for ip in result.get("ips") or [] if isinstance(ip, dict)]
    return bool(addresses) and not any(":" in a for a in addresses)


# ---------------------------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kwire.cni.invoke add|check|del ...`: cnitool's job, for debugging and the netns tests.

    Prints the ADD result (or nothing) on stdout; a failure is printed as a CNI error object, exit status 1.
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m kwire.cni.invoke", description=main.__doc__)
    p.add_argument("command", choices=["add", "check", "del"])
    p.add_argument("--conflist", required=True)
    p.add_argument("--container-id", required=True)
    p.add_argument("--netns", default="", help="network namespace path, e.g. /run/netns/NAME")
    p.add_argument("--ifname", default="eth0")
    p.add_argument("--cni-path", default="/usr/lib/cni", help="colon-separated plugin directories")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE_DIR)
    p.add_argument("--args", default=None, help="CNI_ARGS as K=V;K=V")
    p.add_argument("--capability-args", default=None, help='JSON object, e.g. {"portMappings": [...]}')
    ns = p.parse_args(argv)
    try:
        conflist = load_conflist(ns.conflist)
        args = None
        if ns.args is not None:
            args = dict(kv.split("=", 1) for kv in ns.args.split(";") if kv)
        caps = json.loads(ns.capability_args) if ns.capability_args is not None else None
        net = CniConfig([d for d in ns.cni_path.split(":") if d], cache_dir=ns.cache_dir)
        rt = RuntimeConf(ns.container_id, ns.netns, ns.ifname, args=args, capability_args=caps)
        if ns.command == "add":
            print(json.dumps(net.add_network(conflist, rt), indent=2))
        elif ns.command == "check":
            net.check_network(conflist, rt)
        else:
            net.del_network(conflist, rt)
    except CniError as exc:
        print(json.dumps({**exc.to_dict(), "plugin": exc.plugin, "command": exc.command}))
        return 1
    except (OSError, ValueError) as exc:
        print(json.dumps(CniError(ERR_INTERNAL, str(exc)).to_dict()))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
