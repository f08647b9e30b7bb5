"""kwire's `flannel` CNI meta-plugin (CNI spec 1.0.0), as flannel-io/cni-plugin behaves under K3s.

The container runtime runs this once per pod event with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS and CNI_PATH in the environment and the network configuration on stdin. On ADD it reads flannel's
`subnet.env`, renders a configuration for the delegate plugin (Debian's reference `bridge` with `host-local` IPAM
by default), saves it under `<dataDir>/<containerID>` and runs the delegate, printing its result. DEL runs the
delegate with the saved configuration and then forgets it; CHECK runs the delegate's CHECK with it.

It runs once per pod event, so it imports only what it needs from the standard library and starts the delegate
with posix_spawn instead of importing subprocess. Every failure is printed as a CNI error object on stdout with
a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys

TYPE_CHECKING = False  # `typing` alone costs milliseconds at every start; mypy still reads these imports
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
CURRENT_VERSION = "1.0.0"
DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"

# Error codes: 1-99 are the spec's well-known codes, 100+ are this plugin's own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_ENV = 4
ERR_DECODING = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_SUBNET_FILE = 100  # subnet.env exists but is malformed or incomplete
ERR_STATE = 101  # the saved delegate configuration could not be written or read
ERR_DELEGATE_EXEC = 102  # the delegate plugin is missing, could not be started, or answered garbage
ERR_NOT_ADDED = 103  # CHECK for a container this plugin has no saved configuration for
ERR_INTERNAL = 999  # an unexpected failure (libcni's ErrInternal)

_SIGPIPE = 13  # Linux; the delegate gets the default action back (Python ignores SIGPIPE)


class PluginError(Exception):
    """A failure reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# ---------------------------------------------------------------------------------------------- subnet.env


class SubnetEnv:
    """The values of flannel's subnet.env, CIDRs normalised to their network address (as Go's ParseCIDR)."""

    __slots__ = ("networks", "subnet", "ip6_networks", "ip6_subnet", "mtu", "ipmasq")

    def __init__(
        self,
        networks: list[str],
        subnet: str | None,
        mtu: int,
        ipmasq: bool,
        ip6_networks: list[str] | None = None,
        ip6_subnet: str | None = None,
    ) -> None:
        self.networks = networks
        self.subnet = subnet
        self.ip6_networks = ip6_networks or []
        self.ip6_subnet = ip6_subnet
        self.mtu = mtu
        self.ipmasq = ipmasq


def _cidr(value: str, key: str, source: str) -> str:
    import ipaddress

    if "/" not in value:
        raise PluginError(ERR_SUBNET_FILE, f"{source}: {key}={value!r} is not a CIDR")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as exc:
        raise PluginError(ERR_SUBNET_FILE, f"{source}: {key}={value!r} is not a CIDR: {exc}") from None


def _cidr_list(value: str, key: str, source: str) -> list[str]:
    out: list[str] = []
    for part in value.split(","):
        cidr = _cidr(part.strip(), key, source)
        if cidr not in out:
            out.append(cidr)
    return out


def parse_subnet_env(text: str, source: str = DEFAULT_SUBNET_FILE) -> SubnetEnv:
    """Parse subnet.env text. Like flannel: a network and a subnet (IPv4 or IPv6), FLANNEL_MTU and FLANNEL_IPMASQ
    are required; FLANNEL_NETWORK may be a comma-separated list."""
    networks: list[str] = []
    ip6_networks: list[str] = []
    subnet: str | None = None
    ip6_subnet: str | None = None
    mtu: int | None = None
    ipmasq: bool | None = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        value = value.strip().strip('"')
        if key == "FLANNEL_NETWORK":
            networks = _cidr_list(value, key, source)
        elif key == "FLANNEL_SUBNET":
            subnet = _cidr(value, key, source)
        elif key == "FLANNEL_IPV6_NETWORK":
            ip6_networks = _cidr_list(value, key, source)
        elif key == "FLANNEL_IPV6_SUBNET":
            ip6_subnet = _cidr(value, key, source)
        elif key == "FLANNEL_MTU":
            if not value.isdigit() or not 68 <= int(value) <= 65535:
                raise PluginError(ERR_SUBNET_FILE, f"{source}: FLANNEL_MTU={value!r} is not a valid MTU")
            mtu = int(value)
        elif key == "FLANNEL_IPMASQ":
            ipmasq = value == "true"
    missing: list[str] = []
    if not networks and not ip6_networks:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if subnet is None and ip6_subnet is None:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if mtu is None:
        missing.append("FLANNEL_MTU")
    if ipmasq is None:
        missing.append("FLANNEL_IPMASQ")
    if missing or mtu is None or ipmasq is None:
        raise PluginError(ERR_SUBNET_FILE, f"{source} is missing {', '.join(missing)}")
    return SubnetEnv(networks, subnet, mtu, ipmasq, ip6_networks, ip6_subnet)


def load_subnet_env(path: str) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        # flanneld (kwire's agent) has not written its lease yet: the runtime should retry.
        raise PluginError(
            ERR_TRY_AGAIN_LATER,
            f"open {path}: no such file or directory",
            "flannel has not written its subnet lease yet; is the kwire agent running?",
        ) from None
    except OSError as exc:
        raise PluginError(ERR_SUBNET_FILE, f"cannot read {path}: {exc.strerror}") from None
    return parse_subnet_env(text, path)


# ---------------------------------------------------------------------------------------------- delegate config


def build_delegate(conf: Mapping[str, Any], env: SubnetEnv) -> dict[str, Any]:
    """The delegate plugin's network configuration for an ADD (what flannel-io/cni-plugin's doCmdAdd renders).

    Keys in the user's `delegate` win over the defaults; `name`, `cniVersion` and `ipam` are flannel's own.
    """
    user = conf.get("delegate")
    if user is None:
        user = {}
    if not isinstance(user, dict):
        raise PluginError(ERR_INVALID_CONFIG, "'delegate' must be an object")
    if "type" in user and not isinstance(user["type"], str):
        raise PluginError(ERR_INVALID_CONFIG, "'delegate' dictionary, if present, must have (string) 'type' field")
    if "name" in user:
        raise PluginError(
            ERR_INVALID_CONFIG, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
        )
    if "ipam" in user:
        raise PluginError(
            ERR_INVALID_CONFIG, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
        )

    delegate: dict[str, Any] = {}
    if conf.get("cniVersion"):
        delegate["cniVersion"] = conf["cniVersion"]
    delegate["name"] = conf["name"]
    delegate["type"] = user.get("type", "bridge")
    if delegate["type"] == "bridge":
        delegate.update(bridge="cni0", isGateway=True, hairpinMode=True, forceAddress=True)
    delegate["mtu"] = env.mtu
    # If flannel masquerades pod traffic itself (FLANNEL_IPMASQ=true) the bridge must not add its own rules.
    delegate["ipMasq"] = not env.ipmasq
    delegate.update((k, v) for k, v in user.items() if k != "type")
    delegate["ipam"] = build_ipam(conf, env)
    if "runtimeConfig" in conf:
        delegate["runtimeConfig"] = conf["runtimeConfig"]
    return delegate


def build_ipam(conf: Mapping[str, Any], env: SubnetEnv) -> dict[str, Any]:
    """The delegate's IPAM: the outer `ipam` (if any) completed with the node subnet and the cluster routes."""
    outer = conf.get("ipam")
    if outer is None:
        outer = {}
    if not isinstance(outer, dict):
        raise PluginError(ERR_INVALID_CONFIG, "'ipam' must be an object")
    ipam = dict(outer)
    ipam.setdefault("type", "host-local")
    ranges = []
    if env.subnet:
        ranges.append([{"subnet": env.subnet}])
    if env.ip6_subnet:
        ranges.append([{"subnet": env.ip6_subnet}])
    ipam["ranges"] = ranges
    routes = ipam.get("routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise PluginError(ERR_INVALID_CONFIG, "failed to read IPAM routes: 'ipam.routes' must be a list of objects")
    ipam["routes"] = [*routes, *({"dst": n} for n in env.networks + env.ip6_networks)]
    if ipam["type"] == "host-local":
        ipam.setdefault("dataDir", os.path.join(data_dir(conf), "ipam"))
    return ipam


def data_dir(conf: Mapping[str, Any]) -> str:
    return _path_option(conf, "dataDir", DEFAULT_DATA_DIR)


def subnet_file(conf: Mapping[str, Any]) -> str:
    return _path_option(conf, "subnetFile", DEFAULT_SUBNET_FILE)


def _path_option(conf: Mapping[str, Any], key: str, default: str) -> str:
    """The configuration's `key` (a path), or `default` when it is missing or empty."""
    value = conf.get(key) or default
    if not isinstance(value, str):
        raise PluginError(ERR_INVALID_CONFIG, f"'{key}' must be a string")
    return value


# ---------------------------------------------------------------------------------------------- saved state


def save_delegate(path: str, body: bytes) -> None:
    """Write the rendered delegate configuration atomically (temporary file, fsync, rename)."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise PluginError(ERR_STATE, f"failed to save delegate config {path}: {exc.strerror}") from None


def load_saved(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PluginError(ERR_STATE, f"failed to read delegate config {path}: {exc.strerror}") from None


def remove_saved(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # Per the spec DEL should not fail once the resources are gone; leave a note for the operator.
        sys.stderr.write(f"flannel: could not remove {path}: {exc.strerror}\n")


# ---------------------------------------------------------------------------------------------- delegate exec


def find_plugin(plugin_type: str, cni_path: str) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise PluginError(ERR_INVALID_CONFIG, f"invalid delegate plugin type {plugin_type!r}")
    dirs = [d for d in cni_path.split(":") if d]
    for d in dirs:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise PluginError(ERR_DELEGATE_EXEC, f"failed to find plugin {plugin_type!r} in path {dirs}")


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def exec_delegate(plugin_type: str, command: str, body: bytes, environ: Mapping[str, str]) -> bytes:
    """Run the delegate plugin with CNI_COMMAND=command and `body` on stdin; return its stdout.

    The delegate inherits our environment (CNI_CONTAINERID, CNI_NETNS, ... as the runtime gave them) and our
    stderr. A delegate failure is re-raised with the delegate's own code, message and details.
    """
    path = find_plugin(plugin_type, environ.get("CNI_PATH", ""))
    env = dict(environ)
    env["CNI_COMMAND"] = command
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawn(
            path,
            [path],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)],
            setsigdef=(_SIGPIPE,),
        )
    except OSError as exc:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise PluginError(ERR_DELEGATE_EXEC, f"failed to run delegate {path}: {exc.strerror}") from None
    os.close(in_r)
    os.close(out_w)
    try:
        # Plugins read all of stdin before they write anything, so writing first cannot deadlock.
        view = memoryview(body)
        while view:
            view = view[os.write(in_w, view) :]
    except BrokenPipeError:
        pass  # the delegate exited early; its status and output say why
    finally:
        os.close(in_w)
    try:
        out = _read_all(out_r)
    finally:
        os.close(out_r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return out
    try:
        err = json.loads(out)
    except ValueError:
        err = None
    if isinstance(err, dict) and isinstance(err.get("code"), int):
        msg = str(err.get("msg", ""))
        raise PluginError(err["code"], f"delegate {plugin_type} {command}: {msg}", str(err.get("details", "") or ""))
    how = f"exit status {code}" if code > 0 else f"signal {-code}"
    text = out.decode("utf-8", "replace").strip()
    raise PluginError(ERR_DELEGATE_EXEC, f"delegate {plugin_type} {command} failed ({how})", text)


# ---------------------------------------------------------------------------------------------- commands


def _require(environ: Mapping[str, str], names: tuple[str, ...]) -> None:
    missing = [n for n in names if not environ.get(n)]
    if missing:
        raise PluginError(ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")


def _validate_container_id(cid: str) -> None:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*", cid):
        raise PluginError(ERR_INVALID_ENV, "invalid characters in containerID", cid)


def _validate_ifname(name: str) -> None:
    if len(name) > 15:
        raise PluginError(
            ERR_INVALID_ENV, "interface name is too long", "interface name should be less than 16 characters"
        )
    if name in (".", ".."):
        raise PluginError(ERR_INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in name):
        raise PluginError(ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def parse_config(stdin: bytes) -> dict[str, Any]:
    try:
        conf = json.loads(stdin)
    except ValueError as exc:
        raise PluginError(ERR_DECODING, f"decoding version from network config: {exc}") from None
    if not isinstance(conf, dict):
        raise PluginError(ERR_DECODING, "decoding version from network config: not a JSON object")
    version = conf.get("cniVersion", "") or "0.1.0"
    if not isinstance(version, str):
        raise PluginError(ERR_DECODING, "decoding version from network config: cniVersion must be a string")
    if version not in SUPPORTED_VERSIONS:
        raise PluginError(
            ERR_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports {list(SUPPORTED_VERSIONS)}',
        )
    name = conf.get("name")
    if not isinstance(name, str) or not name:
        raise PluginError(ERR_INVALID_CONFIG, "missing network name")
    return conf


def _saved_path(conf: Mapping[str, Any], container_id: str) -> str:
    return os.path.join(data_dir(conf), container_id)


def _with_runtime_inputs(saved: bytes, conf: Mapping[str, Any], path: str) -> bytes:
    """The saved delegate configuration plus this call's prevResult and runtimeConfig (for DEL and CHECK)."""
    try:
        delegate = json.loads(saved)
    except ValueError:
        raise PluginError(ERR_STATE, f"saved delegate config {path} is not valid JSON") from None
    if not isinstance(delegate, dict) or not isinstance(delegate.get("type"), str):
        raise PluginError(ERR_STATE, f"saved delegate config {path} has no plugin type")
    for key in ("prevResult", "runtimeConfig"):
        if key in conf:
            delegate[key] = conf[key]
    return json.dumps(delegate).encode()


def cmd_add(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    container_id = environ["CNI_CONTAINERID"]
    env = load_subnet_env(subnet_file(conf))
    delegate = build_delegate(conf, env)
    body = json.dumps(delegate).encode()
    sys.stderr.write(f"flannel: delegating to {delegate['type']}: {body.decode()}\n")
    # Saved before the delegate runs: if the ADD fails half-way, the runtime's DEL still finds what to undo.
    save_delegate(_saved_path(conf, container_id), body)
    out = exec_delegate(delegate["type"], "ADD", body, environ)
    try:
        result = json.loads(out)
    except ValueError:
        raise PluginError(ERR_DELEGATE_EXEC, f"delegate {delegate['type']} ADD printed no JSON result") from None
    return json.dumps(result).encode()


def cmd_del(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    path = _saved_path(conf, environ["CNI_CONTAINERID"])
    saved = load_saved(path)
    if saved is None:
        return b""  # never added, or already deleted: DEL is idempotent
    try:
        body = _with_runtime_inputs(saved, conf, path)
    except PluginError as exc:
        # Nothing can be undone without the delegate config (the veth goes with the netns); do not fail forever.
        sys.stderr.write(f"flannel: {exc.msg}; removing it\n")
        remove_saved(path)
        return b""
    exec_delegate(json.loads(body)["type"], "DEL", body, environ)
    remove_saved(path)
    return b""


def cmd_check(conf: dict[str, Any], environ: Mapping[str, str]) -> bytes:
    if _version_tuple(str(conf.get("cniVersion") or "0.1.0")) < (0, 4, 0):
        raise PluginError(ERR_INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    path = _saved_path(conf, environ["CNI_CONTAINERID"])
    saved = load_saved(path)
    if saved is None:
        raise PluginError(ERR_NOT_ADDED, f"no saved delegate config {path}: container was not added by flannel")
    body = _with_runtime_inputs(saved, conf, path)
    delegate = json.loads(body)
    if delegate["type"] == "bridge" and isinstance(delegate.get("prevResult"), dict):
        delegate["prevResult"] = explicit_route_gateways(delegate["prevResult"])
        body = json.dumps(delegate).encode()
    exec_delegate(delegate["type"], "CHECK", body, environ)
    return b""


def explicit_route_gateways(result: dict[str, Any]) -> dict[str, Any]:
    """A copy of an ADD result whose routes without `gw` name the gateway the bridge plugin installed them with.

    On ADD the bridge plugin routes a gateway-less IPAM route via the interface's gateway (`10.42.0.0/16 via
    10.42.7.1`), but the CHECK of containernetworking-plugins before v1.3.0 (Debian 12 ships 1.1.1) then looks
    for a route *without* a gateway and fails ("Expected Route ... not found in routing table"; fixed upstream
    by containernetworking/plugins#887). Naming the gateway describes the same kernel route in a form both old
    and new plugins accept.
    """
    gateways: dict[bool, str] = {}
    for ip in result.get("ips") or []:
        if isinstance(ip, dict) and ip.get("gateway") and isinstance(ip.get("address"), str):
            gateways.setdefault(":" in ip["address"], str(ip["gateway"]))
    routes = []
    for route in result.get("routes") or []:
        if isinstance(route, dict) and not route.get("gw") and isinstance(route.get("dst"), str):
            gw = gateways.get(":" in route["dst"])
            if gw:
                route = {**route, "gw": gw}
        routes.append(route)
    out = dict(result)
    if "routes" in result:
        out["routes"] = routes
    return out


def cmd_version(stdin: bytes) -> bytes:
    version = CURRENT_VERSION
    if stdin.strip():
        try:
            asked = json.loads(stdin).get("cniVersion")
        except (ValueError, AttributeError):
            asked = None
        if asked in SUPPORTED_VERSIONS:
            version = asked
    return json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}).encode()


_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
}


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """One plugin invocation: (exit code, stdout bytes)."""
    cni_version = CURRENT_VERSION
    try:
        try:
            peek = json.loads(stdin)
            if isinstance(peek, dict) and peek.get("cniVersion") in SUPPORTED_VERSIONS:
                cni_version = peek["cniVersion"]
        except ValueError:
            pass
        command = environ.get("CNI_COMMAND", "")
        if not command:
            raise PluginError(ERR_INVALID_ENV, "required env variables [CNI_COMMAND] missing")
        if command == "VERSION":
            return 0, cmd_version(stdin)
        if command not in _REQUIRED_ENV:
            raise PluginError(ERR_INVALID_ENV, f"unknown CNI_COMMAND: {command}")
        _require(environ, _REQUIRED_ENV[command])
        _validate_container_id(environ["CNI_CONTAINERID"])
        _validate_ifname(environ["CNI_IFNAME"])
        conf = parse_config(stdin)
        if command == "ADD":
            return 0, cmd_add(conf, environ)
        if command == "DEL":
            return 0, cmd_del(conf, environ)
        return 0, cmd_check(conf, environ)
    except PluginError as exc:
        return 1, json.dumps(exc.to_dict(cni_version)).encode()
    except Exception as exc:  # the runtime must get a CNI error object, never a traceback
        err = PluginError(ERR_INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return 1, json.dumps(err.to_dict(cni_version)).encode()


def main() -> int:
    try:
        stdin = sys.stdin.buffer.read()
    except OSError:
        stdin = b""
    code, out = run(os.environ, stdin)
    if out:
        sys.stdout.buffer.write(out + b"\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
