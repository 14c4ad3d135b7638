"""PackageStore: publish, unpublish, tags, deprecations, maintainers, stars,
tombstones, orphan repair, subscribers, concurrency (in-process and across
processes), tarball lookup and the cache side."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.cache import CacheLayer, CacheMeta
from overlaystore.errors import AlreadyPublished, InvalidInput, InvalidName, InvalidVersion, NotFound
from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.packages import MAX_MANIFEST_DEPTH, PackageStore, isoformat
from overlaystore.published import PublishedLayer

HELPER = Path(__file__).parent / "helpers" / "publish_loop.py"
W = PackageName("@acme/widget")
P = PackageName("plain")
ALICE = {"name": "alice", "email": "alice@example.com"}


class Clock:
    """Deterministic datetimes, one second apart."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def manifest(name: str, version: str, tarball: bytes, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "_npmUser": ALICE,
        "dist": {"integrity": integrity(tarball), "shasum": hashlib.sha1(tarball).hexdigest()},
        **extra,
    }


def tgz(name: str, version: str) -> bytes:
    return f"tarball of {name}@{version}".encode() * 10


async def publish(store: PackageStore, name: PackageName, version: str, tags: dict[str, str] | None = None,
                  data: bytes | None = None) -> Any:
    data = tgz(name, version) if data is None else data
    return await store.publish(name, version, manifest(name, version, data), data,
                               tags={"latest": version} if tags is None else tags, user=ALICE)


@pytest.fixture(params=["file", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> PackageStore:
    if request.param == "file":
        opened = await PackageStore.open_directories(tmp_path / "published", tmp_path / "cache")
        return PackageStore(opened.layered, clock=Clock())
    layered = LayeredStore(PublishedLayer(MemoryBackend()), CacheLayer(MemoryBackend()))
    return PackageStore(layered, clock=Clock())


@pytest.fixture
async def disk_store(tmp_path: Path) -> PackageStore:
    opened = await PackageStore.open_directories(tmp_path / "published", tmp_path / "cache")
    return PackageStore(opened.layered, clock=Clock())


# --- publish


async def test_never_published(store: PackageStore) -> None:
    assert await store.fragment(W) is None
    assert await store.published_names() == []
    assert await store.tarball(W, "widget-1.0.0.tgz") is None


async def test_first_publish(store: PackageStore) -> None:
    fragment = await publish(store, W, "1.0.0")
    assert fragment == await store.fragment(W)
    assert fragment.name == W
    assert fragment.versions == {"1.0.0": manifest(W, "1.0.0", tgz(W, "1.0.0"))}
    assert fragment.times == {"1.0.0": "2026-01-01T00:00:01.000Z"}
    assert fragment.created == fragment.modified == "2026-01-01T00:00:01.000Z"
    assert fragment.dist_tags == {"latest": "1.0.0"}
    assert fragment.maintainers == (ALICE,)
    assert fragment.rev == 1 and fragment.is_live
    assert await store.published_names() == [W]
    ref = await store.tarball(W, "widget-1.0.0.tgz")
    assert ref is not None and ref.layer == "published" and ref.size == len(tgz(W, "1.0.0"))
    assert await ref.read() == tgz(W, "1.0.0")


async def test_on_disk_layout(disk_store: PackageStore, tmp_path: Path) -> None:
    await publish(disk_store, W, "1.0.0")
    root = tmp_path / "published" / "@acme" / "widget"
    doc = orjson.loads((root / "versions" / "1.0.0.json").read_bytes())
    assert doc == {"time": "2026-01-01T00:00:01.000Z", "rev": 1, "dist-tags": {"latest": "1.0.0"},
                   "manifest": manifest(W, "1.0.0", tgz(W, "1.0.0"))}
    assert (root / "widget-1.0.0.tgz").read_bytes() == tgz(W, "1.0.0")
    meta = orjson.loads((root / "package-meta.json").read_bytes())
    assert meta["rev"] == 1 and meta["dist-tags"] == {"latest": "1.0.0"}
    assert set(meta) == {"rev", "created", "modified", "dist-tags", "deprecated", "unpublished", "maintainers", "users"}
    ref = await disk_store.tarball(W, "widget-1.0.0.tgz")
    assert ref is not None and ref.path == root / "widget-1.0.0.tgz"


async def test_later_publishes(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "2.0.0-beta.1", tags={"beta": "2.0.0-beta.1"})
    fragment = await publish(store, W, "1.1.0")
    assert list(fragment.versions) == ["1.0.0", "1.1.0", "2.0.0-beta.1"]
    assert fragment.dist_tags == {"latest": "1.1.0", "beta": "2.0.0-beta.1"}
    assert fragment.created == "2026-01-01T00:00:01.000Z"
    assert fragment.modified == fragment.times["1.1.0"]
    assert fragment.rev == 3
    assert fragment.maintainers == (ALICE,)


async def test_a_later_publish_records_its_tags_in_its_version_file_only(
    disk_store: PackageStore, tmp_path: Path
) -> None:
    await publish(disk_store, W, "1.0.0")
    root = tmp_path / "published" / "@acme" / "widget"
    meta_before = (root / "package-meta.json").read_bytes()
    returned = await publish(disk_store, W, "2.0.0-beta.1", tags={"beta": "2.0.0-beta.1", "x": "1.0.0"})
    # one durable write fewer: the metadata document is left as it was
    assert (root / "package-meta.json").read_bytes() == meta_before
    doc = orjson.loads((root / "versions" / "2.0.0-beta.1.json").read_bytes())
    assert (doc["rev"], doc["dist-tags"]) == (2, {"beta": "2.0.0-beta.1", "x": "1.0.0"})
    # a reader with nothing cached replays it
    cold = PackageStore(disk_store.layered)
    fragment = await cold.fragment(W)
    assert fragment == returned
    assert fragment.dist_tags == {"latest": "1.0.0", "beta": "2.0.0-beta.1", "x": "1.0.0"} and fragment.rev == 2


async def test_the_metadata_is_rewritten_every_fold_after_publishes(tmp_path: Path) -> None:
    opened = await PackageStore.open_directories(tmp_path / "published", tmp_path / "cache")
    store = PackageStore(opened.layered, clock=Clock(), fold_after=2)
    revs = []
    for minor in range(6):
        await publish(store, W, f"1.{minor}.0")
        meta = orjson.loads(await store.layered.published.get("@acme/widget/package-meta.json") or b"")
        revs.append(meta["rev"])
    # the first publish writes it; then every third publish (after two unfolded ones)
    assert revs == [1, 1, 1, 4, 4, 4]
    assert meta["dist-tags"] == {"latest": "1.3.0"}
    with pytest.raises(InvalidInput):
        PackageStore(opened.layered, fold_after=0)


async def test_first_publish_with_only_a_beta_tag_sets_latest(store: PackageStore) -> None:
    fragment = await publish(store, W, "1.0.0-rc.1", tags={"next": "1.0.0-rc.1"})
    assert fragment.dist_tags == {"next": "1.0.0-rc.1", "latest": "1.0.0-rc.1"}


async def test_tags_to_unknown_versions_are_ignored(store: PackageStore) -> None:
    fragment = await publish(store, W, "1.0.0", tags={"latest": "1.0.0", "x": "9.9.9"})
    assert fragment.dist_tags == {"latest": "1.0.0"}


async def test_republish_refused_bytes_unchanged(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    before = await store.fragment(W)
    with pytest.raises(AlreadyPublished) as caught:
        await publish(store, W, "1.0.0", data=b"evil bytes")
    assert str(caught.value) == "You cannot publish over the previously published versions: 1.0.0."
    assert await store.fragment(W) == before
    ref = await store.tarball(W, "widget-1.0.0.tgz")
    assert ref is not None and await ref.read() == tgz(W, "1.0.0")


async def test_republish_after_unpublish_refused(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.0.1")
    await store.unpublish(W, ["1.0.0"])
    with pytest.raises(AlreadyPublished):
        await publish(store, W, "1.0.0", data=b"evil bytes")
    await store.unpublish_all(W)
    with pytest.raises(AlreadyPublished):
        await publish(store, W, "1.0.1")
    fragment = await publish(store, W, "1.0.2")
    assert list(fragment.versions) == ["1.0.2"]
    assert fragment.dist_tags == {"latest": "1.0.2"}


@pytest.mark.parametrize(("name", "version", "error"), [
    ("../evil", "1.0.0", InvalidName),
    ("@acme/w", "1.0", InvalidVersion),
    ("@acme/w", "../../x", InvalidVersion),
    ("@acme/w", "v1.0.0", InvalidVersion),
])
async def test_publish_validates(store: PackageStore, name: str, version: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        await store.publish(PackageName(name), version, {}, b"x", tags={}, user=ALICE)
    assert await store.published_names() == []


async def test_unserializable_manifest_writes_nothing(store: PackageStore) -> None:
    with pytest.raises(InvalidInput):
        await store.publish(W, "1.0.0", {"bad": object()}, b"x", tags={}, user=ALICE)
    assert await store.layered.published.keys() == []


def nested(depth: int) -> Any:
    """``depth`` levels of alternating arrays and objects around a 1."""
    value: Any = 1
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


async def test_a_manifest_nesting_past_the_limit_writes_nothing(store: PackageStore) -> None:
    # The manifest is one level; its field takes the rest. At the limit it is
    # stored and its packument serializes; one more level is refused.
    fine = nested(MAX_MANIFEST_DEPTH - 1)
    await store.publish(W, "1.0.0", {"exports": fine}, b"x", tags={}, user=ALICE)
    fragment = await store.fragment(W)
    assert fragment is not None and fragment.versions["1.0.0"]["exports"] == fine
    for depth in (MAX_MANIFEST_DEPTH, 400, 5000):  # 5000: deeper than Python's recursion limit
        with pytest.raises(InvalidInput, match="deeper than 64 levels"):
            await store.publish(W, "2.0.0", {"exports": nested(depth)}, b"y", tags={}, user=ALICE)
    assert sorted(k.key for k in await store.layered.published.keys() if "2.0.0" in k.key) == []


# --- unpublish


async def test_unpublish(store: PackageStore) -> None:
    for v in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        await publish(store, W, v, tags={"latest": v} if "rc" not in v else {"next": v})
    await store.set_dist_tag(W, "stable", "1.1.0")
    fragment = await store.unpublish(W, ["1.1.0", "7.7.7"])
    assert list(fragment.versions) == ["1.0.0", "2.0.0-rc.1"]
    assert fragment.dist_tags == {"latest": "1.0.0", "next": "2.0.0-rc.1"}
    assert set(fragment.unpublished) == {"1.1.0"}
    assert "1.1.0" in fragment.times  # time kept
    assert await store.tarball(W, "widget-1.1.0.tgz") is None
    assert await store.tarball(W, "widget-1.0.0.tgz") is not None
    # only a prerelease left: latest goes to it
    fragment = await store.unpublish(W, ["1.0.0"])
    assert fragment.dist_tags == {"latest": "2.0.0-rc.1", "next": "2.0.0-rc.1"}


async def test_unpublish_nothing_live_changes_nothing(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    fragment = await store.unpublish(W, ["9.9.9"])
    assert fragment.rev == 1


async def test_unpublish_unknown_package(store: PackageStore) -> None:
    with pytest.raises(NotFound):
        await store.unpublish(W, ["1.0.0"])
    with pytest.raises(NotFound):
        await store.unpublish_all(W)


async def test_unpublish_all_keeps_files_and_tombstones(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.1.0")
    await store.set_deprecations(W, {"1.0.0": "old"})
    await store.unpublish_all(W)
    fragment = await store.fragment(W)
    assert fragment is not None and not fragment.is_live
    assert fragment.versions == {} and fragment.dist_tags == {} and fragment.deprecations == {}
    assert set(fragment.unpublished) == {"1.0.0", "1.1.0"}
    assert set(fragment.times) == {"1.0.0", "1.1.0"}
    assert await store.tarball(W, "widget-1.0.0.tgz") is None
    keys = {i.key for i in await store.layered.published.keys()}
    assert "@acme/widget/widget-1.0.0.tgz" in keys  # nothing published is deleted


async def test_tombstoned_version_hides_cached_tarball(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.0.1")
    await store.unpublish(W, ["1.0.0"])
    async with await store.open_cache_tarball(W, "widget-1.0.0.tgz") as writer:
        await writer.write(b"upstream copy")
        await writer.commit()
    assert await store.tarball(W, "widget-1.0.0.tgz") is None


# --- tags, deprecations, maintainers, stars


async def test_dist_tags(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "2.0.0")
    fragment = await store.set_dist_tag(W, "old", "1.0.0")
    assert fragment.dist_tags == {"latest": "2.0.0", "old": "1.0.0"} and fragment.rev == 3
    assert (await store.set_dist_tag(W, "old", "1.0.0")).rev == 3  # no change, no new rev
    fragment = await store.set_dist_tag(W, "latest", "1.0.0")
    assert fragment.dist_tags["latest"] == "1.0.0"
    fragment = await store.remove_dist_tag(W, "old")
    assert fragment.dist_tags == {"latest": "1.0.0"}
    with pytest.raises(NotFound):
        await store.remove_dist_tag(W, "old")
    with pytest.raises(InvalidInput):
        await store.remove_dist_tag(W, "latest")
    with pytest.raises(NotFound):
        await store.set_dist_tag(W, "x", "3.0.0")
    with pytest.raises(InvalidInput):
        await store.set_dist_tag(W, "", "1.0.0")
    with pytest.raises(NotFound):
        await store.set_dist_tag(P, "x", "1.0.0")


async def test_deprecations(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.1.0")
    fragment = await store.set_deprecations(W, {"1.0.0": "use 1.1", "9.0.0": "ignored"})
    assert fragment.deprecations == {"1.0.0": "use 1.1"}
    assert fragment.versions["1.0.0"].get("deprecated") is None  # not applied here
    fragment = await store.set_deprecations(W, {"1.0.0": "", "1.1.0": "bad"})
    assert fragment.deprecations == {"1.1.0": "bad"}
    with pytest.raises(InvalidInput):
        await store.set_deprecations(W, {"1.1.0": None})  # type: ignore[dict-item]


async def test_maintainers(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    bob = {"name": "bob", "email": "bob@example.com"}
    fragment = await store.set_maintainers(W, [ALICE, bob])
    assert fragment.maintainers == (ALICE, bob)
    with pytest.raises(InvalidInput):
        await store.set_maintainers(W, [])
    with pytest.raises(InvalidInput):
        await store.set_maintainers(W, [{"email": "x"}])
    # a later publish by someone else does not touch the maintainer list
    await store.publish(W, "1.0.1", manifest(W, "1.0.1", b"x"), b"x", tags={}, user={"name": "carol"})
    latest = await store.fragment(W)
    assert latest is not None and latest.maintainers == (ALICE, bob)


async def test_stars(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    fragment = await store.set_star(W, "bob", True)
    assert fragment.users == {"bob": True} and fragment.rev == 2
    assert (await store.set_star(W, "bob", True)).rev == 2
    fragment = await store.set_star(W, "bob", False)
    assert fragment.users == {} and fragment.rev == 3
    assert (await store.set_star(W, "bob", False)).rev == 3


# --- subscribers


async def test_subscribers_called_before_return(store: PackageStore) -> None:
    events: list[str] = []
    store.subscribe(lambda name: events.append(f"changed {name}"))

    async def step(label: str, op: Any) -> None:
        await op
        events.append(label)

    await step("publish", publish(store, W, "1.0.0"))
    await step("tag", store.set_dist_tag(W, "x", "1.0.0"))
    await step("deprecate", store.set_deprecations(W, {"1.0.0": "no"}))
    await step("owners", store.set_maintainers(W, [ALICE]))  # unchanged: no event
    await step("star", store.set_star(W, "bob", True))
    await step("unpublish", store.unpublish(W, ["1.0.0"]))
    await step("store", store.store_packument(P, b"{}", CacheMeta(fetched_at=1.0)))
    await step("touch", store.touch_packument(P, CacheMeta(fetched_at=2.0)))
    await step("drop", store.drop_cached(P))
    w, p = f"changed {W}", f"changed {P}"
    assert events == [w, "publish", w, "tag", w, "deprecate", "owners", w, "star", w, "unpublish",
                      p, "store", p, "touch", p, "drop"]


async def test_refused_publish_notifies_nobody(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    events: list[str] = []
    store.subscribe(events.append)
    with pytest.raises(AlreadyPublished):
        await publish(store, W, "1.0.0")
    assert events == []


async def test_failing_subscriber_does_not_fail_the_write(store: PackageStore) -> None:
    def broken(name: PackageName) -> None:
        raise RuntimeError("listener bug")

    events: list[str] = []
    store.subscribe(broken)
    store.subscribe(events.append)
    await publish(store, W, "1.0.0")
    assert events == [W]


# --- crash leftovers


async def test_orphan_tarball_is_not_served_and_is_replaced(store: PackageStore) -> None:
    # A publish that crashed after its tarball, before its version file.
    await store.layered.published.put("@acme/widget/widget-1.0.0.tgz", b"torn attempt")
    assert await store.tarball(W, "widget-1.0.0.tgz") is None
    assert await store.fragment(W) is None
    await publish(store, W, "1.0.0")
    ref = await store.tarball(W, "widget-1.0.0.tgz")
    assert ref is not None and await ref.read() == tgz(W, "1.0.0")


async def test_version_file_without_metadata_is_live(store: PackageStore) -> None:
    # A first publish that crashed after its commit point, before the metadata.
    data = tgz(W, "1.0.0")
    pub = store.layered.published
    await pub.put("@acme/widget/widget-1.0.0.tgz", data)
    await pub.put("@acme/widget/versions/1.0.0.json",
                  orjson.dumps({"time": "2026-01-01T00:00:00.000Z", "manifest": manifest(W, "1.0.0", data)}))
    fragment = await store.fragment(W)
    assert fragment is not None and list(fragment.versions) == ["1.0.0"]
    assert fragment.dist_tags == {}  # not invented: compose() picks latest
    assert fragment.created == "2026-01-01T00:00:00.000Z"
    assert fragment.maintainers == (ALICE,)  # from _npmUser
    assert await store.tarball(W, "widget-1.0.0.tgz") is not None
    with pytest.raises(AlreadyPublished):
        await publish(store, W, "1.0.0")
    # the next publish writes the metadata, with a latest
    fragment = await publish(store, W, "1.0.1", tags={})
    assert fragment.dist_tags == {"latest": "1.0.1"} and fragment.maintainers == (ALICE,)
    # a later crash of the same kind: the version is live, the tags stay as they were
    for v in ("1.1.0", "2.0.0-rc.1"):
        data = tgz(W, v)
        await pub.put(f"@acme/widget/widget-{v}.tgz", data)
        await pub.put(f"@acme/widget/versions/{v}.json",
                      orjson.dumps({"time": "2099-01-02T00:00:00.000Z", "manifest": manifest(W, v, data)}))
    fragment = await store.fragment(W)
    assert fragment is not None and list(fragment.versions) == ["1.0.0", "1.0.1", "1.1.0", "2.0.0-rc.1"]
    assert fragment.dist_tags == {"latest": "1.0.1"}
    assert fragment.modified == "2099-01-02T00:00:00.000Z"
    # the next write persists the normalised metadata
    await store.set_star(W, "bob", True)
    meta = orjson.loads(await pub.get("@acme/widget/package-meta.json") or b"")
    assert meta["dist-tags"] == {"latest": "1.0.1"} and meta["maintainers"] == [ALICE]
    assert meta["modified"] > "2099"


async def test_dangling_latest_moves_to_highest_live(store: PackageStore) -> None:
    await publish(store, W, "1.0.0")
    await publish(store, W, "1.1.0", tags={})
    await publish(store, W, "2.0.0-rc.1", tags={})
    meta = orjson.loads(await store.layered.published.get("@acme/widget/package-meta.json") or b"")
    meta["dist-tags"] = {"latest": "9.9.9", "x": "8.8.8", "y": "1.0.0"}  # e.g. an operator's edit
    async with store.layered.published.transaction(W) as txn:
        await txn.replace_meta(orjson.dumps(meta))
    fragment = await store.fragment(W)
    assert fragment is not None and fragment.dist_tags == {"y": "1.0.0", "latest": "1.1.0"}


async def test_publish_without_default_latest(store: PackageStore) -> None:
    # An overlay: the upstream's latest must keep winning unless tagged here.
    data = tgz(P, "4.17.21-acme.1")
    fragment = await store.publish(P, "4.17.21-acme.1", manifest(P, "4.17.21-acme.1", data), data,
                                   tags={"acme": "4.17.21-acme.1"}, user=ALICE, default_latest=False)
    assert fragment.dist_tags == {"acme": "4.17.21-acme.1"}
    fragment = await store.set_star(P, "bob", True)
    assert fragment.dist_tags == {"acme": "4.17.21-acme.1"}
    fragment = await publish(store, P, "4.17.22-acme.1", tags={"latest": "4.17.22-acme.1"})
    assert fragment.dist_tags == {"acme": "4.17.21-acme.1", "latest": "4.17.22-acme.1"}


async def test_publish_with_original_time(store: PackageStore) -> None:
    # An import from another registry keeps each version's publish time;
    # created follows the earliest version, modified is the time of the write.
    data = tgz(P, "2.0.0")
    fragment = await store.publish(P, "2.0.0", manifest(P, "2.0.0", data), data, tags={}, user=ALICE,
                                   published_at=datetime(2021, 7, 8, 18, 2, 46, 251000, tzinfo=timezone.utc))
    assert fragment.times == {"2.0.0": "2021-07-08T18:02:46.251Z"}
    assert fragment.created == "2021-07-08T18:02:46.251Z"
    assert fragment.modified is not None and fragment.modified.startswith("2026-")
    data = tgz(P, "1.0.0")
    fragment = await store.publish(P, "1.0.0", manifest(P, "1.0.0", data), data, tags={}, user=ALICE,
                                   published_at=datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    assert fragment.times == {"1.0.0": "2020-01-02T03:04:05.000Z", "2.0.0": "2021-07-08T18:02:46.251Z"}
    assert fragment.created == "2020-01-02T03:04:05.000Z"
    assert fragment.dist_tags == {"latest": "2.0.0"}
    # A later ordinary publish is stamped now and leaves created alone.
    fragment = await publish(store, P, "3.0.0")
    assert fragment.created == "2020-01-02T03:04:05.000Z"
    assert fragment.times["3.0.0"] == fragment.modified


async def test_open_directories_recovers(tmp_path: Path) -> None:
    store = await PackageStore.open_directories(tmp_path / "pub", tmp_path / "cache")
    await publish(store, W, "1.0.0")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    pkg = tmp_path / "pub" / "@acme" / "widget"
    temp = pkg / "versions" / f".tmp.{proc.pid}.abc.1.0.1.json"
    temp.write_bytes(b"{")
    cache_temp = tmp_path / "cache" / "x" / f".tmp.{proc.pid}.abc.packument.json"
    cache_temp.parent.mkdir(parents=True)
    cache_temp.write_bytes(b"{")
    young, old = pkg / "widget-1.0.1.tgz", pkg / "widget-1.0.2.tgz"
    young.write_bytes(b"orphan")
    old.write_bytes(b"orphan")
    stamp = time.time() - 7200
    os.utime(old, (stamp, stamp))
    os.utime(pkg / "widget-1.0.0.tgz", (stamp, stamp))  # old but committed: kept
    await PackageStore.open_directories(tmp_path / "pub", tmp_path / "cache")
    assert not temp.exists() and not cache_temp.exists()
    assert young.exists() and not old.exists()
    assert (pkg / "widget-1.0.0.tgz").exists()


async def test_open_directories_refuses_nested_roots(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        await PackageStore.open_directories(tmp_path / "s", tmp_path / "s" / "cache")


# --- concurrency


async def test_concurrent_publishes_of_one_version(store: PackageStore) -> None:
    async def attempt(i: int) -> bool:
        try:
            await publish(store, W, "1.0.0", data=f"attempt {i}".encode())
        except AlreadyPublished:
            return False
        return True

    results = await asyncio.gather(*(attempt(i) for i in range(20)))
    assert sum(results) == 1
    winner = results.index(True)
    ref = await store.tarball(W, "widget-1.0.0.tgz")
    assert ref is not None and await ref.read() == f"attempt {winner}".encode()
    fragment = await store.fragment(W)
    assert fragment is not None and fragment.rev == 1


async def test_concurrent_publishes_of_many_versions(store: PackageStore) -> None:
    versions = [f"1.0.{i}" for i in range(20)]
    await asyncio.gather(*(publish(store, W, v, tags={f"t{v}": v}) for v in versions))
    fragment = await store.fragment(W)
    assert fragment is not None
    assert list(fragment.versions) == versions
    assert fragment.rev == 20  # no lost metadata update
    assert {f"t{v}" for v in versions} <= set(fragment.dist_tags)


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HELPER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


async def test_cross_process_publishes_lose_no_update(tmp_path: Path) -> None:
    pub, cache, start = str(tmp_path / "pub"), str(tmp_path / "cache"), str(tmp_path / "go")
    name = "@acme/shared"
    a = [f"1.0.{i}" for i in range(12)]
    b = [f"2.0.{i}" for i in range(12)]
    procs = [
        _spawn([pub, cache, name, "versions", *a, "--tag-prefix", "a", "--start-file", start, "--seed", "1"]),
        _spawn([pub, cache, name, "versions", *b, "--tag-prefix", "b", "--start-file", start, "--seed", "2"]),
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"
        Path(start).touch()
        for proc in procs:
            _, err = await asyncio.to_thread(proc.communicate, timeout=60)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    store = await PackageStore.open_directories(tmp_path / "pub", tmp_path / "cache")
    fragment = await store.fragment(PackageName(name))
    assert fragment is not None
    assert set(fragment.versions) == set(a) | set(b)
    assert fragment.rev == 24  # every metadata update survived
    assert {f"a{i}" for i in range(12)} | {f"b{i}" for i in range(12)} <= set(fragment.dist_tags)
    assert fragment.dist_tags["latest"] in (a[0], b[0])  # set once, by the first publish
    assert len(fragment.maintainers) == 1


# --- tarballs and the cache side


async def test_tarball_falls_back_to_cache(store: PackageStore) -> None:
    assert await store.tarball(P, "plain-1.0.0.tgz") is None
    async with await store.open_cache_tarball(P, "plain-1.0.0.tgz") as writer:
        await writer.write(b"from ")
        await writer.write(b"upstream")
        await writer.commit()
    ref = await store.tarball(P, "plain-1.0.0.tgz")
    assert ref is not None and (ref.layer, ref.size) == ("cache", 13)
    assert await ref.read() == b"from upstream"
    await publish(store, P, "1.0.0")
    ref = await store.tarball(P, "plain-1.0.0.tgz")
    assert ref is not None and ref.layer == "published"  # published shadows cache
    await store.layered.cache.wipe()
    ref = await store.tarball(P, "plain-1.0.0.tgz")
    assert ref is not None and await ref.read() == tgz(P, "1.0.0")


async def test_tarball_read_after_wipe_raises_not_found(store: PackageStore) -> None:
    async with await store.open_cache_tarball(P, "plain-1.0.0.tgz") as writer:
        await writer.write(b"x")
        await writer.commit()
    ref = await store.tarball(P, "plain-1.0.0.tgz")
    assert ref is not None
    await store.drop_cached(P)
    with pytest.raises(NotFound):
        await ref.read()


@pytest.mark.parametrize("filename", ["../x.tgz", "a/b.tgz", "x.json", ".tmp.1.2.x.tgz", ""])
async def test_tarball_filename_validated(store: PackageStore, filename: str) -> None:
    with pytest.raises(InvalidInput):
        await store.tarball(P, filename)
    with pytest.raises(InvalidInput):
        await store.open_cache_tarball(P, filename)


async def test_noncanonical_cached_tarball_name(store: PackageStore) -> None:
    async with await store.open_cache_tarball(P, "other-name-1.0.0.tgz") as writer:
        await writer.write(b"x")
        await writer.commit()
    ref = await store.tarball(P, "other-name-1.0.0.tgz")
    assert ref is not None and ref.layer == "cache"


async def test_cached_packument_roundtrip(store: PackageStore) -> None:
    assert await store.cached_packument(P) is None
    meta = CacheMeta(fetched_at=123.5, etag='"abc"', last_modified="Tue, 01 Jan 2026 00:00:00 GMT")
    await store.store_packument(P, b'{"name":"plain"}', meta)
    cached = await store.cached_packument(P)
    assert cached is not None and cached.body == b'{"name":"plain"}' and cached.meta == meta
    await store.touch_packument(P, CacheMeta(fetched_at=200.0, etag='"abc"'))
    cached = await store.cached_packument(P)
    assert cached is not None and cached.body == b'{"name":"plain"}'
    assert cached.meta == CacheMeta(fetched_at=200.0, etag='"abc"')


async def test_cached_packument_with_mismatched_meta_is_unvalidated(store: PackageStore) -> None:
    await store.store_packument(P, b"old body", CacheMeta(fetched_at=5.0, etag='"old"'))
    # another worker (or a crash) replaced the body but not yet the meta
    await store.layered.cache.put("plain/packument.json", b"new body")
    cached = await store.cached_packument(P)
    assert cached is not None and cached.body == b"new body"
    assert cached.meta == CacheMeta(fetched_at=0.0)
    await store.layered.cache.put("plain/packument.meta", b"not json")
    cached = await store.cached_packument(P)
    assert cached is not None and cached.meta == CacheMeta(fetched_at=0.0)


async def test_touch_without_body_is_a_no_op(store: PackageStore) -> None:
    await store.touch_packument(P, CacheMeta(fetched_at=1.0))
    assert await store.cached_packument(P) is None
    assert await store.layered.cache.keys() == []


async def test_drop_cached(store: PackageStore) -> None:
    await store.store_packument(P, b"{}", CacheMeta(fetched_at=1.0))
    await store.store_packument(PackageName("plainer"), b"{}", CacheMeta(fetched_at=1.0))
    async with await store.open_cache_tarball(P, "plain-1.0.0.tgz") as writer:
        await writer.write(b"x")
        await writer.commit()
    await store.drop_cached(P)
    assert await store.cached_packument(P) is None
    assert await store.tarball(P, "plain-1.0.0.tgz") is None
    assert await store.cached_packument(PackageName("plainer")) is not None


def test_isoformat() -> None:
    assert isoformat(datetime(2026, 11, 25, 17, 3, 4, 123456, tzinfo=timezone.utc)) == "2026-11-25T17:03:04.123Z"
    assert isoformat(datetime(2026, 11, 25, 17, 3, 4)) == "2026-11-25T17:03:04.000Z"
    plus_one = timezone(timedelta(hours=1))
    assert isoformat(datetime(2026, 11, 25, 18, 3, 4, tzinfo=plus_one)) == "2026-11-25T17:03:04.000Z"

