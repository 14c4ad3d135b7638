"""The overlaystore benchmark peer against a fake upstream: the real CLI
starts, proxies and caches, clears its cache through the admin API (on
every worker), and accepts a user's publish.

The peer's methods block (subprocess, urllib) while the fake upstream runs
on the test's event loop, so they run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import tomllib
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from benchmarks.overlaystore_peer import ADMIN, OverlaystorePeer
from benchmarks.peer import PeerUnavailable
from overlaystore.store_marker import MARKER
from tests.fakes.upstream import FakeUpstream, make_tarball, sri_sha512

T = TypeVar("T")
Answer = tuple[int, dict[str, str], bytes]


async def blocking(call: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


def fetch(url: str, *, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def publish_body(name: str, version: str, base_url: str) -> bytes:
    """What npm publish sends: the packument with the tarball attached."""
    tarball = make_tarball({"name": name, "version": version})
    filename = f"{name.rpartition('/')[2]}-{version}.tgz"
    dist = {"tarball": f"{base_url}/{name}/-/{filename}", "shasum": hashlib.sha1(tarball).hexdigest(),
            "integrity": sri_sha512(tarball)}
    return json.dumps({
        "_id": name, "name": name, "dist-tags": {"latest": version},
        "versions": {version: {"name": name, "version": version, "_id": f"{name}@{version}", "dist": dist}},
        "_attachments": {filename: {"content_type": "application/octet-stream",
                                    "data": base64.b64encode(tarball).decode(), "length": len(tarball)}},
    }).encode()


@pytest.fixture
async def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.add_package("left-pad", ["1.0.0", "1.1.0"])
    fake_upstream.add_package("@acme/w", ["2.0.0"])
    return fake_upstream


async def running(peer: OverlaystorePeer, upstream: FakeUpstream) -> AsyncIterator[OverlaystorePeer]:
    await blocking(peer.setup, upstream.url)
    await blocking(peer.start)
    try:
        yield peer
    finally:
        await blocking(peer.stop)


@pytest.fixture
async def peer(upstream: FakeUpstream, tmp_path: Path) -> AsyncIterator[OverlaystorePeer]:
    async for started in running(OverlaystorePeer(tmp_path), upstream):
        yield started


async def test_configuration_is_quiet_and_names_an_admin(peer: OverlaystorePeer, tmp_path: Path) -> None:
    config = tomllib.loads(peer.config_file.read_text())
    assert config["access_log"] is False and config["log_level"] == "warning"
    assert config["auth"] == {"registration": True, "admins": [ADMIN]}
    assert peer.config_file.parent == tmp_path / "overlaystore"
    assert peer.cache_dir.parent == peer.published_dir.parent == tmp_path / "overlaystore" / "storage"
    assert "--workers" in peer.command() and peer.command()[peer.command().index("--workers") + 1] == "1"


async def test_proxies_then_clear_cache_goes_upstream_again(peer: OverlaystorePeer, upstream: FakeUpstream) -> None:
    packument = f"{peer.base_url}/@acme%2fw"
    status, headers, body = await blocking(fetch, packument)
    assert status == 200 and headers["X-Overlaystore-Cache"] == "miss"
    tarball_url = json.loads(body)["versions"]["2.0.0"]["dist"]["tarball"]
    assert tarball_url == f"{peer.base_url}/@acme/w/-/w-2.0.0.tgz"
    _, _, tarball = await blocking(fetch, tarball_url)
    assert tarball == upstream.tarball("@acme/w", "2.0.0")
    # The server answers before its cache watch exists; once it does, the
    # view is reset (what was served meanwhile may predate the watch), so one
    # more GET may compose again, from the cache.
    for _ in range(50):
        _, headers, _ = await blocking(fetch, packument)
        if headers["X-Overlaystore-Cache"] == "hit":
            break
        await asyncio.sleep(0.1)
    assert headers["X-Overlaystore-Cache"] == "hit"
    assert upstream.count(upstream.packument_path("@acme/w")) == 1
    assert any(peer.cache_dir.rglob("*.tgz"))

    await blocking(peer.clear_cache)

    assert not any(path.is_file() and path.name != MARKER for path in peer.cache_dir.rglob("*"))
    _, headers, _ = await blocking(fetch, packument)
    assert headers["X-Overlaystore-Cache"] == "miss"
    assert upstream.count(upstream.packument_path("@acme/w")) == 2


async def test_a_user_publishes_and_the_package_survives_clear_cache(peer: OverlaystorePeer) -> None:
    credentials = await blocking(peer.credentials)
    assert credentials.user == "bench" and credentials.token
    assert await blocking(peer.credentials) == credentials  # created once
    status, _, _ = await blocking(lambda: fetch(
        f"{peer.base_url}/bench-pkg", method="PUT", body=publish_body("bench-pkg", "1.0.0", peer.base_url),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {credentials.token}"}))
    assert status in (200, 201)

    await blocking(peer.clear_cache)

    status, _, body = await blocking(fetch, f"{peer.base_url}/bench-pkg")
    assert status == 200 and list(json.loads(body)["versions"]) == ["1.0.0"]
    assert any(peer.published_dir.rglob("bench-pkg-1.0.0.tgz"))


async def test_stop_ends_every_process(upstream: FakeUpstream, tmp_path: Path) -> None:
    peer = OverlaystorePeer(tmp_path)
    async for started in running(peer, upstream):
        pids = started.pids()
        assert pids and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    assert peer.pids() == []
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)


async def test_two_workers_each_drop_their_composed_documents(upstream: FakeUpstream, tmp_path: Path) -> None:
    async for peer in running(OverlaystorePeer(tmp_path, workers=2), upstream):
        assert len(peer.pids()) >= 3  # the supervisor and its two workers
        packument = f"{peer.base_url}/left-pad"

        async def first_answers(until: str | None = None) -> dict[str, str]:
            """Each worker's first outcome (with ``until``: its first such outcome)."""
            seen: dict[str, str] = {}
            for _ in range(400):  # each request is a new connection, to any worker
                _, headers, _ = await blocking(fetch, packument)
                if until is None or headers["X-Overlaystore-Cache"] == until:
                    seen.setdefault(headers["X-Overlaystore-Worker"], headers["X-Overlaystore-Cache"])
                if len(seen) == 2:
                    break
            return seen

        # Both workers hold the composed document (a worker's first copy may
        # be dropped once by its watcher seeing the other worker fill the cache).
        assert len(await first_answers(until="hit")) == 2
        await blocking(peer.clear_cache)
        assert await first_answers() == {"1": "miss", "2": "miss"}


async def test_setup_without_the_virtualenv_is_unavailable(upstream: FakeUpstream, tmp_path: Path) -> None:
    peer = OverlaystorePeer(tmp_path / "work", repo=tmp_path)
    with pytest.raises(PeerUnavailable, match=r"\.venv"):
        await blocking(peer.setup, upstream.url)
