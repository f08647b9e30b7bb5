"""The secrets-encryption keys of a cluster: shared by every server through the datastore, rotated live.

K3s keeps its encryption configuration in the datastore's bootstrap data (sealed with the server token) and on each
server in `<data-dir>/cred/encryption-config.json`; `k3s secrets-encrypt status|rotate-keys` drive it through the
server. kwire does the same: the configuration is stored at `DATASTORE_KEY` sealed with the cluster token (PBKDF2 +
AES-GCM, as the shared CA is), every server watches that key and swaps its keys when another server rotates them,
and the server answers `secrets-encrypt` on `/v1-kwire/encrypt/{status,rotate-keys}` to `system:masters` only.

A rotation is K3s's prepare/rotate/reencrypt in one call: a new first key is published (older ones stay readable),
every Secret is rewritten under it, then the old keys are dropped and the final configuration published.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

from kwire.api.bootstrap import seal_json, unseal_json
from kwire.base.backoff import Backoff
from kwire.base.tasks import cancel_and_wait
from kwire.store.base import Compacted, KeyExists, RevisionMismatch, Store
from kwire.store.encryption import EncryptingStore, EncryptionConfig, load_or_create, save

log = logging.getLogger(__name__)

DATASTORE_KEY = "/registry/kwire-bootstrap/encryption-config"
STATUS_PATH = "/v1-kwire/encrypt/status"
ROTATE_PATH = "/v1-kwire/encrypt/rotate-keys"


def config_path(data_dir: Path) -> Path:
    return Path(data_dir) / "cred" / "encryption-config.json"


@dataclass(eq=False)
class EncryptionKeys:
    """One server's view of the shared keys: the wrapper store that uses them and the watch that updates them."""

    store: EncryptingStore
    _: KW_ONLY
    token: str = field(repr=False)  # the server token, which seals the shared copy
    path: Path
    enabled_by_flag: bool
    stage: str = field(default="start", init=False)
    _rotating: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    # -- the shared copy ---------------------------------------------------------------------------------------
    def _publish_value(self, config: EncryptionConfig) -> bytes:
        return seal_json(self.token, {"config": config.dumps().decode()})

    async def _publish(self, config: EncryptionConfig) -> None:
        inner = self.store.inner
        while True:
            kv = inner.get_now(DATASTORE_KEY)
            try:
                if kv is None:
                    await inner.create(DATASTORE_KEY, self._publish_value(config))
                else:
                    await inner.update(DATASTORE_KEY, self._publish_value(config), expected_revision=kv.mod_revision)
                return
            except (KeyExists, RevisionMismatch):
                continue

    def _adopt(self, value: bytes) -> None:
        config = EncryptionConfig.loads(unseal_json(self.token, value)["config"].encode())
        if config != self.store.config:
            self.store.set_keys(config)
            save(self.path, config)
            log.info("secrets encryption keys updated from the datastore: %s", ", ".join(k.name for k in config.keys))

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name="kwire-encryption-keys")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _follow(self) -> None:
        """Watch the shared configuration (list, then watch from its revision; again after any error)."""
        backoff = Backoff(0.5, 10.0, jitter=0.5)
        inner = self.store.inner
        while True:
            try:
                kv = inner.get_now(DATASTORE_KEY)
                if kv is not None:
                    self._adopt(kv.value)
                async for ev in inner.watch(DATASTORE_KEY, from_revision=inner.revision):
                    if ev.key == DATASTORE_KEY and ev.type != "DELETED":
                        self._adopt(ev.value)
                    backoff.reset()
            except asyncio.CancelledError:
                raise
            except Compacted:
                pass
            except Exception:
                log.exception("following the shared encryption configuration")
            await backoff.sleep()

    # -- what secrets-encrypt asks --------------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        kv = self.store.inner.get_now(DATASTORE_KEY)
        shared = EncryptionConfig.loads(unseal_json(self.token, kv.value)["config"].encode()) if kv else None
        usage = await self.store.key_usage()
        keys = [
            {"name": k.name, "type": "AESCBC", "active": i == 0, "secrets": usage.get(k.name, 0)}
            for i, k in enumerate(self.store.config.keys)
        ]
        return {
            "enable": True,
            "stage": self.stage,
            "hashMatch": shared is None or shared.hash() == self.store.config.hash(),
            "hash": self.store.config.hash(),
            "keys": keys,
            "plaintextSecrets": usage.get("identity", 0),
        }

    async def rotate(self) -> dict[str, Any]:
        async with self._rotating:
            self.stage = "rotate"
            rotated = self.store.config.rotated()
            self.store.set_keys(rotated)
            save(self.path, rotated)
            await self._publish(rotated)  # other servers read the new key before anything is written with it
            self.stage = "reencrypt_active"
            count = await self.store.reencrypt()
            final = EncryptionConfig(keys=rotated.keys[:1])
            self.store.set_keys(final)
            save(self.path, final)
            await self._publish(final)
            self.stage = "reencrypt_finished"
            log.info("secrets encryption keys rotated to %s; %d secrets re-encrypted", final.keys[0].name, count)
            return {"key": final.keys[0].name, "reencrypted": count}


async def open_encryption(
    store: Store, *, data_dir: Path, token: str, enabled: bool
) -> tuple[Store, EncryptionKeys | None]:
    """The store the API uses: wrapped with the cluster's encryption keys when `--secrets-encryption` is on or the
    datastore already holds keys (data encrypted before must stay readable, and new Secrets stay encrypted)."""
    path = config_path(data_dir)
    kv = store.get_now(DATASTORE_KEY)
    if kv is not None:
        config = EncryptionConfig.loads(unseal_json(token, kv.value)["config"].encode())
        save(path, config)
        if not enabled:
            log.warning("secrets encryption stays on: the datastore holds encryption keys (%s)", path)
    elif enabled:
        config = load_or_create(path)
    else:
        return store, None
    wrapped = EncryptingStore(store, config)
    keys = EncryptionKeys(wrapped, token=token, path=path, enabled_by_flag=enabled)
    if kv is None:
        await keys._publish(config)
    migrated = await wrapped.reencrypt()  # Secrets stored in plaintext before encryption was enabled
    if migrated:
        log.info("secrets encryption: %d existing secrets encrypted with %s", migrated, config.keys[0].name)
    keys.start()
    return wrapped, keys


def format_status(doc: dict[str, Any]) -> str:
    """`k3s secrets-encrypt status` output."""
    lines = [
        f"Encryption Status: {'Enabled' if doc.get('enable') else 'Disabled'}",
        f"Current Rotation Stage: {doc.get('stage', 'start')}",
        "Server Encryption Hashes: "
        + ("All hashes match" if doc.get("hashMatch") else "hash does not match the datastore's; restart the server"),
        "",
        "Active  Key Type  Name",
        "------  --------  ----",
    ]
    for k in doc.get("keys") or []:
        lines.append(f" {'*' if k.get('active') else ' '}      {k.get('type', 'AESCBC'):<8}  {k.get('name')}")
    if doc.get("plaintextSecrets"):
        lines.append(f"\n{doc['plaintextSecrets']} secrets are not encrypted yet")
    return "\n".join(lines)
