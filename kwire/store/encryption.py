"""Secrets encryption at rest: kube-apiserver's EncryptionConfiguration with the `aescbc` provider, as K3s's
`--secrets-encryption` sets it up, applied as a store wrapper.

What is stored (kube's aescbc transformer, byte for byte): `k8s:enc:aescbc:v1:<key name>:` + a random 16-byte IV +
AES-256-CBC ciphertext of the object with PKCS#7 padding. Reads pick the key by the name in the prefix; a value
without the prefix is read as plaintext (the `identity` provider K3s lists last), so secrets written before
encryption was enabled stay readable until they are rewritten.

Only Secrets (`/registry/core/secrets/`) are transformed (K3s encrypts Secrets only). The wrapper sits between the API and the
revisioned store, so the store — SQLite rows, etcd values, and the in-memory mirror both keep — only ever holds
ciphertext, and everything above it (lists, watches, the API) sees plaintext, as with kube's storage transformers.

The configuration file is K3s's `<data-dir>/cred/encryption-config.json` (apiserver.config.k8s.io/v1
EncryptionConfiguration, mode 0600). Servers sharing a datastore share the keys through it (see
`kwire.api.encryptionkeys`); `EncryptingStore.set_keys` swaps them live.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kwire.base.files import atomic_write
from kwire.store.base import KV, Event, RangeResult, Store, StoreError, WatchStream

PREFIX = b"k8s:enc:aescbc:v1:"
ENCRYPTED_KEYS = "/registry/core/secrets/"  # the registry's key for core Secrets
KEY_BYTES = 32
IV_BYTES = 16


class DecryptError(StoreError):
    """A stored value cannot be decrypted with any configured key (kube answers 500 for that object)."""


@dataclass(frozen=True)
class AesKey:
    name: str
    secret: bytes  # 32 bytes (AES-256)

    @staticmethod
    def generate(*, now: float | None = None) -> AesKey:
        """A new key, named as K3s names rotated keys (`aescbckey-<RFC3339 time>`)."""
        # K3s stamps the name with RFC 3339 time; without its colons here, which kube's prefix would otherwise split.
        stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
        return AesKey(name=f"aescbckey-{stamp}", secret=os.urandom(KEY_BYTES))


@dataclass(frozen=True)
class EncryptionConfig:
    """The aescbc keys, the first one encrypting; reads accept any of them, and plaintext (identity)."""

    keys: tuple[AesKey, ...]

    def to_json(self) -> dict[str, Any]:
        keys = [{"name": k.name, "secret": base64.b64encode(k.secret).decode()} for k in self.keys]
        return {
            "kind": "EncryptionConfiguration",
            "apiVersion": "apiserver.config.k8s.io/v1",
            "resources": [{"resources": ["secrets"], "providers": [{"aescbc": {"keys": keys}}, {"identity": {}}]}],
        }

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode() + b"\n"

    @staticmethod
    def loads(data: bytes) -> EncryptionConfig:
        """Parse an EncryptionConfiguration (JSON, as K3s writes it); only aescbc keys for secrets are used."""
        doc = json.loads(data)
        keys: list[AesKey] = []
        for res in doc.get("resources") or []:
            if "secrets" not in (res.get("resources") or []):
                continue
            for provider in res.get("providers") or []:
                for k in (provider.get("aescbc") or {}).get("keys") or []:
                    secret = base64.b64decode(k["secret"])
                    if len(secret) not in (16, 24, 32):
                        raise ValueError(f"aescbc key {k.get('name')!r}: {len(secret)} bytes (16, 24 or 32 needed)")
                    keys.append(AesKey(name=str(k["name"]), secret=secret))
        if not keys:
            raise ValueError("the encryption configuration has no aescbc key for secrets")
        return EncryptionConfig(keys=tuple(keys))

    def hash(self) -> str:
        """What `secrets-encrypt status` compares between servers (K3s's encryption config hash)."""
        return "start-" + hashlib.sha256(self.dumps()).hexdigest()

    def rotated(self, *, now: float | None = None) -> EncryptionConfig:
        """A new first key, the old ones kept for reading until everything is re-encrypted."""
        return EncryptionConfig(keys=(AesKey.generate(now=now), *self.keys))


def load_or_create(path: Path) -> EncryptionConfig:
    """K3s's `cred/encryption-config.json`: read, or created with one new key (0600) on first use."""
    if path.exists():
        return EncryptionConfig.loads(path.read_bytes())
    config = EncryptionConfig(keys=(AesKey(name="aescbckey", secret=os.urandom(KEY_BYTES)),))
    save(path, config)
    return config


def save(path: Path, config: EncryptionConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, config.dumps(), mode=0o600)


def encrypt(key: AesKey, plain: bytes) -> bytes:
    iv = os.urandom(IV_BYTES)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key.secret), modes.CBC(iv)).encryptor()
    return PREFIX + key.name.encode() + b":" + iv + enc.update(padded) + enc.finalize()


def key_name(value: bytes, keys: Sequence[AesKey] = ()) -> str | None:
    """The key a stored value was encrypted with (matched against `keys` by their whole prefix, as kube does, so
    a name may hold a colon), or None for plaintext."""
    if not value.startswith(PREFIX):
        return None
    for k in keys:
        if value.startswith(PREFIX + k.name.encode() + b":"):
            return k.name
    end = value.find(b":", len(PREFIX))
    return value[len(PREFIX) : end].decode(errors="replace") if end > 0 else "?"


def decrypt(keys: Sequence[AesKey], value: bytes, *, key: str = "") -> bytes:
    name = key_name(value, keys)
    if name is None:
        return value  # identity: written before encryption was enabled
    for k in keys:
        if k.name == name:
            body = value[len(PREFIX) + len(name.encode()) + 1 :]
            if len(body) < 2 * IV_BYTES or len(body) % IV_BYTES:
                raise DecryptError(f"{key}: stored value is truncated")
            dec = Cipher(algorithms.AES(k.secret), modes.CBC(body[:IV_BYTES])).decryptor()
            padded = dec.update(body[IV_BYTES:]) + dec.finalize()
            unpadder = padding.PKCS7(128).unpadder()
            try:
                return unpadder.update(padded) + unpadder.finalize()
            except ValueError:
                raise DecryptError(f"{key}: stored value does not decrypt with key {name!r}") from None
    raise DecryptError(f"{key}: encrypted with key {name!r}, which is not in the encryption configuration")


class _DecryptingWatch:
    def __init__(self, inner: WatchStream, owner: EncryptingStore) -> None:
        self._inner = inner
        self._owner = owner

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        return self._owner.open_event(await self._inner.__anext__())

    def ready(self) -> list[Event]:
        return [self._owner.open_event(ev) for ev in self._inner.ready()]

    def close(self) -> None:
        self._inner.close()


class EncryptingStore(Store):
    """A Store whose Secret values are encrypted in the store below it and plaintext above it."""

    def __init__(self, inner: Store, config: EncryptionConfig) -> None:
        self.inner = inner
        self.config = config

    def set_keys(self, config: EncryptionConfig) -> None:
        """New keys (a rotation, or another server's): new writes use the first key."""
        self.config = config

    # -- transforms ---------------------------------------------------------------------------------------------
    def _seal(self, key: str, value: bytes) -> bytes:
        return encrypt(self.config.keys[0], value) if key.startswith(ENCRYPTED_KEYS) else value

    def _open(self, key: str, value: bytes) -> bytes:
        return decrypt(self.config.keys, value, key=key) if key.startswith(ENCRYPTED_KEYS) else value

    def open_kv(self, kv: KV) -> KV:
        if not kv.key.startswith(ENCRYPTED_KEYS):
            return kv
        return KV(kv.key, self._open(kv.key, kv.value), kv.mod_revision, kv.create_revision)

    def open_event(self, ev: Event) -> Event:
        if not ev.key.startswith(ENCRYPTED_KEYS):
            return ev
        prev = self._open(ev.key, ev.prev_value) if ev.prev_value is not None else None
        return Event(ev.type, ev.key, ev.revision, self._open(ev.key, ev.value), prev)

    # -- Store ------------------------------------------------------------------------------------------------------
    @property
    def revision(self) -> int:
        return self.inner.revision

    @property
    def compacted_revision(self) -> int:
        return self.inner.compacted_revision

    async def get(self, key: str) -> KV | None:
        kv = await self.inner.get(key)
        return self.open_kv(kv) if kv is not None else None

    def get_now(self, key: str) -> KV | None:
        kv = self.inner.get_now(key)
        return self.open_kv(kv) if kv is not None else None

    async def range(self, prefix: str, *, start_after: str = "", limit: int = 0) -> RangeResult:
        res = await self.inner.range(prefix, start_after=start_after, limit=limit)
        if not (prefix.startswith(ENCRYPTED_KEYS) or ENCRYPTED_KEYS.startswith(prefix)):
            return res
        return RangeResult([self.open_kv(kv) for kv in res.items], res.revision, res.more)

    async def create(self, key: str, value: bytes) -> int:
        return await self.inner.create(key, self._seal(key, value))

    async def update(self, key: str, value: bytes, *, expected_revision: int) -> int:
        return await self.inner.update(key, self._seal(key, value), expected_revision=expected_revision)

    async def delete(self, key: str, *, expected_revision: int = 0) -> int:
        return await self.inner.delete(key, expected_revision=expected_revision)

    def watch(self, prefix: str, *, from_revision: int) -> WatchStream:
        inner = self.inner.watch(prefix, from_revision=from_revision)
        if not (prefix.startswith(ENCRYPTED_KEYS) or ENCRYPTED_KEYS.startswith(prefix)):
            return inner
        return _DecryptingWatch(inner, self)

    async def compact(self, revision: int) -> None:
        await self.inner.compact(revision)

    def healthy(self) -> bool:
        return self.inner.healthy()

    async def close(self) -> None:
        await self.inner.close()

    # -- re-encryption -----------------------------------------------------------------------------------------------
    async def reencrypt(self) -> int:
        """Rewrite every Secret not under the current key (compare-and-swap; a concurrent write wins and is
        already encrypted with the current key). Returns how many were rewritten."""
        want = self.config.keys[0].name
        done = 0
        start = ""
        while True:
            page = await self.inner.range(ENCRYPTED_KEYS, start_after=start, limit=500)
            for kv in page.items:
                if key_name(kv.value, self.config.keys) == want:
                    continue
                try:
                    await self.inner.update(
                        kv.key, self._seal(kv.key, self._open(kv.key, kv.value)), expected_revision=kv.mod_revision
                    )
                    done += 1
                except StoreError:
                    continue  # changed or deleted meanwhile: that write used the current key
            if not page.more or not page.items:
                return done
            start = page.items[-1].key

    async def key_usage(self) -> dict[str, int]:
        """How many Secrets each key (or "identity" for plaintext) holds."""
        usage: dict[str, int] = {}
        start = ""
        while True:
            page = await self.inner.range(ENCRYPTED_KEYS, start_after=start, limit=500)
            for kv in page.items:
                name = key_name(kv.value, self.config.keys) or "identity"
                usage[name] = usage.get(name, 0) + 1
            if not page.more or not page.items:
                return usage
            start = page.items[-1].key
