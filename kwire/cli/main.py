"""`kwire` command line: argument parsing only; each command hands a config to a role's run().

A role's modules (and asyncio) are imported by its command only: `kwire lab supervise`, a process of every lab,
imports next to nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from kwire import config
from kwire.base import process


def _run(coro: Coroutine[Any, Any, Any]) -> None:
    import asyncio

    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the stdlib loop works too
        asyncio.run(coro)


def _cmd_server(ns: argparse.Namespace) -> int:
    import socket

    from kwire import server
    from kwire.api.bootstrap import JoinError
    from kwire.store.base import StoreError

    cfg = config.load_config(cls=config.ServerConfig, flags=config.flags_from_namespace(ns), config_file=ns.config)
    sockets = [socket.socket(fileno=int(fd)) for fd in ns.listen_fd or []]
    try:
        _run(server.run(cfg, sockets=sockets))
    except JoinError as exc:
        print(f"kwire server: joining the cluster failed: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:  # the datastore did not answer or refused us (its message names no password)
        print(f"kwire server: datastore: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_agent(ns: argparse.Namespace) -> int:
    from kwire.agent import agent

    cfg = config.load_config(cls=config.AgentConfig, flags=config.flags_from_namespace(ns), config_file=ns.config)
    try:
        _run(agent.run(cfg))
    except agent.AgentError as exc:
        print(f"kwire agent: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_etcd_snapshot(ns: argparse.Namespace) -> int:
    """K3s's `etcd-snapshot save|ls|delete|prune`, against the embedded etcd of the server in --data-dir."""
    import asyncio
    import datetime as dt
    import socket
    from pathlib import Path

    from kwire.api.certs import etcd_tls_files
    from kwire.store import snapshots
    from kwire.store.base import StoreError

    data_dir = Path(ns.data_dir)
    directory = Path(ns.dir) if ns.dir else data_dir / "db" / "snapshots"
    try:
        if ns.action == "save":
            tls = etcd_tls_files(data_dir)
            if not tls.client_cert.exists():
                print(f"kwire etcd-snapshot: {data_dir} has no embedded etcd (start the server with --cluster-init)")
                return 1
            path = directory / snapshots.snapshot_name(ns.name, ns.node_name or socket.gethostname())
            size = asyncio.run(
                snapshots.save(
                    f"https://127.0.0.1:{ns.etcd_client_port}", ssl_context=tls.client_ssl_context(), path=path
                )
            )
            print(f"Snapshot {path.name} saved ({size} bytes) to {path}")
        elif ns.action in ("ls", "list"):
            print(f"{'Name':<48} {'Location':<70} {'Size':>10} Created")
            for snap in snapshots.list_snapshots(directory):
                created = dt.datetime.fromtimestamp(snap.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{snap.name:<48} {'file://' + str(snap.path):<70} {snap.size:>10} {created}")
        elif ns.action == "delete":
            if not ns.names:
                print("kwire etcd-snapshot delete: name the snapshots to delete", file=sys.stderr)
                return 1
            for name in snapshots.delete(directory, list(ns.names)):
                print(f"Snapshot {name} deleted")
        else:  # prune
            for name in snapshots.prune(directory, prefix=ns.name, retention=ns.snapshot_retention):
                print(f"Snapshot {name} pruned")
    except (StoreError, OSError, ValueError) as exc:
        print(f"kwire etcd-snapshot: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_runtime(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from kwire.agent.kubelet import runtime

    state = Path(ns.state_dir)
    _run(runtime.serve(state, state / "runtime.sock"))
    return 0


def _cmd_netpol(ns: argparse.Namespace) -> int:
    import json

    from kwire.agent.netpol.stats import policy_counters

    # Run on a node (e.g. `kwire lab exec node1 -- kwire netpol counters`): the table is per network namespace.
    print(json.dumps(policy_counters(), indent=2, sort_keys=True))
    return 0


def _cmd_check(ns: argparse.Namespace) -> int:
    """`kwire check` on a node: its kernel, sysctls, links, firewalls and DNS, plus the cluster's objects when a
    kubeconfig is readable. Exit 1 when any finding is an error."""
    import asyncio
    import json
    import os
    import socket
    from pathlib import Path

    from kwire.check import finding, node, render

    findings: list[finding.Finding] = []
    settings = None
    if ns.scope in ("all", "cluster"):
        from kwire.check import cluster
        from kwire.client import ApiClient, load_kubeconfig

        kubeconfig = ns.kubeconfig or os.environ.get("KUBECONFIG") or "/etc/kwire/kwire.yaml"

        async def api() -> cluster.ClusterReport:
            async with ApiClient(load_kubeconfig(kubeconfig), timeout=20) as client:
                return await cluster.run(client, node_dirs={ns.node: Path(ns.data_dir)})

        try:
            report = asyncio.run(api())
            findings += report.findings
            settings = report.settings
        except Exception as exc:  # noqa: BLE001 - an unreachable API is a finding, the node's checks still run
            findings.append(
                finding.Finding(
                    "error" if ns.scope == "cluster" else "warning",
                    "api",
                    kubeconfig,
                    f"cannot read the cluster through {kubeconfig}: {exc}",
                    "pass --kubeconfig (the server's /etc/kwire/kwire.yaml)",
                )
            )
    links = None
    if ns.scope in ("all", "node"):
        opts = node.NodeOptions(
            node=ns.node or socket.gethostname(),
            data_dir=Path(ns.data_dir) if ns.data_dir else None,
            cluster_dns=ns.cluster_dns or (settings.cluster_dns if settings else "10.43.0.10"),
            cluster_domain=ns.cluster_domain or (settings.cluster_domain if settings else "cluster.local"),
            cluster_cidr=ns.cluster_cidr or (settings.cluster_cidr if settings else "10.42.0.0/16"),
            flannel_iface=ns.flannel_iface,
            backend=ns.flannel_backend or (settings.flannel_backend if settings else "vxlan"),
        )
        nr = node.run(opts)
        findings += nr.findings
        links = nr.links
    if ns.report:  # for `kwire lab check`: the findings and the facts it compares across nodes
        print(json.dumps({"findings": [f.to_json() for f in findings], "links": links.to_json() if links else {}}))
    elif ns.output == "json":
        print(render.to_json(findings))
    else:
        print(render.to_text(findings), end="")
    return finding.exit_status(findings)


def _cmd_lab_check(name: str, output: str) -> int:
    from kwire.check import finding, render
    from kwire.check import lab as labcheck

    try:
        findings = labcheck.run(name)
    except labcheck.LabCheckError as exc:
        print(f"kwire lab check: {exc}", file=sys.stderr)
        return 1
    if output == "json":
        print(render.to_json(findings))
    else:
        print(render.to_text(findings, checked=f"lab {name}"), end="")
    return finding.exit_status(findings)


class _LabProgress:
    """`lab up`'s progress: a spinner on the current stage and a line per finished stage with its time (rich, on
    a terminal; plain lines otherwise)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.status: Any = None

    def __enter__(self) -> _LabProgress:
        if self.console.is_terminal:
            self.status = self.console.status("starting")
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def start(self, stage: str) -> None:
        if self.status is not None:
            self.status.update(f"{stage} ...")

    def done(self, stage: str, seconds: float) -> None:
        if self.console.is_terminal:
            self.console.print(f"[green]✓[/green] {stage} [dim]({seconds:.1f}s)[/dim]")
        else:
            print(f"  {stage} ({seconds:.1f}s)", file=sys.stderr, flush=True)


def _print_lab_up(st: Any, seconds: float) -> None:
    from kwire.lab import lab, topology

    topo = topology.build(st.name, nodes=st.nodes)
    flag = "" if st.name == topology.DEFAULT_LAB else f" --name {st.name}"
    print(
        f"lab {st.name}: {st.nodes} nodes ({st.flannel_backend}) up in {seconds:.1f}s"
        if seconds
        else f"lab {st.name} is already up"
    )
    print(f"  LAN {topo.lan_cidr}: " + ", ".join(f"{h.name} {h.ip}" for h in topo.hosts))
    where = ", ".join(f"{h.name} {h.ip}" for h in topo.nodes if h.name in lab.server_procs(st).values())
    print(
        f"  API https://127.0.0.1:{st.api_port}  (server{'s' if st.servers > 1 else ''} in {where}:{lab.SERVER_PORT})"
    )
    print(f"  export KUBECONFIG={topo.kubeconfig}")
    print("  kubectl get nodes -o wide")
    print(f"  kwire lab exec{flag} node1 -- ip route      kwire lab exec{flag} -n default POD -- curl ...")
    print(f"  kwire lab down{flag}")


def _cmd_lab(ns: argparse.Namespace) -> int:
    if ns.lab_cmd == "supervise":  # the lab's own long-lived process: it imports only kwire/lab/supervisor.py's needs
        from kwire.lab import supervisor

        return supervisor.run(ns.name, listen_fd=ns.listen_fd)
    import json
    import os

    from kwire.lab import lab

    try:
        if ns.lab_cmd == "up":
            with _LabProgress() as progress:
                st, seconds = lab.up(
                    ns.name,
                    nodes=ns.nodes,
                    flannel_backend=ns.flannel_backend,
                    config_file=ns.config or "",
                    api_port=ns.api_port,
                    timeout=ns.timeout,
                    wait=not ns.no_wait,
                    progress=progress,
                    servers=ns.servers,
                )
            _print_lab_up(st, seconds)
        elif ns.lab_cmd == "down":
            removed = lab.down(ns.name)
            print(f"lab {ns.name} down ({len(removed)} namespaces removed)")
        elif ns.lab_cmd == "status":
            print(json.dumps(lab.status(ns.name), indent=2))
        elif ns.lab_cmd == "exec":
            argv = list(ns.argv)
            if argv and argv[0] == "--":
                argv = argv[1:]
            if not argv:
                argv = [os.environ.get("SHELL", "/bin/bash")]
            target = lab.exec_target(ns.name, ns.target, namespace=ns.namespace)
            os.execvp(lab.IP, [lab.IP, "netns", "exec", target, *argv])
        elif ns.lab_cmd == "node":
            if ns.action == "stop":
                lab.node_stop(ns.name, ns.node)
                print(f"{ns.node} stopped")
            else:
                lab.node_start(ns.name, ns.node)
                print(f"{ns.node} started (Ready)")
        elif ns.lab_cmd == "check":
            return _cmd_lab_check(ns.name, ns.output)
    except (lab.LabError, ValueError) as exc:
        print(f"kwire lab: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_trace(ns: argparse.Namespace) -> int:
    import json

    from kwire.trace import run

    lab_name = getattr(ns, "lab", "") or (ns.name if getattr(ns, "lab_cmd", "") == "trace" else "")
    where = run.Where(lab=lab_name, kubeconfig=ns.kubeconfig, node=ns.node, pod_netns_prefix=ns.pod_netns_prefix)
    try:
        result = run.trace(where, ns.source, ns.destination, do_probe=ns.probe, timeout=ns.timeout)
    except run.TraceError as exc:
        print(f"kwire trace: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_json(), indent=2) if ns.output == "json" else result.text())
    return result.exit_code


def _trace_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FROM", help="ns/pod, svc/ns/name, node/NAME, client (lab) or an IP")
    p.add_argument(
        "destination",
        metavar="TO",
        help="as FROM, or a DNS name; optionally :PORT and /tcp or /udp (e.g. svc/default/web:80/tcp)",
    )
    p.add_argument("--probe", action="store_true", help="send a real packet with nft tracing on and compare")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--timeout", type=float, default=2.0, help="the probe's timeout in seconds")
    p.add_argument("--kubeconfig", default="", help="on a node: default /etc/kwire/kwire.yaml")
    p.add_argument("--node", default="", help="on a node: this node's name (default: the host name)")
    p.add_argument("--pod-netns-prefix", default="kwire-pod-", help="on a node: the agent's --pod-netns-prefix")


def _cmd_install(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from kwire import install

    args = list(ns.args)
    if args and args[0] == "--":
        args = args[1:]
    try:
        written = install.install(ns.role, args=args, root=Path(ns.root), start=not ns.no_start)
    except (ValueError, OSError) as exc:
        print(f"kwire install: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _cmd_token(ns: argparse.Namespace) -> int:
    """K3s's `k3s token`: print the server's join tokens in the secure K10 form, or rotate the agent token. A new
    token comes from --new-token-file or KWIRE_NEW_TOKEN (never the command line), else it is random."""
    import os
    from pathlib import Path

    from kwire.api.authn import tokens

    data_dir = Path(ns.data_dir)
    ca_path = data_dir / "tls" / "server-ca.crt"
    if not (data_dir / tokens.SERVER_FILE).exists() or not ca_path.exists():
        print(
            f"kwire token: {data_dir} holds no server (start `kwire server --data-dir {data_dir}` first)",
            file=sys.stderr,
        )
        return 1
    if ns.action == "rotate":
        if not ns.agent:
            # The server token seals the datastore's bootstrap data and encryption keys: rotating it means re-sealing
            # those with every server's cooperation (K3s's `token rotate`), which kwire does not do yet.
            print("kwire token rotate: only the agent token can be rotated (--agent) for now", file=sys.stderr)
            return 1
        new = (
            Path(ns.new_token_file).read_text().strip() if ns.new_token_file else os.environ.get("KWIRE_NEW_TOKEN", "")
        )
        tokens.rotate(data_dir, agent=True, new=new)
        print("kwire token: the agent token was rotated; nodes joining from now on need the new one:")
    join = tokens.JoinTokens(data_dir)
    ca = ca_path.read_bytes()
    print(f"server token: {tokens.secure_form(join.server, ca_pem=ca)}")
    print(f"agent token:  {tokens.secure_form(join.agent, ca_pem=ca, user='node')}")
    return 0


def _cmd_secrets_encrypt(ns: argparse.Namespace) -> int:
    """K3s's `secrets-encrypt status|rotate-keys`, through the server (as its admin kubeconfig's user)."""
    import json
    from pathlib import Path

    from kwire.api import encryptionkeys
    from kwire.client.client import ApiClient, ApiStatusError
    from kwire.client.kubeconfig import load_kubeconfig

    path = Path(ns.kubeconfig) if ns.kubeconfig else Path(ns.data_dir) / "cred" / "admin.kubeconfig"
    try:
        cfg = load_kubeconfig(path)
    except OSError as exc:
        print(f"kwire secrets-encrypt: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    async def call() -> dict[str, Any]:
        client = ApiClient(cfg)
        try:
            if ns.action == "status":
                return await client.request("GET", encryptionkeys.STATUS_PATH)
            return await client.request("POST", encryptionkeys.ROTATE_PATH, body={})
        finally:
            await client.close()

    try:
        doc: dict[str, Any] = {}

        async def run() -> None:
            doc.update(await call())

        _run(run())
    except (ApiStatusError, OSError) as exc:
        print(f"kwire secrets-encrypt: {exc}", file=sys.stderr)
        return 1
    if ns.output == "json":
        print(json.dumps(doc, indent=2))
    elif ns.action == "status":
        print(encryptionkeys.format_status(doc))
    else:
        print(f"keys rotated to {doc['key']}; {doc['reencrypted']} secrets re-encrypted")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kwire", description="The K3s cluster networking stack, on real Linux networking."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("etcd-snapshot", help="snapshots of a server's embedded etcd (K3s's etcd-snapshot)")
    p.add_argument("action", choices=("save", "ls", "list", "delete", "prune"))
    p.add_argument("names", nargs="*", help="delete: the snapshots' names")
    p.add_argument("--data-dir", "-d", default=config.ServerConfig.data_dir, help="the server's data dir")
    p.add_argument("--dir", "--etcd-snapshot-dir", dest="dir", default="", help="default <data-dir>/db/snapshots")
    p.add_argument("--name", default="on-demand", help="save: the name's prefix; prune: which snapshots")
    p.add_argument("--snapshot-retention", "--etcd-snapshot-retention", type=int, default=5)
    p.add_argument("--etcd-client-port", type=int, default=2379)
    p.add_argument("--node-name", default="", help="in the snapshot's name (default: the host name)")
    p.set_defaults(func=_cmd_etcd_snapshot)

    p = sub.add_parser("token", help="print or rotate the server's join tokens (K3s's `k3s token`)")
    p.add_argument("action", nargs="?", choices=("show", "rotate"), default="show")
    p.add_argument("--data-dir", "-d", default=config.ServerConfig.data_dir, help="the server's data dir")
    p.add_argument("--agent", action="store_true", help="rotate: the agent token (the only one rotatable yet)")
    p.add_argument("--new-token-file", default="", help="rotate: read the new token from this file")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser("secrets-encrypt", help="Secrets encryption at rest (K3s's secrets-encrypt)")
    p.add_argument("action", choices=("status", "rotate-keys"))
    p.add_argument("--data-dir", "-d", default=config.ServerConfig.data_dir, help="the server's data dir")
    p.add_argument("--kubeconfig", default="", help="default <data-dir>/cred/admin.kubeconfig")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_secrets_encrypt)

    p = sub.add_parser("server", help="run the control plane (API server, store, controllers)")
    p.add_argument("-c", "--config", default=None, help="config file (K3s keys); default /etc/kwire/config.yaml")
    config.add_arguments(p, config.ServerConfig)
    p.add_argument("--listen-fd", action="append", help=argparse.SUPPRESS)  # a listening socket handed over by the lab
    p.set_defaults(func=_cmd_server)

    p = sub.add_parser("agent", help="run a node: registration, flannel, CNI, pods")
    p.add_argument("-c", "--config", default=None, help="config file (K3s keys); default /etc/kwire/config.yaml")
    config.add_arguments(p, config.AgentConfig)
    p.set_defaults(func=_cmd_agent)

    p = sub.add_parser("runtime", help="the node's pod runtime (started by the agent)")
    p.add_argument("--state-dir", required=True)
    p.set_defaults(func=_cmd_runtime)

    p = sub.add_parser("netpol", help="NetworkPolicy enforcement on this node")
    np_sub = p.add_subparsers(dest="netpol_cmd", required=True)
    np_sub.add_parser("counters", help="per-policy allowed/denied packet counters of this node, as JSON").set_defaults(
        func=_cmd_netpol
    )

    p = sub.add_parser("check", help="find what breaks the cluster network on this node (exit 1 on an error)")
    p.add_argument("--node", default="", help="this node's name (default: the host name)")
    p.add_argument("--data-dir", default=config.AgentConfig.data_dir, help="the agent's data dir")
    p.add_argument("--kubeconfig", default="", help="default $KUBECONFIG, else /etc/kwire/kwire.yaml")
    p.add_argument("--scope", choices=("all", "node", "cluster"), default="all", help="node: no API; cluster: API only")
    p.add_argument("--cluster-dns", default="", help="default: the cluster's (kube-system/kwire-config)")
    p.add_argument("--cluster-domain", default="")
    p.add_argument("--cluster-cidr", default="", help="default: the cluster's")
    p.add_argument("--flannel-iface", default="", help="default: flannel.1's underlay, else the default route's")
    p.add_argument("--flannel-backend", default="", choices=("", *config.BACKENDS))
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--report", action="store_true", help=argparse.SUPPRESS)  # kwire lab check's node runs
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("install", help="write (and start) a systemd unit for this host, as K3s's install script")
    p.add_argument("role", choices=("server", "agent"))
    p.add_argument("--root", default="/", help="write under this directory instead of / (nothing is started)")
    p.add_argument("--no-start", action="store_true", help="write the files only")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- flags for ExecStart (tokens go in KWIRE_TOKEN)")
    p.set_defaults(func=_cmd_install)

    p = sub.add_parser(
        "trace", help="the path a connection takes, hop by hop, from kwire's state (--probe: and a real packet)"
    )
    _trace_arguments(p)
    p.add_argument("--lab", default="", help="trace in this lab (same as `kwire lab trace --name LAB`)")
    p.set_defaults(func=_cmd_trace)

    lab = sub.add_parser("lab", help="a multi-node cluster on this machine, in network namespaces")
    lsub = lab.add_subparsers(dest="lab_cmd", required=True)
    for cmd in ("up", "down", "status", "exec", "node", "check", "trace", "supervise"):
        # `supervise` is the lab's own supervisor process, started by `up`.
        lp = lsub.add_parser(cmd, help=argparse.SUPPRESS) if cmd == "supervise" else lsub.add_parser(cmd)
        lp.add_argument("--name", default="default", help="lab name (several labs can coexist)")
        lp.set_defaults(func=_cmd_lab)
        if cmd == "up":
            lp.add_argument("--nodes", type=int, default=3)
            lp.add_argument(
                "--servers",
                type=int,
                default=1,
                help="servers on nodes 1..N: 1 on SQLite, or an HA control plane on embedded etcd (3 recommended)",
            )
            lp.add_argument("--flannel-backend", default="vxlan", choices=config.BACKENDS)
            lp.add_argument("--config", default=None, help="server config file (K3s keys)")
            lp.add_argument("--api-port", type=int, default=6443, help="the API's port on the machine's 127.0.0.1")
            lp.add_argument("--timeout", type=float, default=60.0)
            lp.add_argument(
                "--no-wait",
                action="store_true",
                help="return once nodes are Ready, without waiting for cluster DNS and the add-ons",
            )
        elif cmd == "exec":
            lp.add_argument("-n", "--namespace", default="default", help="namespace of a POD target")
            lp.add_argument("target", help="node1..nodeN, client, or a pod name")
            lp.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
        elif cmd == "node":
            lp.add_argument("action", choices=("stop", "start"))
            lp.add_argument("node")
        elif cmd == "check":
            lp.add_argument("-o", "--output", choices=("text", "json"), default="text")
        elif cmd == "trace":
            _trace_arguments(lp)
            lp.set_defaults(func=_cmd_trace)
        elif cmd == "supervise":
            lp.add_argument("--listen-fd", type=int, required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    process.start(level=logging.DEBUG if ns.verbose else logging.INFO)
    try:
        return int(ns.func(ns) or 0)
    except config.ConfigError as exc:
        print(f"kwire: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
