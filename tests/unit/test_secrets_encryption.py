"""Secrets encryption at rest: kube's aescbc format, the store wrapper, re-encryption and rotation."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from kwire.store.encryption import (
    PREFIX,
    AesKey,
    DecryptError,
    EncryptingStore,
    EncryptionConfig,
    decrypt,
    encrypt,
    key_name,
    load_or_create,
)
from kwire.store.sqlite import SQLiteStore

SECRET = "/registry/core/secrets/default/db"
CM = "/registry/configmaps/default/db"


def _key(name: str = "aescbckey", fill: int = 7) -> AesKey:
    return AesKey(name=name, secret=bytes([fill]) * 32)


def test_aescbc_format_is_kubes() -> None:
    key = _key()
    sealed = encrypt(key, b'{"data":{"password":"hunter2"}}')
    assert sealed.startswith(PREFIX + b"aescbckey:")
    body = sealed[len(PREFIX) + len(b"aescbckey:") :]
    assert len(body) % 16 == 0 and len(body) >= 32  # IV + whole blocks (PKCS#7)
    assert b"hunter2" not in sealed
    assert key_name(sealed) == "aescbckey"
    assert decrypt([key], sealed) == b'{"data":{"password":"hunter2"}}'
    # The same plaintext twice: different IVs, different ciphertexts.
    assert encrypt(key, b"x") != encrypt(key, b"x")


def test_plaintext_reads_as_identity_and_unknown_or_wrong_keys_fail() -> None:
    assert decrypt([_key()], b'{"kind":"Secret"}') == b'{"kind":"Secret"}'
    sealed = encrypt(_key("old"), b"payload")
    with pytest.raises(DecryptError, match="'old', which is not in the encryption configuration"):
        decrypt([_key("new")], sealed, key=SECRET)
    with pytest.raises(DecryptError):
        decrypt([_key("old", fill=9)], sealed, key=SECRET)  # same name, different secret
    with pytest.raises(DecryptError, match="truncated"):
        decrypt([_key("old")], sealed[:-20], key=SECRET)


def test_config_file_is_k3s_encryption_configuration(tmp_path: Path) -> None:
    path = tmp_path / "cred" / "encryption-config.json"
    config = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["kind"] == "EncryptionConfiguration" and doc["apiVersion"] == "apiserver.config.k8s.io/v1"
    (res,) = doc["resources"]
    assert res["resources"] == ["secrets"]
    assert res["providers"][1] == {"identity": {}}
    (k,) = res["providers"][0]["aescbc"]["keys"]
    assert k["name"] == "aescbckey" and len(base64.b64decode(k["secret"])) == 32
    assert load_or_create(path) == config  # kept, not regenerated
    rotated = config.rotated(now=0)
    assert [k.name for k in rotated.keys] == ["aescbckey-1970-01-01T000000Z", "aescbckey"]
    assert rotated.hash() != config.hash()


def test_store_holds_ciphertext_and_api_side_sees_plaintext() -> None:
    async def run() -> None:
        inner = SQLiteStore(":memory:")
        store = EncryptingStore(inner, EncryptionConfig(keys=(_key(),)))
        watch = store.watch("/registry/", from_revision=0)
        rev = await store.create(SECRET, b'{"password":"hunter2"}')
        await store.create(CM, b'{"plain":"yes"}')
        raw = inner.get_now(SECRET)
        assert raw is not None and raw.value.startswith(PREFIX) and b"hunter2" not in raw.value
        assert inner.get_now(CM).value == b'{"plain":"yes"}'  # type: ignore[union-attr]
        assert store.get_now(SECRET).value == b'{"password":"hunter2"}'  # type: ignore[union-attr]
        assert (await store.get(SECRET)).value == b'{"password":"hunter2"}'  # type: ignore[union-attr]
        listed = await store.range("/registry/")
        assert {kv.key: kv.value for kv in listed.items}[SECRET] == b'{"password":"hunter2"}'
        await store.update(SECRET, b'{"password":"changed"}', expected_revision=rev)
        events = watch.ready()
        assert [e.value for e in events if e.key == SECRET] == [b'{"password":"hunter2"}', b'{"password":"changed"}']
        assert events[-1].prev_value == b'{"password":"hunter2"}'
        watch.close()
        await store.close()

    asyncio.run(run())


def test_reencrypt_migrates_plaintext_and_rotation_moves_every_secret() -> None:
    async def run() -> None:
        inner = SQLiteStore(":memory:")
        for i in range(7):
            await inner.create(f"/registry/core/secrets/ns/s{i}", f'{{"n":{i}}}'.encode())  # written before encryption
        store = EncryptingStore(inner, EncryptionConfig(keys=(_key(),)))
        assert await store.key_usage() == {"identity": 7}
        assert await store.reencrypt() == 7
        assert await store.key_usage() == {"aescbckey": 7}
        assert await store.reencrypt() == 0  # idempotent
        store.set_keys(EncryptionConfig(keys=(_key("next", fill=3), _key())))
        assert store.get_now("/registry/core/secrets/ns/s3").value == b'{"n":3}'  # type: ignore[union-attr]
        assert await store.reencrypt() == 7
        store.set_keys(EncryptionConfig(keys=(_key("next", fill=3),)))  # the old key dropped: still readable
        values = [kv.value for kv in (await store.range("/registry/core/secrets/")).items]
        assert sorted(values) == sorted(f'{{"n":{i}}}'.encode() for i in range(7))
        await store.close()

    asyncio.run(run())


def test_key_names_with_colons_match_by_whole_prefix() -> None:
    """K3s names rotated keys with RFC 3339 times (colons): kube matches each key's whole prefix."""
    key = _key("aescbckey-2026-11-30T18:49:00Z")
    sealed = encrypt(key, b"v")
    assert key_name(sealed, [key]) == key.name
    assert decrypt([_key("other"), key], sealed) == b"v"


def test_servers_sharing_a_datastore_follow_a_rotation(tmp_path: Path) -> None:
    """Two servers on one datastore: the second adopts the first's keys at start and its rotation live."""
    from kwire.api.encryptionkeys import DATASTORE_KEY, open_encryption

    async def run() -> None:
        shared = SQLiteStore(":memory:")
        a_store, a_keys = await open_encryption(shared, data_dir=tmp_path / "a", token="T", enabled=True)
        assert a_keys is not None and shared.get_now(DATASTORE_KEY) is not None
        await a_store.create(SECRET, b'{"v":1}')
        # The second server starts without the flag: the datastore's keys still apply.
        b_store, b_keys = await open_encryption(shared, data_dir=tmp_path / "b", token="T", enabled=False)
        assert b_keys is not None
        assert b_store.get_now(SECRET).value == b'{"v":1}'  # type: ignore[union-attr]
        result = await a_keys.rotate()
        for _ in range(100):
            if b_keys.store.config.keys[0].name == result["key"]:
                break
            await asyncio.sleep(0.02)
        assert [k.name for k in b_keys.store.config.keys] == [result["key"]]
        assert b_store.get_now(SECRET).value == b'{"v":1}'  # type: ignore[union-attr]
        assert (tmp_path / "b" / "cred" / "encryption-config.json").read_bytes() == (
            tmp_path / "a" / "cred" / "encryption-config.json"
        ).read_bytes()
        status = await b_keys.status()
        assert status["hashMatch"] and status["keys"][0]["secrets"] == 1
        # A server started with another token cannot read the shared keys.
        from kwire.api.bootstrap import JoinError

        with pytest.raises(JoinError):
            await open_encryption(shared, data_dir=tmp_path / "c", token="other", enabled=True)
        await a_keys.stop()
        await b_keys.stop()
        await shared.close()

    asyncio.run(run())
