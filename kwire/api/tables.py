"""Server-side printing (`as=Table`): the columns and cells kube-apiserver's printers produce.

Mirrors kubernetes `pkg/printers/internalversion/printers.go` for the kinds we serve (priority-1 columns are
what `-o wide` adds); custom resources get their CRD's additionalPrinterColumns (`kwire.api.crd.columns`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from kwire.api import convert
from kwire.api.crd import columns
from kwire.api.registry import Kind
from kwire.base.labels import format_map

Obj = dict[str, Any]
Cells = list[Any]


def _col(name: str, *, type_: str = "string", fmt: str = "", priority: int = 0, desc: str = "") -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}


NAME = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE = _col("Age", desc="CreationTimestamp is a timestamp representing the server time when this object was created.")


def _parse_time(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(d: dt.timedelta) -> str:
    """apimachinery's duration.HumanDuration."""
    secs = d.total_seconds()
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    s = int(secs)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        rest = days % 365
        return f"{days // 365}y" if rest == 0 else f"{days // 365}y{rest}d"
    return f"{hours // 24 // 365}y"


def humanize_age(created: str | None, *, now: dt.datetime) -> str:
    t = _parse_time(created)
    if t is None:
        return "<unknown>"
    return human_duration(now - t)


def format_label_selector(sel: Obj | None) -> str:
    """metav1.FormatLabelSelector."""
    if sel is None:
        return "<none>"
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for e in sel.get("matchExpressions") or []:
        op, key, vals = e.get("operator"), e.get("key", ""), ",".join(e.get("values") or [])
        parts.append(
            {
                "In": f"{key} in ({vals})",
                "NotIn": f"{key} notin ({vals})",
                "Exists": key,
                "DoesNotExist": f"!{key}",
            }.get(op, key)
        )
    return ",".join(parts) if parts else "<none>"


def _more(items: list[str], limit: int = 3) -> str:
    if not items:
        return "<none>"
    if len(items) > limit:
        return ",".join(items[:limit]) + f" + {len(items) - limit} more..."
    return ",".join(items)


# -- per-kind printers: (columns, cells(obj, now)) -------------------------------------------------------------
def _age(o: Obj, now: dt.datetime) -> str:
    """The Age cell every printer ends or starts with."""
    return humanize_age(o["metadata"].get("creationTimestamp"), now=now)


def _namespace(o: Obj, now: dt.datetime) -> Cells:
    return [(o.get("status") or {}).get("phase", ""), _age(o, now)]


def _node(o: Obj, now: dt.datetime) -> Cells:
    status = o.get("status") or {}
    spec = o.get("spec") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    # kube's printNode: "Ready" when True, "NotReady" for False *and* Unknown, "Unknown" only without a condition.
    st = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True" else "NotReady")
    if spec.get("unschedulable"):
        st += ",SchedulingDisabled"
    labels = o["metadata"].get("labels") or {}
    roles = sorted(
        {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and k.split("/", 1)[1]}
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    info = status.get("nodeInfo") or {}
    addrs = status.get("addresses") or []

    def addr(kind: str) -> str:
        return next((a.get("address", "") for a in addrs if a.get("type") == kind), "<none>")

    return [
        st,
        ",".join(roles) if roles else "<none>",
        _age(o, now),
        info.get("kubeletVersion", ""),
        addr("InternalIP"),
        addr("ExternalIP"),
        info.get("osImage", "<unknown>"),
        info.get("kernelVersion", "<unknown>"),
        info.get("containerRuntimeVersion", "<unknown>"),
    ]


def _pod(o: Obj, now: dt.datetime) -> Cells:
    spec = o.get("spec") or {}
    status = o.get("status") or {}
    meta = o["metadata"]
    inits = {str(c.get("name")): c for c in spec.get("initContainers") or []}
    sidecars = [n for n, c in inits.items() if c.get("restartPolicy") == "Always"]
    total = len(spec.get("containers") or []) + len(sidecars)
    ready = 0
    restarts = 0
    last_restart: dt.datetime | None = None
    reason = status.get("reason") or status.get("phase") or ""

    def note_restart(cs: Obj) -> None:
        nonlocal last_restart
        term = (cs.get("lastState") or {}).get("terminated") or {}
        fin = _parse_time(term.get("finishedAt"))
        if fin and (last_restart is None or fin > last_restart):
            last_restart = fin

    # kubectl's printPod: the first init container that has not completed names the status (Init:1/3,
    # Init:Error, Init:CrashLoopBackOff); started sidecars count as containers.
    initializing = False
    for i, cs in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(cs.get("restartCount") or 0)
        note_restart(cs)
        state = cs.get("state") or {}
        term = state.get("terminated")
        waiting = state.get("waiting") or {}
        if term is not None and term.get("exitCode") == 0:
            continue
        if cs.get("name") in sidecars and cs.get("started"):
            ready += 1 if cs.get("ready") else 0
            continue
        if term is not None:
            reason = "Init:" + (
                term.get("reason")
                or (f"Signal:{term['signal']}" if term.get("signal") else f"ExitCode:{term.get('exitCode', 0)}")
            )
        elif waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(inits)}"
        initializing = True
        break
    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    for cs in status.get("containerStatuses") or [] if (not initializing or initialized) else []:
        restarts += int(cs.get("restartCount") or 0)
        note_restart(cs)
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            t = state["terminated"]
            reason = t.get("reason") or (
                f"Signal:{t['signal']}" if t.get("signal") else f"ExitCode:{t.get('exitCode', 0)}"
            )
        elif cs.get("ready") and "running" in state:
            ready += 1
    if reason == "Completed" and status.get("phase") == "Running":
        reason = "Running"
    if meta.get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    rs = str(restarts)
    if restarts and last_restart is not None:
        rs = f"{restarts} ({human_duration(now - last_restart)} ago)"
    ips = [p.get("ip") for p in status.get("podIPs") or [] if p.get("ip")] or (
        [status["podIP"]] if status.get("podIP") else []
    )
    gates = spec.get("readinessGates") or []
    return [
        f"{ready}/{total}",
        reason,
        rs,
        humanize_age(meta.get("creationTimestamp"), now=now),
        ",".join(ips) if ips else "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{sum(1 for g in gates if any(c.get('type') == g.get('conditionType') and c.get('status') == 'True' for c in status.get('conditions') or []))}/{len(gates)}"
        if gates
        else "<none>",
    ]


def _svc_external(o: Obj) -> str:
    spec = o.get("spec") or {}
    t = spec.get("type", "ClusterIP")
    ext = list(spec.get("externalIPs") or [])
    if t in ("ClusterIP", "NodePort"):
        return ",".join(ext) if ext else "<none>"
    if t == "LoadBalancer":
        lb = [
            i.get("ip") or i.get("hostname")
            for i in ((o.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ]
        lb = [x for x in lb if x] + ext
        return ",".join(lb) if lb else "<pending>"
    if t == "ExternalName":
        return spec.get("externalName", "")
    return "<unknown>"


def _service(o: Obj, now: dt.datetime) -> Cells:
    spec = o.get("spec") or {}
    ports = []
    for p in spec.get("ports") or []:
        s = str(p.get("port"))
        if p.get("nodePort"):
            s += f":{p['nodePort']}"
        ports.append(f"{s}/{p.get('protocol', 'TCP')}")
    return [
        spec.get("type", "ClusterIP"),
        spec.get("clusterIP") or "<none>",
        _svc_external(o),
        ",".join(ports) if ports else "<none>",
        _age(o, now),
        format_map(spec.get("selector")),
    ]


def _join_host_port(ip: str, port: Any) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _endpoints(o: Obj, now: dt.datetime) -> Cells:
    """printEndpoints / formatEndpoints: the ready addresses as ip:port, at most 3 then " + N more..."; "<none>"
    without subsets, "" when there are subsets but no ready address."""
    subsets = o.get("subsets") or []
    age = _age(o, now)
    if not subsets:
        return ["<none>", age]
    items: list[str] = []
    for ss in subsets:
        addrs = [a.get("ip", "") for a in ss.get("addresses") or []]
        ports = ss.get("ports") or []
        if not ports:
            items.extend(addrs)  # a headless Service may have no ports
        for p in ports:
            items.extend(_join_host_port(a, p.get("port")) for a in addrs)
    if len(items) > 3:
        return [",".join(items[:3]) + f" + {len(items) - 3} more...", age]
    return [",".join(items), age]


def _configmap(o: Obj, now: dt.datetime) -> Cells:
    return [
        len(o.get("data") or {}) + len(o.get("binaryData") or {}),
        _age(o, now),
    ]


def _secret(o: Obj, now: dt.datetime) -> Cells:
    return [
        o.get("type", "Opaque"),
        len(o.get("data") or {}) + len(o.get("stringData") or {}),
        _age(o, now),
    ]


def _event(o: Obj, now: dt.datetime) -> Cells:
    inv = o.get("involvedObject") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or (o.get("series") or {}).get("lastObservedTime")
    first = o.get("firstTimestamp") or o.get("eventTime")
    src = o.get("source") or {}
    source = src.get("component", "") + (f", {src['host']}" if src.get("host") else "")
    return [
        humanize_age(last, now=now) if last else "<unknown>",
        o.get("type", ""),
        o.get("reason", ""),
        f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}",
        str(o.get("message", "")).strip(),
        inv.get("fieldPath", ""),
        source or o.get("reportingComponent", ""),
        humanize_age(first, now=now) if first else "<unknown>",
        int(o.get("count") or 1),
        o["metadata"].get("name", ""),
    ]


def _sa(o: Obj, now: dt.datetime) -> Cells:
    return [len(o.get("secrets") or []), _age(o, now)]


def _template_cells(template: Obj | None) -> Cells:
    """The Containers and Images cells (`-o wide`) of a kind that carries a pod template."""
    cs = ((template or {}).get("spec") or {}).get("containers") or []
    return [",".join(c.get("name", "") for c in cs), ",".join(c.get("image", "") for c in cs)]


def _workload_wide(spec: Obj) -> Cells:
    """The `-o wide` cells of Deployment, ReplicaSet, DaemonSet and Job: Containers, Images, Selector."""
    return [*_template_cells(spec.get("template")), format_label_selector(spec.get("selector"))]


def _deployment(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [
        f"{st.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        int(st.get("updatedReplicas") or 0),
        int(st.get("availableReplicas") or 0),
        _age(o, now),
        *_workload_wide(spec),
    ]


def _replicaset(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [
        int(spec.get("replicas") or 0),
        int(st.get("replicas") or 0),
        int(st.get("readyReplicas") or 0),
        _age(o, now),
        *_workload_wide(spec),
    ]


def _daemonset(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    node_sel = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")
    return [
        int(st.get("desiredNumberScheduled") or 0),
        int(st.get("currentNumberScheduled") or 0),
        int(st.get("numberReady") or 0),
        int(st.get("updatedNumberScheduled") or 0),
        int(st.get("numberAvailable") or 0),
        format_map(node_sel),
        _age(o, now),
        *_workload_wide(spec),
    ]


def _statefulset(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [
        f"{int(st.get('readyReplicas') or 0)}/{int(spec.get('replicas') or 0)}",
        _age(o, now),
        *_template_cells(spec.get("template")),
    ]


def _controllerrevision(o: Obj, now: dt.datetime) -> Cells:
    ref = next((r for r in o["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
    controller = "<none>"
    if ref:
        group = str(ref.get("apiVersion", "")).rpartition("/")[0]
        gk = f"{ref.get('kind', '')}.{group}" if group else str(ref.get("kind", ""))
        controller = f"{gk.lower()}/{ref.get('name', '')}"
    return [controller, int(o.get("revision") or 0), _age(o, now)]


def _job_status(o: Obj) -> str:
    """printJob's Status column (kubectl 1.32)."""
    conds = {c.get("type") for c in (o.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    for ctype, text in (("Complete", "Complete"), ("Failed", "Failed")):
        if ctype in conds:
            return text
    if o["metadata"].get("deletionTimestamp"):
        return "Terminating"
    for ctype in ("Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if ctype in conds:
            return ctype
    return "Running"


def _job(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    succeeded = int(st.get("succeeded") or 0)
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{spec['completions']}"
    elif int(spec.get("parallelism") or 0) > 1:
        completions = f"{succeeded}/1 of {spec['parallelism']}"
    else:
        completions = f"{succeeded}/1"
    start, end = _parse_time(st.get("startTime")), _parse_time(st.get("completionTime"))
    duration = "" if start is None else human_duration((end or now) - start)
    return [
        _job_status(o),
        completions,
        duration,
        _age(o, now),
        *_workload_wide(spec),
    ]


def _cronjob(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    job_spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    last = _parse_time(st.get("lastScheduleTime"))
    return [
        str(spec.get("schedule", "")),
        str(spec.get("timeZone") or "<none>"),
        "True" if spec.get("suspend") else "False",
        len(st.get("active") or []),
        "<none>" if last is None else human_duration(now - last),
        _age(o, now),
        *_workload_wide(job_spec),
    ]


def _pdb(o: Obj, now: dt.datetime) -> Cells:
    spec, st = o.get("spec") or {}, o.get("status") or {}
    return [
        str(spec["minAvailable"]) if "minAvailable" in spec else "N/A",
        str(spec["maxUnavailable"]) if "maxUnavailable" in spec else "N/A",
        int(st.get("disruptionsAllowed") or 0),
        _age(o, now),
    ]


def _list_with_more(items: list[str], limit: int = 3) -> str:
    """listWithMoreString: up to `limit` items, " + N more..." for the rest, "<unset>" for none."""
    if len(items) > limit:
        return ",".join(items[:limit]) + f" + {len(items) - limit} more..."
    return ",".join(items) or "<unset>"


def _endpointslice(o: Obj, now: dt.datetime) -> Cells:
    """printEndpointSlice: formatDiscoveryPorts (a port without a number shows its name, else "*") and
    formatDiscoveryEndpoints (every address of every endpoint)."""
    ports = [p for p in o.get("ports") or [] if isinstance(p, dict)]
    port_s = [
        str(p["port"]) if p.get("port") is not None else (str(p["name"]) if p.get("name") is not None else "*")
        for p in ports
    ]
    addrs = [str(a) for e in o.get("endpoints") or [] if isinstance(e, dict) for a in e.get("addresses") or []]
    return [
        o.get("addressType", ""),
        _list_with_more(port_s),
        _list_with_more(addrs),
        _age(o, now),
    ]


def _ingress(o: Obj, now: dt.datetime) -> Cells:
    spec = o.get("spec") or {}
    hosts = [r.get("host") for r in spec.get("rules") or [] if r.get("host")]
    lb = [
        i.get("ip") or i.get("hostname")
        for i in ((o.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    ]
    return [
        spec.get("ingressClassName") or "<none>",
        _more(hosts, 4) if hosts else "*",
        ",".join(x for x in lb if x),
        "80, 443" if spec.get("tls") else "80",
        _age(o, now),
    ]


def _ingressclass(o: Obj, now: dt.datetime) -> Cells:
    spec = o.get("spec") or {}
    params = spec.get("parameters")
    p = "<none>"
    if params:
        p = f"{params.get('kind', '')}/{params.get('name', '')}"
        if params.get("apiGroup"):
            p = f"{params['kind']}.{params['apiGroup']}/{params.get('name', '')}"
    return [spec.get("controller", ""), p, _age(o, now)]


def _netpol(o: Obj, now: dt.datetime) -> Cells:
    return [
        format_label_selector((o.get("spec") or {}).get("podSelector")),
        _age(o, now),
    ]


def _lease(o: Obj, now: dt.datetime) -> Cells:
    return [
        (o.get("spec") or {}).get("holderIdentity") or "",
        _age(o, now),
    ]


def _apiservice(o: Obj, now: dt.datetime) -> Cells:
    """kube-aggregator's printer: the Service (or Local) and the Available condition, with its reason when not True."""
    svc = (o.get("spec") or {}).get("service")
    where = f"{svc.get('namespace', '')}/{svc.get('name', '')}" if svc else "Local"
    cond = next((c for c in (o.get("status") or {}).get("conditions") or [] if c.get("type") == "Available"), None)
    available = "Unknown"
    if cond is not None:
        available = str(cond.get("status"))
        if available != "True":
            available += f" ({cond.get('reason', '')})"
    return [where, available, _age(o, now)]


def _crd(o: Obj, now: dt.datetime) -> Cells:
    return [o["metadata"].get("creationTimestamp") or "<unknown>"]


def _created_at(o: Obj, now: dt.datetime) -> Cells:
    """printRole/printClusterRole/printLimitRange: the creation time as RFC 3339."""
    return [o["metadata"].get("creationTimestamp", "")]


def _binding(o: Obj, now: dt.datetime) -> Cells:
    ref = o.get("roleRef") or {}
    users, groups, sas = [], [], []
    for s in o.get("subjects") or []:
        if s.get("kind") == "User":
            users.append(s.get("name", ""))
        elif s.get("kind") == "Group":
            groups.append(s.get("name", ""))
        elif s.get("kind") == "ServiceAccount":
            sas.append(f"{s.get('namespace', '')}:{s.get('name', '')}")
    return [
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _age(o, now),
        ", ".join(users),
        ", ".join(groups),
        ", ".join(sas),
    ]


def _priorityclass(o: Obj, now: dt.datetime) -> Cells:
    return [int(o.get("value") or 0), bool(o.get("globalDefault")), _age(o, now), o.get("preemptionPolicy", "")]


def _is_default_class(o: Obj) -> bool:
    anns = o["metadata"].get("annotations") or {}
    return "true" in (
        anns.get("storageclass.kubernetes.io/is-default-class"),
        anns.get("storageclass.beta.kubernetes.io/is-default-class"),
    )


def _storageclass(o: Obj, now: dt.datetime) -> Cells:
    return [
        o.get("provisioner", ""),
        o.get("reclaimPolicy", "Delete"),
        o.get("volumeBindingMode", "Immediate"),
        bool(o.get("allowVolumeExpansion")),
        _age(o, now),
    ]


_ACCESS_SHORT = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}


def _access_modes(modes: list[str] | None) -> str:
    """helper.GetAccessModesAsString: each mode once, in kube's order."""
    present = set(modes or [])
    return ",".join(short for mode, short in _ACCESS_SHORT.items() if mode in present)


def _pv(o: Obj, now: dt.datetime) -> Cells:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    ref = spec.get("claimRef") or {}
    claim = f"{ref.get('namespace', '')}/{ref.get('name', '')}" if ref else ""
    return [
        (spec.get("capacity") or {}).get("storage", ""),
        _access_modes(spec.get("accessModes")),
        spec.get("persistentVolumeReclaimPolicy", ""),
        status.get("phase", ""),
        claim,
        spec.get("storageClassName", ""),
        spec.get("volumeAttributesClassName") or "<unset>",
        status.get("reason", ""),
        _age(o, now),
        spec.get("volumeMode", "Filesystem"),
    ]


def _pvc(o: Obj, now: dt.datetime) -> Cells:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    phase = status.get("phase", "")
    if o["metadata"].get("deletionTimestamp"):
        phase = "Terminating"
    bound = bool(spec.get("volumeName"))
    return [
        phase,
        spec.get("volumeName", ""),
        (status.get("capacity") or {}).get("storage", "") if bound else "",
        _access_modes(status.get("accessModes")) if bound else "",
        spec.get("storageClassName", ""),
        spec.get("volumeAttributesClassName") or "<unset>",
        _age(o, now),
        spec.get("volumeMode", "Filesystem"),
    ]


def _quota(o: Obj, now: dt.datetime) -> Cells:
    """printResourceQuota: `name: used/hard` pairs sorted by name, limits.* in LIMIT, the rest in REQUEST."""
    hard = (o.get("status") or {}).get("hard") or (o.get("spec") or {}).get("hard") or {}
    used = (o.get("status") or {}).get("used") or {}
    requests: list[str] = []
    limits: list[str] = []
    for name in sorted(hard):
        text = f"{name}: {used.get(name, '0')}/{hard[name]}"
        (limits if name.startswith("limits.") else requests).append(text)
    return [_age(o, now), ", ".join(requests), ", ".join(limits)]


def _hpa_targets(o: Obj) -> str:
    """formatHPAMetrics for the metric kinds manifests use (Resource utilization/average value, Pods, Object)."""
    spec, status = o.get("spec") or {}, o.get("status") or {}
    current = status.get("currentMetrics") or []
    out = []
    for i, m in enumerate(spec.get("metrics") or []):
        typ = m.get("type")
        cur = current[i] if i < len(current) else {}
        if typ == "Resource":
            res = m.get("resource") or {}
            target = res.get("target") or {}
            now_val = ((cur.get("resource") or {}).get("current")) or {}
            if target.get("type") == "Utilization":
                have = f"{now_val['averageUtilization']}%" if "averageUtilization" in now_val else "<unknown>"
                out.append(f"{res.get('name', '')}: {have}/{target.get('averageUtilization')}%")
            else:
                have = now_val.get("averageValue", "<unknown>")
                out.append(f"{res.get('name', '')}: {have}/{target.get('averageValue', target.get('value', ''))}")
        else:
            key = str(typ or "")[:1].lower() + str(typ or "")[1:]
            target = (m.get(key) or {}).get("target") or {}
            want = target.get("averageValue", target.get("value", ""))
            out.append(f"<unknown>/{want}")
    if not out:
        return "<none>"
    if len(out) > 2:
        return ", ".join(out[:2]) + f" + {len(out) - 2} more..."
    return ", ".join(out)


def _hpa(o: Obj, now: dt.datetime) -> Cells:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    ref = spec.get("scaleTargetRef") or {}
    return [
        f"{ref.get('kind', '')}/{ref.get('name', '')}",
        _hpa_targets(o),
        str(spec.get("minReplicas")) if spec.get("minReplicas") is not None else "<unset>",
        int(spec.get("maxReplicas") or 0),
        int(status.get("currentReplicas") or 0),
        _age(o, now),
    ]


def _csr(o: Obj, now: dt.datetime) -> Cells:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    conds = [c.get("type", "") for c in status.get("conditions") or [] if c.get("status", "True") == "True"]
    if status.get("certificate"):
        conds.append("Issued")
    duration = spec.get("expirationSeconds")
    return [
        _age(o, now),
        spec.get("signerName", ""),
        spec.get("username", ""),
        human_duration(dt.timedelta(seconds=int(duration))) if duration else "<none>",
        ",".join(conds) or "Pending",
    ]


def _webhooks(o: Obj, now: dt.datetime) -> Cells:
    return [len(o.get("webhooks") or []), _age(o, now)]


def _default(o: Obj, now: dt.datetime) -> Cells:
    return [_age(o, now)]


_I = "integer"


def _cols(*names: str, type_: str = "string", priority: int = 0) -> list[dict[str, Any]]:
    """Several columns of one type and priority, in order (priority 1: what `-o wide` adds)."""
    return [_col(name, type_=type_, priority=priority) for name in names]


def _wide(*names: str) -> list[dict[str, Any]]:
    return _cols(*names, priority=1)


_TEMPLATE_COLS = _wide("Containers", "Images")
_WORKLOAD_WIDE = [*_TEMPLATE_COLS, *_wide("Selector")]
_PRINTERS: dict[str, tuple[list[dict[str, Any]], Callable[[Obj, dt.datetime], Cells]]] = {
    "Namespace": ([_col("Status"), AGE], _namespace),
    "Node": (
        [
            *_cols("Status", "Roles"),
            AGE,
            _col("Version"),
            *_wide("Internal-IP", "External-IP", "OS-Image", "Kernel-Version", "Container-Runtime"),
        ],
        _node,
    ),
    "Pod": (
        [*_cols("Ready", "Status", "Restarts"), AGE, *_wide("IP", "Node", "Nominated Node", "Readiness Gates")],
        _pod,
    ),
    "Service": ([*_cols("Type", "Cluster-IP", "External-IP", "Port(s)"), AGE, *_wide("Selector")], _service),
    "Endpoints": ([_col("Endpoints"), AGE], _endpoints),
    "ConfigMap": ([_col("Data", type_=_I), AGE], _configmap),
    "Secret": ([_col("Type"), _col("Data", type_=_I), AGE], _secret),
    "Event": (
        [
            *_cols("Last Seen", "Type", "Reason", "Object", "Message"),
            *_wide("Subobject", "Source", "First Seen"),
            _col("Count", type_=_I, priority=1),
            *_wide("Name"),
        ],
        _event,
    ),
    "ServiceAccount": ([_col("Secrets", type_=_I), AGE], _sa),
    "Deployment": (
        [_col("Ready"), *_cols("Up-to-date", "Available", type_=_I), AGE, *_WORKLOAD_WIDE],
        _deployment,
    ),
    "ReplicaSet": ([*_cols("Desired", "Current", "Ready", type_=_I), AGE, *_WORKLOAD_WIDE], _replicaset),
    "DaemonSet": (
        [
            *_cols("Desired", "Current", "Ready", "Up-to-date", "Available", type_=_I),
            _col("Node Selector"),
            AGE,
            *_WORKLOAD_WIDE,
        ],
        _daemonset,
    ),
    "StatefulSet": ([_col("Ready"), AGE, *_TEMPLATE_COLS], _statefulset),
    "ControllerRevision": ([_col("Controller"), _col("Revision", type_=_I), AGE], _controllerrevision),
    "Job": ([*_cols("Status", "Completions", "Duration"), AGE, *_WORKLOAD_WIDE], _job),
    "CronJob": (
        [
            *_cols("Schedule", "Timezone"),
            _col("Suspend", type_="boolean"),
            _col("Active", type_=_I),
            _col("Last Schedule"),
            AGE,
            *_WORKLOAD_WIDE,
        ],
        _cronjob,
    ),
    "PodDisruptionBudget": (
        [*_cols("Min Available", "Max Unavailable"), _col("Allowed Disruptions", type_=_I), AGE],
        _pdb,
    ),
    "EndpointSlice": ([*_cols("AddressType", "Ports", "Endpoints"), AGE], _endpointslice),
    "Ingress": ([*_cols("Class", "Hosts", "Address", "Ports"), AGE], _ingress),
    "IngressClass": ([*_cols("Controller", "Parameters"), AGE], _ingressclass),
    "NetworkPolicy": ([_col("Pod-Selector"), AGE], _netpol),
    "Lease": ([_col("Holder"), AGE], _lease),
    "APIService": ([*_cols("Service", "Available"), AGE], _apiservice),
    # apiextensions-apiserver prints the creation time itself, not an age
    "CustomResourceDefinition": ([_col("Created At", type_="date", desc=AGE["description"])], _crd),
}


_BINDING_COLS = [_col("Role"), AGE, *_wide("Users", "Groups", "ServiceAccounts")]
_CREATED_AT = [_col("Created At", type_="date")]
_PRINTERS.update(
    {
        "Role": (_CREATED_AT, _created_at),
        "ClusterRole": (_CREATED_AT, _created_at),
        "RoleBinding": (_BINDING_COLS, _binding),
        "ClusterRoleBinding": (_BINDING_COLS, _binding),
        "PriorityClass": (
            [_col("Value", type_=_I), _col("Global-Default", type_="boolean"), AGE, _col("PreemptionPolicy")],
            _priorityclass,
        ),
        "StorageClass": (
            [*_cols("Provisioner", "ReclaimPolicy", "VolumeBindingMode", "AllowVolumeExpansion"), AGE],
            _storageclass,
        ),
        "PersistentVolume": (
            [
                *_cols("Capacity", "Access Modes", "Reclaim Policy", "Status", "Claim", "StorageClass"),
                *_cols("VolumeAttributesClass", "Reason"),
                AGE,
                *_wide("VolumeMode"),
            ],
            _pv,
        ),
        "PersistentVolumeClaim": (
            [
                *_cols("Status", "Volume", "Capacity", "Access Modes", "StorageClass", "VolumeAttributesClass"),
                AGE,
                *_wide("VolumeMode"),
            ],
            _pvc,
        ),
        "LimitRange": (_CREATED_AT, _created_at),
        "ResourceQuota": ([AGE, *_cols("Request", "Limit")], _quota),
        "HorizontalPodAutoscaler": (
            [*_cols("Reference", "Targets", "MinPods"), *_cols("MaxPods", "Replicas", type_=_I), AGE],
            _hpa,
        ),
        "CertificateSigningRequest": (
            [AGE, *_cols("SignerName", "Requestor", "RequestedDuration", "Condition")],
            _csr,
        ),
        "ValidatingWebhookConfiguration": ([_col("Webhooks", type_=_I), AGE], _webhooks),
        "MutatingWebhookConfiguration": ([_col("Webhooks", type_=_I), AGE], _webhooks),
    }
)


def column_definitions(kind: Kind) -> list[dict[str, Any]]:
    if kind.custom is not None:
        return columns.column_definitions(kind)
    cols, _ = _PRINTERS.get(kind.kind, ([AGE], _default))
    return [NAME, *cols]


INCLUDE_OBJECT = ("None", "Metadata", "Object")


def row(kind: Kind, obj: Obj, *, now: dt.datetime, include: str = "Metadata") -> dict[str, Any]:
    """One row; its `object` is the whole object, its PartialObjectMetadata or absent (`includeObject`)."""
    meta = obj.get("metadata") or {}
    if kind.custom is not None:
        cells = columns.cells(kind, obj, now=now)
    else:
        _, fn = _PRINTERS.get(kind.kind, ([AGE], _default))
        name = meta.get("name", "")
        if kind.kind == "StorageClass" and _is_default_class(obj):
            name += " (default)"  # printStorageClass marks the default class in the name cell
        printed = convert.to_storage(kind, obj)  # kube prints the internal version: one printer per kind
        cells = [name, *fn(printed, now)]
    out: dict[str, Any] = {"cells": cells}
    if include == "Object":
        out["object"] = obj
    elif include != "None":
        out["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    return out


def table(
    kind: Kind,
    objs: list[Obj],
    *,
    now: dt.datetime,
    resource_version: str,
    continue_token: str = "",
    remaining: int | None = None,
    include: str = "Metadata",
) -> dict[str, Any]:
    meta: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        meta["continue"] = continue_token
    if remaining is not None:
        meta["remainingItemCount"] = remaining
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": column_definitions(kind),
        "rows": [row(kind, o, now=now, include=include) for o in objs],
    }
