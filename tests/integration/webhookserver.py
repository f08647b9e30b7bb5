"""An HTTPS webhook server for tests: a throwaway CA, a serving certificate for 127.0.0.1 and
`hook.default.svc`, admission handlers chosen by path (allow, deny, mutate, mutate-second, slow) and a CRD conversion handler
(`/convert`: CronTab v1 `spec.cronSpec` <-> v2 `spec.schedule`; `/convert-fail` refuses); every request is
recorded."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    sans: list[str],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        names: list[x509.GeneralName] = []
        for s in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class WebhookServer:
    """Call `start(dir)`; `ca_bundle` is the base64 PEM of its CA, `other_ca_bundle` a CA that did not sign it."""

    port: int = 0
    reviews: list[dict[str, Any]] = field(default_factory=list)
    ca_bundle: str = ""
    other_ca_bundle: str = ""
    _httpd: ThreadingHTTPServer | None = None

    def write_certificates(self, directory: Path) -> None:
        """A new CA (`ca_bundle`), `hook.crt`/`hook.key` signed by it, and an unrelated CA (`other_ca_bundle`)."""
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert("kwire-test-webhook-ca", ca_key, None, [])
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("hook", key, ("kwire-test-webhook-ca", ca_key), ["127.0.0.1", "hook.default.svc"])
        other_key = ec.generate_private_key(ec.SECP256R1())
        other = _cert("kwire-test-other-ca", other_key, None, [])
        (directory / "hook.crt").write_bytes(_pem(cert))
        (directory / "hook.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (directory / "hook.key").chmod(0o600)
        self.ca_bundle = base64.b64encode(_pem(ca)).decode()
        self.other_ca_bundle = base64.b64encode(_pem(other)).decode()

    def start(self, directory: Path) -> None:
        self.write_certificates(directory)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(directory / "hook.crt", directory / "hook.key")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                path = self.path.split("?")[0]
                server.reviews.append({"path": path, **body["request"]})
                if body.get("kind") == "ConversionReview":
                    answer = server.convert(path, body["request"])
                    review = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "ConversionReview", "response": answer}
                else:
                    answer = server.respond(path, body["request"])
                    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer}
                data = json.dumps(review)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def respond(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        uid = request["uid"]
        if path == "/deny":
            name = (request.get("object") or request.get("oldObject") or {}).get("metadata", {}).get("name")
            return {
                "uid": uid,
                "allowed": False,
                "status": {"code": 403, "reason": "Forbidden", "message": f"configmap {name} is not welcome"},
            }
        if path in ("/mutate", "/mutate-second"):
            labels = ((request.get("object") or {}).get("metadata") or {}).get("labels")
            ops = [{"op": "add", "path": "/metadata/labels", "value": {}}] if labels is None else []
            label = "mutated-by" if path == "/mutate" else "second"
            ops.append({"op": "add", "path": f"/metadata/labels/{label}", "value": "hook"})
            patch = base64.b64encode(json.dumps(ops).encode()).decode()
            return {"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": patch}
        if path == "/slow":
            time.sleep(3)
        return {"uid": uid, "allowed": True}

    def convert(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        uid = request["uid"]
        if path == "/convert-fail":
            return {"uid": uid, "result": {"status": "Failure", "message": "cannot convert"}}
        desired = request["desiredAPIVersion"]
        out = []
        for obj in request["objects"]:
            spec = dict(obj.get("spec") or {})
            if desired.endswith("/v2") and "cronSpec" in spec:
                spec["schedule"] = spec.pop("cronSpec")
            elif desired.endswith("/v1") and "schedule" in spec:
                spec["cronSpec"] = spec.pop("schedule")
            labels = {**(obj["metadata"].get("labels") or {}), "converted-to": desired.split("/")[1]}
            out.append({**obj, "apiVersion": desired, "spec": spec, "metadata": {**obj["metadata"], "labels": labels}})
        return {"uid": uid, "result": {"status": "Success"}, "convertedObjects": out}

    def seen(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.reviews if r["path"] == path]


@contextmanager
def running(directory: Path) -> Iterator[WebhookServer]:
    srv = WebhookServer()
    srv.start(directory)
    try:
        yield srv
    finally:
        srv.stop()
