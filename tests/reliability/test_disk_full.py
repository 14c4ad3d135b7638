"""A full disk under the published store and under the cache.

Each store gets its own small tmpfs (``mount -t tmpfs -o size=2m``), so the
test needs root; it skips with the reason otherwise, and always unmounts.

Published store full:

* a publish that does not fit answers 507 with an npm-style body; no temp
  file is left and the space it took is given back (a smaller publish then
  succeeds), the version number stays free, and earlier versions are intact
  and still served;
* the same when only the tarball fits (the version file, the commit point,
  does not): an orphan tarball at most, never served;
* when everything but the metadata fits (past the commit point, on a first
  publish), the version is published with its tags and maintainer, which its
  version file records: 201, and a warning for the operator;
* publishes, dist-tag changes and deprecations on a full disk: 507, nothing
  changed.

Cache full: a tarball that does not fit is **streamed to the client whole
and verified, but not cached**; no partial cache file or temp file stays and
the space is given back. A packument that cannot be cached is still served.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from server.config import StorageConfig, UpstreamConfig
from tests.fakes.upstream import FakeUpstream
from tests.npmdata import make_tarball, publish_body

from .conftest import Registry, RegistryFactory
from .harness import SuiteRun, hidden_leftovers

SUITE = "disk_full"
SUITE_TITLE = "Disk full (2 MiB tmpfs under each store)"

Mount = Callable[[Path, str], Path]


@pytest.fixture
def tmpfs() -> Iterator[Mount]:
    """``mount(dir, size)``: a tmpfs of ``size`` at ``dir`` (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mounted: list[Path] = []

    def mount(where: Path, size: str = "2m") -> Path:
        where.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {proc.stderr.strip() or proc.returncode}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(where: Path, leave: int, name: str = ".filler") -> Path:
    """Take all space on ``where`` but ``leave`` bytes, with a hidden file the
    store ignores. Returns the filler's path."""
    filler = where / name
    size = max(0, free_bytes(where) - leave)
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            f.write(b"\0" * size)
    return filler


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def big_tarball(name: str, version: str, size: int) -> bytes:
    return make_tarball(name, version, extra_files={"blob.bin": os.urandom(size)})


async def publish(reg: Registry, name: str, version: str, tarball: bytes) -> aiohttp.ClientResponse:
    """PUT a publish body (streamed from a buffer: it may be megabytes)."""
    body = io.BytesIO(orjson.dumps(publish_body(name, version, tarball=tarball)))
    return await reg.client.put(f"/{name}", data=body,
                                headers={**reg.auth("alice"), "Content-Type": "application/json"})


async def test_publish_that_does_not_fit(
    registry_factory: RegistryFactory, tmpfs: Mount, tmp_path: Path, record: SuiteRun
) -> None:
    published = tmpfs(tmp_path / "published", "2m")
    reg = await registry_factory(storage=StorageConfig(published=published, cache=tmp_path / "cache"))
    await reg.adduser("alice")
    tarballs = {}
    for version in ("1.0.0", "1.1.0"):
        tarballs[version] = big_tarball("pkg", version, 100_000)
        resp = await publish(reg, "pkg", version, tarballs[version])
        assert resp.status == 201, await resp.text()
    free = free_bytes(published)
    # Too big for what is left: the tarball itself does not fit.
    resp = await publish(reg, "pkg", "2.0.0", big_tarball("pkg", "2.0.0", 3_000_000))
    assert resp.status == 507, await resp.text()
    body = await resp.json()
    assert set(body) == {"error"} and "space" in body["error"]
    assert hidden_leftovers(published) == [], "the failed write must remove its temp file"
    assert free_bytes(published) == free, "the failed write must give its space back"
    assert not (published / "pkg" / "versions" / "2.0.0.json").exists()
    # Reads go on, earlier versions intact.
    doc = await (await reg.client.get("/pkg")).json()
    assert set(doc["versions"]) == {"1.0.0", "1.1.0"} and doc["dist-tags"]["latest"] == "1.1.0"
    for version, data in tarballs.items():
        got = await reg.client.get(f"/pkg/-/pkg-{version}.tgz")
        assert got.status == 200 and await got.read() == data
    # The number was never taken, and a publish that fits succeeds.
    small = make_tarball("pkg", "2.0.0")
    resp = await publish(reg, "pkg", "2.0.0", small)
    assert resp.status == 201, await resp.text()
    got = await reg.client.get("/pkg/-/pkg-2.0.0.tgz")
    assert await got.read() == small
    record.count(requests=8, faults=1)
    record.detail("publish larger than the free space", 507, "no temp file, space given back, earlier versions served")


async def test_publish_whose_tarball_fits_but_not_its_version_file(
    registry_factory: RegistryFactory, tmpfs: Mount, tmp_path: Path, record: SuiteRun
) -> None:
    published = tmpfs(tmp_path / "published", "2m")
    reg = await registry_factory(storage=StorageConfig(published=published, cache=tmp_path / "cache"))
    await reg.adduser("alice")
    first = make_tarball("pkg", "1.0.0")
    resp = await publish(reg, "pkg", "1.0.0", first)
    assert resp.status == 201
    tarball = big_tarball("pkg", "1.1.0", 200_000)
    page = os.statvfs(published).f_frsize
    # Room for the tarball's pages and nothing more.
    filler = fill(published, -(-len(tarball) // page) * page)
    resp = await publish(reg, "pkg", "1.1.0", tarball)
    assert resp.status == 507, await resp.text()
    assert hidden_leftovers(published) == []
    doc = await (await reg.client.get("/pkg")).json()
    assert set(doc["versions"]) == {"1.0.0"} and doc["dist-tags"]["latest"] == "1.0.0"
    assert (await reg.client.get("/pkg/-/pkg-1.1.0.tgz")).status == 404, "an uncommitted tarball is never served"
    assert await (await reg.client.get("/pkg/-/pkg-1.0.0.tgz")).read() == first
    filler.unlink()
    # Once there is room, the same publish goes through (over the orphan, if any).
    resp = await publish(reg, "pkg", "1.1.0", tarball)
    assert resp.status == 201, await resp.text()
    assert await (await reg.client.get("/pkg/-/pkg-1.1.0.tgz")).read() == tarball
    record.count(requests=7, faults=1)
    record.detail("publish whose tarball fits, version file does not", 507,
                  "not listed, tarball not served; the retry succeeds")


async def test_publish_whose_metadata_does_not_fit(
    registry_factory: RegistryFactory, tmpfs: Mount, tmp_path: Path, record: SuiteRun,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the commit point (the version file) only the metadata document is
    left to write (on a first publish), and the version file records what the
    publish changed. If the metadata does not fit, the publish is complete all
    the same: 201, tags and maintainer in effect, a warning for the operator,
    and the next write that has room saves the metadata."""
    published = tmpfs(tmp_path / "published", "2m")
    reg = await registry_factory(storage=StorageConfig(published=published, cache=tmp_path / "cache"))
    await reg.adduser("alice")
    await reg.adduser("bob")
    tarball = big_tarball("pkg", "1.0.0", 200_000)
    page = os.statvfs(published).f_frsize
    filler = fill(published, (-(-len(tarball) // page) + 1) * page)  # the tarball and the version file
    resp = await publish(reg, "pkg", "1.0.0", tarball)
    assert resp.status == 201, await resp.text()
    assert not (published / "pkg" / "package-meta.json").exists()
    assert "its package metadata could not be saved" in caplog.text
    assert hidden_leftovers(published) == []
    doc = await (await reg.client.get("/pkg")).json()
    assert set(doc["versions"]) == {"1.0.0"} and doc["dist-tags"]["latest"] == "1.0.0"
    assert [m["name"] for m in doc["maintainers"]] == ["alice"]
    assert await (await reg.client.get("/pkg/-/pkg-1.0.0.tgz")).read() == tarball
    # alice is the maintainer even though the metadata was never written
    resp = await reg.client.put("/pkg", data=orjson.dumps(publish_body("pkg", "1.1.0")),
                                headers={**reg.auth("bob"), "Content-Type": "application/json"})
    assert resp.status == 403
    # Changes on the full disk fail cleanly, and change nothing.
    tag_headers = {**reg.auth("alice"), "Content-Type": "application/json"}
    assert (await publish(reg, "pkg", "1.1.0", make_tarball("pkg", "1.1.0"))).status == 507
    resp = await reg.client.put("/-/package/pkg/dist-tags/beta", data=b'"1.0.0"', headers=tag_headers)
    assert resp.status == 507 and "error" in await resp.json()
    resp = await reg.client.put("/pkg", json={"name": "pkg", "versions": {"1.0.0": {"deprecated": "old"}}},
                                headers=reg.auth("alice"))
    assert resp.status == 507, "a deprecation that cannot be recorded fails"
    assert hidden_leftovers(published) == []
    doc = await (await reg.client.get("/pkg")).json()
    assert set(doc["versions"]) == {"1.0.0"} and doc["dist-tags"] == {"latest": "1.0.0"}
    assert "deprecated" not in doc["versions"]["1.0.0"]
    filler.unlink()
    assert (await publish(reg, "pkg", "1.1.0", make_tarball("pkg", "1.1.0"))).status == 201
    meta = orjson.loads((published / "pkg" / "package-meta.json").read_bytes())
    assert [m["name"] for m in meta["maintainers"]] == ["alice"] and meta["dist-tags"] == {"latest": "1.1.0"}
    resp = await reg.client.put("/-/package/pkg/dist-tags/latest", data=b'"1.0.0"', headers=tag_headers)
    assert resp.status == 201
    assert (await (await reg.client.get("/pkg")).json())["dist-tags"]["latest"] == "1.0.0"
    record.count(requests=11, faults=4)
    record.detail("first publish whose metadata does not fit", 201,
                  "published with its tags and maintainer (the version file records them); a warning is logged")
    record.detail("publish / dist-tag change / deprecation on a full disk", "507 / 507 / 507",
                  "nothing changed, no temp file")


async def test_cache_fill_that_does_not_fit(
    registry_factory: RegistryFactory, fake_upstream: FakeUpstream, tmpfs: Mount, tmp_path: Path, record: SuiteRun
) -> None:
    cache = tmpfs(tmp_path / "cache", "2m")
    fake_upstream.add_package("big", ["1.0.0"], files={"blob.bin": os.urandom(3_000_000)})
    fake_upstream.add_package("small", ["1.0.0"])
    reg = await registry_factory(
        fake_upstream.url,
        storage=StorageConfig(published=tmp_path / "published", cache=cache),
        upstream=UpstreamConfig(url=fake_upstream.url, retries=0, timeout_s=5, breaker_failures=1000),
    )
    assert (await reg.client.get("/big")).status == 200
    free = free_bytes(cache)
    path = fake_upstream.tarball_path("big", "1.0.0")
    for attempt in (1, 2):
        resp = await reg.client.get("/big/-/big-1.0.0.tgz")
        assert resp.status == 200
        data = await resp.read()
        assert data == fake_upstream.tarball("big", "1.0.0"), "the client gets the whole, verified file"
        assert not (cache / "big" / "big-1.0.0.tgz").exists()
        assert hidden_leftovers(cache) == [], "no partial cache file may stay"
        assert free_bytes(cache) == free, "the space of the aborted cache write is given back"
        assert fake_upstream.count(path) == attempt  # not cached: fetched again
    # A cache with no room at all: packuments and tarballs are still served.
    filler = fill(cache, 0)
    resp = await reg.client.get("/small")
    assert resp.status == 200 and "1.0.0" in (await resp.json())["versions"]
    tgz = await reg.client.get("/small/-/small-1.0.0.tgz")
    assert await tgz.read() == fake_upstream.tarball("small", "1.0.0")
    assert hidden_leftovers(cache) == []
    assert not (cache / "small" / "small-1.0.0.tgz").exists()
    filler.unlink()
    # Room again: the next fill is cached, and verified.
    tgz = await reg.client.get("/small/-/small-1.0.0.tgz")
    assert await tgz.read() == fake_upstream.tarball("small", "1.0.0")
    assert sri((cache / "small" / "small-1.0.0.tgz").read_bytes()) == fake_upstream.integrity("small", "1.0.0")
    record.count(requests=7, faults=3)
    record.detail("cache fill larger than the cache", "200, whole file",
                  "streamed and verified, not cached; no partial file; space given back")
    record.detail("cache with no room at all", "200", "packument and tarball served uncached")
