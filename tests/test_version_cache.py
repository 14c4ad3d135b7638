"""PackageStore's cache of parsed version files: a read lists the versions
directory every time and reads only the files it has not seen, yet never
serves a file that is gone, misses one another process wrote, or grows past
its bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.cache import CacheLayer
from overlaystore.errors import InvalidInput
from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.packages import PackageStore, VersionDocCache, tarball_key, version_file_key
from overlaystore.published import PublishedLayer

from .test_packages import ALICE, manifest, publish, tgz

HELPER = Path(__file__).parent / "helpers" / "publish_loop.py"
W = PackageName("@acme/widget")


class CountingReads:
    """Records the keys a PublishedLayer reads with get_many."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, layer: PublishedLayer) -> None:
        self.keys: list[str] = []
        real = layer.get_many

        async def get_many(keys: Iterable[str] = (), *, children_of: Iterable[str] = ()) -> dict[str, bytes]:
            keys = list(keys)
            self.keys.extend(keys)
            return await real(keys, children_of=children_of)

        monkeypatch.setattr(layer, "get_many", get_many)


async def open_store(root: Path, **kwargs: int) -> PackageStore:
    opened = await PackageStore.open_directories(root / "published", root / "cache")
    return PackageStore(opened.layered, **kwargs)


def memory_store(**kwargs: int) -> PackageStore:
    return PackageStore(LayeredStore(PublishedLayer(MemoryBackend()), CacheLayer(MemoryBackend())), **kwargs)


def version_doc(name: str, version: str, **extra: object) -> bytes:
    return orjson.dumps({"time": "2026-01-01T00:00:00.000Z", "manifest": manifest(name, version, b"x", **extra)})


async def test_never_reads_back_the_version_files_it_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(tmp_path)
    for v in ["1.0.0", "1.0.1", "1.0.2"]:
        await publish(store, W, v)
    reads = CountingReads(monkeypatch, store.layered.published)
    first = await store.fragment(W)
    await publish(store, W, "1.0.3")
    second = await store.fragment(W)
    assert first is not None and second is not None
    assert set(second.versions) == {"1.0.0", "1.0.1", "1.0.2", "1.0.3"}
    assert second.versions["1.0.3"] == manifest(W, "1.0.3", tgz(W, "1.0.3"))
    # Each publish cached the file it wrote, under the tag a listing shows.
    assert reads.keys == []


async def test_reads_each_foreign_version_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = await open_store(tmp_path), await open_store(tmp_path)
    await publish(ours, W, "1.0.0")
    reads = CountingReads(monkeypatch, ours.layered.published)
    for v in ["1.0.1", "1.0.2"]:
        await publish(theirs, W, v)
    for _ in range(2):
        assert set((await ours.fragment(W)).versions) == {"1.0.0", "1.0.1", "1.0.2"}  # type: ignore[union-attr]
    assert reads.keys == [version_file_key(W, "1.0.1"), version_file_key(W, "1.0.2")]


async def test_sees_versions_another_store_on_the_same_directory_wrote(tmp_path: Path) -> None:
    ours, theirs = await open_store(tmp_path), await open_store(tmp_path)
    await publish(ours, W, "1.0.0")
    assert set((await ours.fragment(W)).versions) == {"1.0.0"}  # type: ignore[union-attr]
    await publish(theirs, W, "1.0.1", tags={"latest": "1.0.1"})
    fragment = await ours.fragment(W)
    assert fragment is not None
    assert fragment.versions["1.0.1"] == manifest(W, "1.0.1", tgz(W, "1.0.1"))
    assert fragment.dist_tags["latest"] == "1.0.1"
    # and our next publish builds on theirs rather than on what we cached
    after = await publish(ours, W, "1.0.2", tags={})
    assert set(after.versions) == {"1.0.0", "1.0.1", "1.0.2"} and after.rev == 3


async def test_sees_versions_another_process_published(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await publish(store, W, "0.1.0")
    assert set((await store.fragment(W)).versions) == {"0.1.0"}  # type: ignore[union-attr]
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(HELPER), str(tmp_path / "published"), str(tmp_path / "cache"), W,
         "versions", "2.0.0", "2.0.1", "--tag-prefix", "p"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    fragment = await store.fragment(W)
    assert fragment is not None
    assert set(fragment.versions) == {"0.1.0", "2.0.0", "2.0.1"}
    on_disk = orjson.loads((tmp_path / "published" / version_file_key(W, "2.0.1")).read_bytes())
    assert fragment.versions["2.0.1"] == on_disk["manifest"]
    assert fragment.dist_tags["p1"] == "2.0.1"


async def test_purged_version_file_is_never_served(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    for v in ["1.0.0", "1.0.1"]:
        await publish(store, W, v)
    assert set((await store.fragment(W)).versions) == {"1.0.0", "1.0.1"}  # type: ignore[union-attr]
    # An operator removes a version file behind the store's back.
    (tmp_path / "published" / version_file_key(W, "1.0.1")).unlink()
    fragment = await store.fragment(W)
    assert fragment is not None
    assert set(fragment.versions) == {"1.0.0"}
    assert fragment.dist_tags["latest"] == "1.0.0"  # the dangling tag moved


async def test_purged_then_republished_version_is_read_again(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.0.1")
    assert "description" not in (await store.fragment(W)).versions["1.0.1"]  # type: ignore[union-attr]
    (tmp_path / "published" / version_file_key(W, "1.0.1")).unlink()
    (tmp_path / "published" / tarball_key(W, "1.0.1")).unlink()
    data = b"the second 1.0.1"
    # The publish reads first and sees the file gone, so whatever inode the
    # new file gets, the old document cannot come back.
    await store.publish(W, "1.0.1", manifest(W, "1.0.1", data, description="second"), data,
                        tags={}, user=ALICE)
    fragment = await store.fragment(W)
    assert fragment is not None
    assert fragment.versions["1.0.1"]["description"] == "second"


async def test_rewritten_version_file_is_read_again_by_its_tag() -> None:
    store = memory_store()
    await publish(store, W, "1.0.0")
    assert "description" not in (await store.fragment(W)).versions["1.0.0"]  # type: ignore[union-attr]
    backend = store.layered.published.backend
    key = version_file_key(W, "1.0.0")
    # Removed and re-created between two reads: only the tag can tell.
    await backend.delete(key)
    await backend.write(key, version_doc(W, "1.0.0", description="again"), replace=False)
    fragment = await store.fragment(W)
    assert fragment is not None
    assert fragment.versions["1.0.0"]["description"] == "again"


async def test_cached_documents_are_not_changed_by_callers() -> None:
    store = memory_store()
    await publish(store, W, "1.0.0")
    first = await store.fragment(W)
    second = await store.fragment(W)
    assert first is not None and second is not None
    assert first.versions == second.versions
    assert first.versions["1.0.0"] == manifest(W, "1.0.0", tgz(W, "1.0.0"))


async def test_the_cache_stays_within_its_bound() -> None:
    size = len(version_doc("pkg-0", "1.0.0"))
    store = memory_store(version_cache_bytes=5 * size)
    names = [PackageName(f"pkg-{i}") for i in range(6)]
    for name in names:
        await publish(store, name, "1.0.0")
        await publish(store, name, "1.0.1")
        assert set((await store.fragment(name)).versions) == {"1.0.0", "1.0.1"}  # type: ignore[union-attr]
    cache = store._version_docs
    assert 0 < cache.bytes <= cache.max_bytes == 5 * size
    assert len(cache) <= 4  # two packages of two versions at most
    # Evicted packages still read correctly (from storage).
    for name in names:
        assert set((await store.fragment(name)).versions) == {"1.0.0", "1.0.1"}  # type: ignore[union-attr]


async def test_a_package_larger_than_the_bound_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    store = memory_store(version_cache_bytes=10)
    await publish(store, W, "1.0.0")
    reads = CountingReads(monkeypatch, store.layered.published)
    for _ in range(2):
        fragment = await store.fragment(W)
        assert fragment is not None and set(fragment.versions) == {"1.0.0"}
    assert len(store._version_docs) == 0 and store._version_docs.bytes == 0
    assert reads.keys == [version_file_key(W, "1.0.0")] * 2


async def test_a_disabled_cache_still_reads_correctly() -> None:
    store = memory_store(version_cache_bytes=0)
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.0.1")
    fragment = await store.fragment(W)
    assert fragment is not None and set(fragment.versions) == {"1.0.0", "1.0.1"}
    assert len(store._version_docs) == 0


def test_negative_bound_refused() -> None:
    with pytest.raises(InvalidInput):
        VersionDocCache(-1)
