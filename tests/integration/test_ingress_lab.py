"""Ingress as K3s serves it with Traefik, in a real lab: the traefik add-on (IngressClass, LoadBalancer Service on
80/443 with the node IPs, a Ready pod), and Ingress v1 rules checked with curl from the lab's client host against
every node IP (`--resolve`), on 80 and 443: exact and wildcard hosts, Exact/Prefix/ImplementationSpecific paths,
longest match, port names, merging, defaultBackend, class filtering, 404/503, unknown Services (404 + event,
the rest keeps serving), forwarded headers, TLS by SNI with the default certificate otherwise, a rotated secret,
HTTP/2, status.loadBalancer, and live changes under a request loop that sees no error. Traefik's IngressRoute and
Middleware end to end: rules, tls.secretName by SNI, redirect http->https, weights, a sticky cookie, an invalid
rule's event, and basicAuth through an Ingress's router.middlewares."""

from __future__ import annotations

import base64
import datetime
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.labkit import IP, Lab, wait_for

pytestmark = pytest.mark.lab

BACKENDS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-a}
spec:
  replicas: 2
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec:
      containers: [{name: c, image: nginx, ports: [{containerPort: 80, name: http}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app-b}
spec:
  replicas: 1
  selector: {matchLabels: {app: b}}
  template:
    metadata: {labels: {app: b}}
    spec:
      containers: [{name: c, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: a}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-b}
spec:
  selector: {app: b}
  ports: [{name: web, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-empty}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
"""

INGRESSES = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: routes}
spec:
  rules:
  - host: foo.example.com
    http:
      paths:
      - {path: /exact, pathType: Exact, backend: {service: {name: svc-b, port: {number: 8080}}}}
      - {path: /foo, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
      - {path: /foo/bar, pathType: Prefix, backend: {service: {name: svc-b, port: {name: web}}}}
      - {path: /impl, pathType: ImplementationSpecific, backend: {service: {name: svc-b, port: {number: 8080}}}}
      - {path: /same, pathType: Prefix, backend: {service: {name: svc-a, port: {name: http}}}}
      - {path: /same, pathType: Exact, backend: {service: {name: svc-b, port: {number: 8080}}}}
  - host: "*.wild.example.com"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {name: http}}}}
  - http:
      paths:
      - {path: /anyhost, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: merged}
spec:
  ingressClassName: traefik
  rules:
  - host: foo.example.com
    http:
      paths:
      - {path: /merged, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: by-annotation
  annotations: {kubernetes.io/ingress.class: traefik}
spec:
  rules:
  - host: annotated.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other-class}
spec:
  ingressClassName: nginx
  rules:
  - host: other.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: broken}
spec:
  rules:
  - host: broken.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: no-such-svc, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: noep}
spec:
  rules:
  - host: noep.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-empty, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls:
  - hosts: [secure.example.com]
    secretName: secure-tls
  rules:
  - host: secure.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tls_secret(name: str, host: str) -> tuple[str, str]:
    """A Secret manifest with a fresh self-signed certificate for `host`, and the certificate's serial (hex)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt = cert.public_bytes(serialization.Encoding.PEM).decode()
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": b64(crt), "tls.key": b64(pem_key)},
        }
    )
    return manifest, format(cert.serial_number, "X")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab_ = Lab("kwt-ing", 2, "vxlan")
    try:
        lab_.up()
        lab_.apply(BACKENDS)
        node_ips = sorted(n.ip for n in lab_.topo.nodes)
        wait_for(lambda: lb_ips(lab_, "svc", "traefik", "-n", "kube-system") == node_ips, timeout=90,
                 what="the traefik Service's EXTERNAL-IP = the node IPs")  # fmt: skip
        lab_.wait_pods_ready("app.kubernetes.io/name=traefik", 1, namespace="kube-system", timeout=60)
        lab_.wait_pods_ready("app=a", 2, timeout=60)
        lab_.wait_pods_ready("app=b", 1, timeout=60)
        secret, _ = tls_secret("secure-tls", "secure.example.com")
        lab_.apply(secret)
        lab_.apply(INGRESSES)
        for ip in node_ips:
            wait_for(lambda ip=ip: curl(lab_, "foo.example.com", "/foo", ip)[0] == 200, timeout=30,
                     what=f"the first Ingress served on {ip}")  # fmt: skip
        yield lab_
    finally:
        lab_.down()


def lb_ips(lab_: Lab, *args: str) -> list[str]:
    lb = (lab_.get(*args).get("status") or {}).get("loadBalancer") or {}
    return sorted(i["ip"] for i in lb.get("ingress") or [])


def curl(
    lab_: Lab, host: str, path: str, ip: str, *, https: bool = False, extra: tuple[str, ...] = ()
) -> tuple[int, Any]:
    """(HTTP status, the responder's JSON or the body text) of a request from the client host to `ip`."""
    port = 443 if https else 80
    scheme = "https" if https else "http"
    res = subprocess.run(
        [IP, "netns", "exec", lab_.topo.client.netns, "curl", "-s", "-k", "-m", "5", "-w", "\n%{http_code}",
         "--resolve", f"{host}:{port}:{ip}", *extra, f"{scheme}://{host}{path}"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    try:
        return int(code or 0), json.loads(body)
    except ValueError:
        return int(code or 0), body


def served_by(lab_: Lab, host: str, path: str, ip: str, **kw: Any) -> str:
    """Which app (a or b) answered, or the status code as text."""
    code, body = curl(lab_, host, path, ip, **kw)
    if code != 200 or not isinstance(body, dict):
        return str(code)
    return "a" if str(body["pod"]).startswith("app-a-") else "b"


def node_ips(lab_: Lab) -> list[str]:
    return sorted(n.ip for n in lab_.topo.nodes)


def test_addon_is_deployed_as_k3s_deploys_traefik(lab: Lab) -> None:
    ic = lab.get("ingressclass", "traefik")
    assert ic["spec"]["controller"] == "traefik.io/ingress-controller"
    assert ic["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"] == "true"
    svc = lab.get("svc", "traefik", "-n", "kube-system")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [("web", 80), ("websecure", 443)]
    out = lab.kubectl("get", "deploy", "traefik", "-n", "kube-system").stdout
    assert out.split("\n")[1].split()[1] == "1/1", out


def test_hosts_and_paths_route_as_ingress_v1_says(lab: Lab) -> None:
    cases = [
        ("foo.example.com", "/exact", "b"),
        ("foo.example.com", "/exact/", "404"),  # Exact: nothing else (no / route on this host)
        ("foo.example.com", "/foo", "a"),
        ("foo.example.com", "/foo/", "a"),
        ("foo.example.com", "/foo/x", "a"),
        ("foo.example.com", "/foobar", "404"),  # element-wise prefix
        ("foo.example.com", "/foo/bar", "b"),  # longest match wins
        ("foo.example.com", "/foo/bar/baz", "b"),
        ("foo.example.com", "/foo/barbaz", "a"),
        ("foo.example.com", "/impl/x", "b"),  # ImplementationSpecific as Prefix
        ("foo.example.com", "/same", "b"),  # Exact before Prefix on the same path
        ("foo.example.com", "/same/x", "a"),
        ("foo.example.com", "/merged/1", "b"),  # a second Ingress on the same host
        ("foo.example.com", "/anyhost", "b"),  # host-less rules serve every host
        ("x.wild.example.com", "/any", "a"),  # wildcard: one label
        ("x.y.wild.example.com", "/any", "404"),  # ... exactly one
        ("wild.example.com", "/any", "404"),
        ("elsewhere.example.com", "/anyhost/1", "b"),
        ("elsewhere.example.com", "/", "404"),  # no matching rule
        ("annotated.example.com", "/", "a"),  # kubernetes.io/ingress.class: traefik
        ("other.example.com", "/", "404"),  # another class: ignored
        ("broken.example.com", "/", "404"),  # unknown Service
        ("noep.example.com", "/", "503"),  # no ready endpoint
    ]
    for ip in node_ips(lab):
        got = [(h, p, served_by(lab, h, p, ip)) for h, p, _ in cases]
        assert got == cases, f"via {ip}"
    # The same rules on 443 (no router.tls, no spec.tls: served on both entrypoints).
    ip = node_ips(lab)[0]
    assert served_by(lab, "foo.example.com", "/foo/bar", ip, https=True) == "b"
    assert served_by(lab, "foo.example.com", "/foobar", ip, https=True) == "404"


def test_unknown_service_is_an_event_and_status_follows_the_traefik_service(lab: Lab) -> None:
    def warned() -> bool:
        events = lab.get("events", "--field-selector", "involvedObject.name=broken")["items"]
        return any("no-such-svc" in e["message"] and e["type"] == "Warning" for e in events)

    wait_for(warned, timeout=20, what="a Warning event on Ingress broken")
    ips = node_ips(lab)
    for name in ("routes", "merged", "by-annotation", "broken", "secure"):
        wait_for(lambda name=name: lb_ips(lab, "ingress", name) == ips, timeout=20, what=f"status of {name}")
    assert lb_ips(lab, "ingress", "other-class") == []  # not ours: no status
    out = lab.kubectl("get", "ingress", "routes").stdout.splitlines()
    assert out[1].split()[1] == "traefik" or out[1].split()[1] == "<none>", out
    assert ",".join(ips) in out[1], out


def test_forwarded_headers_as_traefik_sets_them(lab: Lab) -> None:
    ip = node_ips(lab)[0]
    code, body = curl(lab, "foo.example.com", "/foo/h", ip)
    assert code == 200, body
    h = {k.lower(): v for k, v in body["headers"].items()}
    assert h["host"] == "foo.example.com"
    assert h["x-forwarded-host"] == "foo.example.com"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-port"] == "80"
    assert h["x-forwarded-server"]
    assert h["x-real-ip"] == h["x-forwarded-for"].split(",")[-1].strip()
    code, body = curl(lab, "foo.example.com", "/foo/h", ip, https=True)
    h = {k.lower(): v for k, v in body["headers"].items()}
    assert (h["x-forwarded-proto"], h["x-forwarded-port"]) == ("https", "443")


def served_cert(lab_: Lab, ip: str, sni: str) -> tuple[str, str]:
    """(subject CN, serial in hex) of the certificate served on ip:443 for this SNI name."""
    res = subprocess.run(
        [IP, "netns", "exec", lab_.topo.client.netns, "sh", "-c",
         f"openssl s_client -connect {ip}:443 -servername {sni} </dev/null 2>/dev/null"
         " | openssl x509 -noout -subject -serial -nameopt RFC2253"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    fields = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    return fields.get("subject", "").removeprefix("CN="), fields.get("serial", "")


def test_tls_by_sni_default_certificate_rotation_and_http2(lab: Lab) -> None:
    ips = node_ips(lab)
    for ip in ips:
        assert served_cert(lab, ip, "secure.example.com")[0] == "secure.example.com"
        assert served_cert(lab, ip, "foo.example.com")[0] == "TRAEFIK DEFAULT CERT"
        assert served_by(lab, "secure.example.com", "/x", ip, https=True) == "a"
        # spec.tls makes the routers TLS routers (as Traefik does): not served over plain HTTP.
        assert served_by(lab, "secure.example.com", "/x", ip) == "404"
    code, version = 0, ""
    res = subprocess.run(
        [IP, "netns", "exec", lab.topo.client.netns, "curl", "-s", "-k", "--http2", "-o", "/dev/null",
         "-w", "%{http_version}", "--resolve", f"secure.example.com:443:{ips[0]}", "https://secure.example.com/"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    code, version = res.returncode, res.stdout
    assert (code, version) == (0, "2")
    secret, serial = tls_secret("secure-tls", "secure.example.com")
    lab.apply(secret)
    wait_for(lambda: int(served_cert(lab, ips[0], "secure.example.com")[1] or "0", 16) == int(serial, 16), timeout=20,
             what="the rotated certificate served")  # fmt: skip


def test_default_backend_catches_what_no_rule_matches(lab: Lab) -> None:
    lab.apply("""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: fallback}
spec:
  defaultBackend: {service: {name: svc-b, port: {number: 8080}}}
""")
    try:
        ip = node_ips(lab)[1]
        wait_for(lambda: served_by(lab, "elsewhere.example.com", "/", ip) == "b", timeout=20, what="defaultBackend")
        assert served_by(lab, "foo.example.com", "/foo/1", ip) == "a"  # rules still win
        assert served_by(lab, "foo.example.com", "/nothing", ip) == "b"
    finally:
        lab.kubectl("delete", "ingress", "fallback", "--ignore-not-found")
    wait_for(lambda: served_by(lab, "elsewhere.example.com", "/", node_ips(lab)[1]) == "404", timeout=20,
             what="defaultBackend removed")  # fmt: skip


def test_live_changes_under_a_request_loop_see_no_error(lab: Lab) -> None:
    """Requests keep flowing while the backend scales 2 -> 4 -> 1 -> 2 and Ingresses are added and removed."""
    ip = node_ips(lab)[0]
    errors: list[str] = []
    count = 0
    stop = threading.Event()

    def loop() -> None:
        nonlocal count
        while not stop.is_set():
            code, body = curl(lab, "foo.example.com", "/foo/loop", ip)
            count += 1
            if code != 200:
                errors.append(f"{code} {body!r}"[:200])

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        lab.kubectl("scale", "deployment", "app-a", "--replicas=4")
        lab.wait_pods_ready("app=a", 4, timeout=60)
        lab.apply("""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: live}
spec:
  rules:
  - host: live.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 8080}}}}
""")
        t0 = time.monotonic()
        wait_for(lambda: served_by(lab, "live.example.com", "/", ip) == "b", timeout=20, what="a new Ingress served")
        added = time.monotonic() - t0
        lab.kubectl("scale", "deployment", "app-a", "--replicas=1")
        lab.wait_pods_ready("app=a", 1, timeout=60)
        time.sleep(2)
        lab.kubectl("delete", "ingress", "live")
        wait_for(lambda: served_by(lab, "live.example.com", "/", ip) == "404", timeout=20, what="Ingress removed")
        lab.kubectl("scale", "deployment", "app-a", "--replicas=2")
        lab.wait_pods_ready("app=a", 2, timeout=60)
        time.sleep(1)
    finally:
        stop.set()
        t.join(30)
    assert count > 20 and errors == [], (count, errors[:5])
    assert added < 10, added


WS_SERVER = """
from aiohttp import web
async def handle(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        await ws.send_str("echo:" + msg.data)
    return ws
app = web.Application()
app.router.add_get("/ws", handle)
web.run_app(app, port=8765, print=None)
"""

WS_CLIENT = """
import asyncio, sys, aiohttp
async def main():
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(sys.argv[1], headers={"Host": "ws.example.com"}, ssl=False) as ws:
            await ws.send_str("hello")
            msg = await ws.receive(timeout=5)
            print(msg.data)
asyncio.run(main())
"""


def test_websocket_passes_on_80_and_443(lab: Lab) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ws", "labels": {"app": "ws"}},
        "spec": {
            "containers": [
                {
                    "name": "ws",
                    "image": "kwire/host",
                    "command": [sys.executable, "-c", WS_SERVER],
                    "ports": [{"containerPort": 8765}],
                }
            ]
        },
    }
    lab.apply(json.dumps(pod))
    lab.apply("""
apiVersion: v1
kind: Service
metadata: {name: ws}
spec:
  selector: {app: ws}
  ports: [{port: 80, targetPort: 8765}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: ws}
spec:
  rules:
  - host: ws.example.com
    http:
      paths:
      - {path: /ws, pathType: Exact, backend: {service: {name: ws, port: {number: 80}}}}
""")
    ip = node_ips(lab)[1]
    for url in (f"http://{ip}/ws", f"https://{ip}/ws"):
        out = wait_for(lambda url=url: lab.run("client", sys.executable, "-c", WS_CLIENT, url).strip(), timeout=40,
                       what=f"a websocket echo through {url}")  # fmt: skip
        assert out == "echo:hello"


def test_traefik_annotations_entrypoints_tls_priority(lab: Lab) -> None:
    lab.apply("""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: only-web
  annotations: {traefik.ingress.kubernetes.io/router.entrypoints: web}
spec:
  rules:
  - host: ep.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: only-tls
  annotations: {traefik.ingress.kubernetes.io/router.tls: "true"}
spec:
  rules:
  - host: tls-only.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 8080}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: prio-high
  annotations: {traefik.ingress.kubernetes.io/router.priority: "1000"}
spec:
  rules:
  - host: prio.example.com
    http:
      paths:
      - {path: /api, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: prio-low}
spec:
  rules:
  - host: prio.example.com
    http:
      paths:
      - {path: /api/v1, pathType: Prefix, backend: {service: {name: svc-b, port: {number: 8080}}}}
""")
    ip = node_ips(lab)[0]
    wait_for(lambda: served_by(lab, "ep.example.com", "/", ip) == "a", timeout=20, what="only-web served")
    assert served_by(lab, "ep.example.com", "/", ip, https=True) == "404"
    wait_for(lambda: served_by(lab, "tls-only.example.com", "/", ip, https=True) == "b", timeout=20, what="only-tls")
    assert served_by(lab, "tls-only.example.com", "/", ip) == "404"
    wait_for(lambda: served_by(lab, "prio.example.com", "/api/v1/x", ip) == "a", timeout=20,
             what="router.priority 1000 wins over the longer path")  # fmt: skip


CRD_OBJECTS = """
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: to-https}
spec:
  redirectScheme: {scheme: https, permanent: true}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: auth}
spec:
  basicAuth: {secret: basic}
---
apiVersion: v1
kind: Secret
metadata: {name: basic}
type: kubernetes.io/basic-auth
stringData: {username: ann, password: apple}
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: web-redirect}
spec:
  entryPoints: [web]
  routes:
  - kind: Rule
    match: Host(`ir.example.com`)
    middlewares: [{name: to-https}]
    services: [{name: svc-a, port: 80}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: secure-routes}
spec:
  entryPoints: [websecure]
  tls: {secretName: ir-tls}
  routes:
  - kind: Rule
    match: Host(`ir.example.com`) && PathPrefix(`/api`)
    services: [{name: svc-b, port: web}]
  - kind: Rule
    match: Host(`ir.example.com`) && !PathPrefix(`/api`)
    services: [{name: svc-a, port: http, sticky: {cookie: {name: pin}}}]
  - kind: Rule
    match: Host(`ir.example.com`) && Header(`X-Split`, `1`)
    priority: 500
    services: [{name: svc-a, port: 80, weight: 1}, {name: svc-b, port: 8080, weight: 1}]
  - kind: Rule
    match: Host(`ir.example.com`) && Method(`DELETE`) || Hots(`x`)
    services: [{name: svc-a, port: 80}]
---
apiVersion: traefik.io/v1alpha1
kind: IngressRoute
metadata: {name: mix-route}
spec:
  routes:
  - kind: Rule
    match: Host(`mix.example.com`) && PathPrefix(`/api`)
    services: [{name: svc-b, port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: mix-ingress}
spec:
  rules:
  - host: mix.example.com
    http:
      paths:
      - {path: /api/v1, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: with-auth
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: default-auth@kubernetescrd}
spec:
  rules:
  - host: auth.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: svc-a, port: {number: 80}}}}
"""


def test_ingressroute_rules_tls_redirect_weights_sticky_and_an_invalid_rule(lab: Lab) -> None:
    secret, _ = tls_secret("ir-tls", "ir.example.com")
    lab.apply(secret)
    lab.apply(CRD_OBJECTS)
    ips = node_ips(lab)
    wait_for(lambda: served_by(lab, "ir.example.com", "/api/x", ips[0], https=True) == "b", timeout=30,
             what="an IngressRoute served on websecure")  # fmt: skip
    for ip in ips:
        # tls.secretName by SNI (the route serves at once through the Lua router; its certificate's server block
        # comes with the reload that follows)
        wait_for(lambda ip=ip: served_cert(lab, ip, "ir.example.com")[0] == "ir.example.com", timeout=20,
                 what="the IngressRoute's certificate served by SNI")  # fmt: skip
        assert served_by(lab, "ir.example.com", "/api/x", ip, https=True) == "b"  # Host && PathPrefix
        assert served_by(lab, "ir.example.com", "/web", ip, https=True) == "a"  # Host && !PathPrefix
        # web: redirectScheme https, permanent (GET 301, other methods 308)
        res = subprocess.run(
            [IP, "netns", "exec", lab.topo.client.netns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
             "--resolve", f"ir.example.com:80:{ip}", "http://ir.example.com/p?q=1"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert res.stdout == "301 https://ir.example.com/p?q=1"
        assert curl(lab, "ir.example.com", "/p", ip, extra=("-X", "PUT"))[0] == 308
    # Header with priority 500 beats both; its two services share requests 1:1.
    split = [served_by(lab, "ir.example.com", "/api", ips[0], https=True, extra=("-H", "X-Split: 1")) for _ in range(6)]
    assert sorted(split) == ["a"] * 3 + ["b"] * 3, split
    # Sticky cookie: the first answer pins the client to one of app-a's two pods.
    res = subprocess.run(
        [IP, "netns", "exec", lab.topo.client.netns, "curl", "-s", "-k", "-D", "/dev/stderr",
         "--resolve", f"ir.example.com:443:{ips[0]}", "https://ir.example.com/web"],
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    cookie = next(ln.split(":", 1)[1].strip().split(";")[0] for ln in res.stderr.splitlines()
                  if ln.lower().startswith("set-cookie:"))  # fmt: skip
    assert cookie.startswith("pin=")
    pods = {curl(lab, "ir.example.com", "/web", ips[0], https=True, extra=("-H", f"Cookie: {cookie}"))[1]["pod"]
            for _ in range(6)}  # fmt: skip
    assert pods == {json.loads(res.stdout)["pod"]}

    # The invalid rule is reported on its IngressRoute; its other routes serve (above).
    def warned() -> bool:
        events = lab.get("events", "--field-selector", "involvedObject.name=secure-routes")["items"]
        return any("unsupported function: Hots" in e["message"] and e["involvedObject"]["kind"] == "IngressRoute"
                   for e in events)  # fmt: skip

    wait_for(warned, timeout=20, what="a Warning event on IngressRoute secure-routes")
    # An Ingress's router.middlewares names a Middleware: basicAuth from a kubernetes.io/basic-auth secret.
    wait_for(lambda: curl(lab, "auth.example.com", "/", ips[1])[0] == 401, timeout=20, what="basicAuth on an Ingress")
    assert served_by(lab, "auth.example.com", "/", ips[1], extra=("-u", "ann:apple")) == "a"
    assert curl(lab, "auth.example.com", "/", ips[1], extra=("-u", "ann:pear"))[0] == 401
    # Routers of both providers in one priority order (the rule's length): the Ingress's Host && PathPrefix(/api/v1)
    # is longer than the IngressRoute's Host && PathPrefix(/api), which is longer than the Ingress's / route.
    wait_for(lambda: served_by(lab, "mix.example.com", "/api/x", ips[0]) == "b", timeout=20, what="mixed routers")
    assert served_by(lab, "mix.example.com", "/api/v1/x", ips[0]) == "a"
    assert served_by(lab, "mix.example.com", "/other", ips[0]) == "a"
