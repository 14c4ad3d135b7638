"""Helpers for the cache-lifecycle and observability tests: a registry whose
``[auth] admins`` and ``[cache]`` sections can be set."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.app import make_app
from server.config import CacheConfig, UpstreamConfig
from tests.server.conftest import Registry, make_config


async def make_registry(
    aiohttp_client: Any,
    root: Path,
    upstream_url: str | None = None,
    *,
    admins: tuple[str, ...] = ("admin",),
    cache: CacheConfig | None = None,
    upstream: UpstreamConfig | None = None,
    **sections: Any,
) -> Registry:
    """A registry on ``root`` (tmp storage), driven through aiohttp's test client."""
    config = make_config(root, upstream_url, **sections)
    config = replace(config, auth=replace(config.auth, admins=admins))
    if cache is not None:
        config = replace(config, cache=cache)
    if upstream is not None:
        config = replace(config, upstream=upstream)
    client = await aiohttp_client(make_app(config))
    return Registry(client, config)


def fast_upstream(url: str | None, **overrides: Any) -> UpstreamConfig:
    """The test upstream settings of ``make_config`` with ``overrides``."""
    return replace(UpstreamConfig(url=url, retries=0, timeout_s=5, breaker_failures=1000), **overrides)


async def publish(reg: Registry, user: str, name: str, version: str = "1.0.0") -> None:
    from tests.npmdata import publish_body

    resp = await reg.client.put(f"/{name.replace('/', '%2f')}", json=publish_body(name, version),
                                headers=reg.auth(user))
    assert resp.status == 201, await resp.text()


async def fetch(reg: Registry, fake: Any, name: str, versions: list[str] | None = None) -> None:
    """GET the packument and the tarballs of ``name`` through the registry
    (fills the cache from the fake upstream)."""
    resp = await reg.client.get("/" + name.replace("/", "%2f"))
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    for version in versions if versions is not None else sorted(doc["versions"]):
        path = f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"
        resp = await reg.client.get(path)
        assert resp.status == 200, (path, await resp.text())
        assert await resp.read() == fake.tarball(name, version)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` (hidden entries skipped) and its bytes.

    A background GC may remove files and directories while this walks, so
    whatever vanishes mid-walk is left out rather than raised (``os.walk``
    ignores directories it can no longer list).
    """
    found: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            path = Path(dirpath, filename)
            try:
                found[str(path.relative_to(root))] = path.read_bytes()
            except FileNotFoundError:
                continue
    return dict(sorted(found.items()))


def cache_files(root: Path) -> dict[str, int]:
    """Relative path -> size of the visible files of a cache directory."""
    return {k: len(v) for k, v in snapshot(root).items()}


async def registry_with_open_breaker(aiohttp_client: Any, root: Path, fake: Any) -> Registry:
    """A registry whose circuit breaker has just opened (one failed upstream GET)."""
    reg = await make_registry(aiohttp_client, root, fake.url, upstream=fast_upstream(fake.url, breaker_failures=1))
    fake.add_package("left-pad")
    fake.fail_next(1, status=503)
    await reg.client.get("/left-pad")
    return reg
