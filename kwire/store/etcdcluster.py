"""etcd cluster membership over etcd's JSON gateway (`/v3/cluster/member/list`, `/v3/cluster/member/add`):
what a server joining an embedded-etcd cluster does before starting its own member, as K3s's etcd join does.

Member add is idempotent here: a member with this peer URL that never started (no name yet, e.g. the previous
attempt died before its etcd came up) is reused instead of added twice (etcd would refuse the same peer URL).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from kwire.store.base import StoreError

log = logging.getLogger(__name__)

ADD_RETRY_FOR = 60.0


@dataclass(frozen=True)
class Member:
    id: str
    name: str  # empty until the member has started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]


def _member(m: dict[str, Any]) -> Member:
    return Member(
        str(m.get("ID", "")),
        str(m.get("name", "")),
        tuple(m.get("peerURLs") or ()),
        tuple(m.get("clientURLs") or ()),
    )


async def _call(endpoints: list[str], path: str, body: dict[str, Any], *, ssl_context: ssl.SSLContext) -> Any:
    last: Exception | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for url in endpoints:
            try:
                async with session.post(url.rstrip("/") + path, data=orjson.dumps(body), ssl=ssl_context) as r:
                    data = await r.read()
                    if r.status != 200:
                        raise StoreError(f"etcd {path} at {url}: {r.status} {data[:300]!r}")
                    return orjson.loads(data)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                last = exc
    raise StoreError(f"no etcd member answered {path} ({', '.join(endpoints)}): {last}")


async def member_list(endpoints: list[str], *, ssl_context: ssl.SSLContext) -> list[Member]:
    res = await _call(endpoints, "/v3/cluster/member/list", {}, ssl_context=ssl_context)
    return [_member(m) for m in res.get("members") or []]


async def _add(endpoints: list[str], peer_url: str, *, ssl_context: ssl.SSLContext) -> Any:
    """etcd refuses a member add ("unhealthy cluster", its strict reconfig check) until the leader has been
    connected to every member for 5 s, e.g. right after another server joined: wait and ask again."""
    loop = asyncio.get_running_loop()
    end = loop.time() + ADD_RETRY_FOR
    while True:
        try:
            return await _call(endpoints, "/v3/cluster/member/add", {"peerURLs": [peer_url]}, ssl_context=ssl_context)
        except StoreError as exc:
            if "unhealthy cluster" not in str(exc) or loop.time() > end:
                raise
            log.info("etcd: the cluster is not ready for a new member yet; retrying")
            await asyncio.sleep(1.0)


async def member_add(
    endpoints: list[str], *, name: str, peer_url: str, ssl_context: ssl.SSLContext
) -> list[tuple[str, str]]:
    """Add a member with `peer_url` (or reuse an unstarted one) and return (name, peer URL) of every member, the
    new one under `name`: the --initial-cluster it must start with."""
    members = await member_list(endpoints, ssl_context=ssl_context)
    mine = next((m for m in members if peer_url in m.peer_urls), None)
    if mine is not None and mine.name and mine.name != name:
        raise StoreError(f"etcd already has member {mine.name} at {peer_url}")
    if mine is None:
        res = await _add(endpoints, peer_url, ssl_context=ssl_context)
        members = [_member(m) for m in res.get("members") or []]
        log.info("added etcd member %s (%s)", name, peer_url)
    # etcdctl member add's ETCD_INITIAL_CLUSTER: every member's peer URLs under its name (the new one under
    # `name`; another member added but not started yet has no name, and is listed so as well).
    return [(name if peer_url in m.peer_urls else m.name, u) for m in members for u in m.peer_urls]
