"""K3s's secure join-token format: `K10<sha256 of the cluster CA certificate>::<user>:<secret>`.

A node given a token in this form pins the cluster CA by its hash before trusting the server; the server checks
only the secret. Pure string functions (hashlib only), shared by the server's join tokens
(kwire/api/authn/tokens.py), a joining server's bootstrap fetch (kwire/api/bootstrap.py) and the lab, which hands
agents their token in this form.
"""

from __future__ import annotations

import hashlib


def plain(token: str) -> str:
    """`K10<hash>::<user>:<secret>` -> `<secret>`; a plain token is returned as is."""
    if token.startswith("K10") and "::" in token:
        rest = token.split("::", 1)[1]
        return rest.split(":", 1)[1] if ":" in rest else rest
    return token


def ca_hash(token: str) -> str | None:
    """The CA hash a K10 token pins, else None."""
    if token.startswith("K10") and "::" in token:
        return token[3:].split("::", 1)[0]
    return None


def secure_form(secret: str, *, ca_pem: bytes, user: str = "server") -> str:
    """K3s's secure token format for `secret`: `K10<sha256 of the CA certificate>::<user>:<secret>`."""
    return f"K10{hashlib.sha256(ca_pem).hexdigest()}::{user}:{secret}"
