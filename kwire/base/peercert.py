"""The names in a certificate as Python's ssl module decodes it (`SSLSocket.getpeercert()`, `get_ca_certs()`):
a subject's or issuer's CN and its Os, which kube-apiserver's x509 authenticator reads as user name and groups.

Shared by the API server's and the kubelet's client-certificate users (kwire/api/user.py) and metrics-server's
delegated authentication (kwire/metricsserver/delegated.py), which reads them without the cryptography package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cn_and_orgs(cert: Mapping[str, Any], *, field: str = "subject") -> tuple[str, tuple[str, ...]]:
    """The commonName (the last one, "" when none) and every organizationName of `field` ("subject"/"issuer")."""
    cn, orgs = "", []
    for rdn in cert.get(field) or ():
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
            elif key == "organizationName":
                orgs.append(str(value))
    return cn, tuple(orgs)
