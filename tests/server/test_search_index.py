"""The search index (server/search_index.py): summaries kept between
searches, dropped on every kind of change the composed view hears of."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overlaystore._types import PackageName
from overlaystore.packages import PackageStore
from server.app import make_app
from server.keys import SEARCH, STORE
from server.search_index import SearchIndex
from tests.npmdata import publish_body

from .conftest import Registry, make_config


class CountingStore:
    """Counts the packages a search reads (PackageStore.fragment calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        original = PackageStore.fragment

        async def fragment(store: PackageStore, name: PackageName) -> Any:
            self.reads.append(name)
            return await original(store, name)

        monkeypatch.setattr(PackageStore, "fragment", fragment)


def body(name: str, version: str, description: str) -> dict[str, Any]:
    doc = publish_body(name, version)
    doc["versions"][version]["description"] = description
    return doc


async def publish(reg: Registry, name: str, version: str, description: str = "") -> None:
    resp = await reg.client.put(f"/{name}", json=body(name, version, description or f"{name} for tests"),
                                headers=reg.auth("alice"))
    assert resp.status == 201, await resp.text()


async def names_found(reg: Registry, text: str) -> list[str]:
    resp = await reg.client.get(f"/-/v1/search?text={text}")
    assert resp.status == 200
    return [o["package"]["name"] for o in (await resp.json())["objects"]]


async def test_a_repeated_search_reads_no_package_and_a_publish_rereads_one(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(5):
        await publish(registry, f"pkg-{index}", "1.0.0")
    counting = CountingStore(monkeypatch)
    assert await names_found(registry, "pkg") == [f"pkg-{i}" for i in range(5)]
    assert len(counting.reads) == 5
    counting.reads.clear()
    assert await names_found(registry, "pkg-3") == ["pkg-3"]
    assert counting.reads == []
    await publish(registry, "pkg-2", "2.0.0", "now with wings")
    assert await names_found(registry, "wings") == ["pkg-2"]
    assert counting.reads == ["pkg-2"]


async def test_another_workers_publish_is_found_at_once(aiohttp_client: Any, tmp_path: Path) -> None:
    # Two apps on one storage with the watcher off: only the shared change
    # counters can tell the second app's index that a package changed.
    config = make_config(tmp_path, None)
    config = replace(config, server=replace(config.server, workers=2))
    one = Registry(await aiohttp_client(make_app(config)), config)
    two = Registry(await aiohttp_client(make_app(config)), config)
    two.tokens["alice"] = await one.adduser("alice")
    await publish(one, "foo", "1.0.0", "alpha")
    assert await names_found(two, "alpha") == ["foo"]  # a new name: the listing finds it
    assert len(two.app[SEARCH]) == 1
    await publish(one, "foo", "1.1.0", "beta")
    assert await names_found(two, "beta") == ["foo"]
    assert await names_found(two, "alpha") == []


@pytest.mark.parametrize(("invalidated", "kept"), [
    ("racy", False),  # a publish of that very name landed while it was read: it may predate it
    ("left-pad", True),  # another name (a cached upstream packument refreshed meanwhile)
])
async def test_a_summary_read_during_an_invalidation_of_its_name_is_not_kept(
    registry: Registry, invalidated: str, kept: bool
) -> None:
    await publish(registry, "racy", "1.0.0")
    store = registry.app[STORE]
    index = SearchIndex(store)
    original = store.fragment

    async def fragment_then_write(name: PackageName) -> Any:
        found = await original(name)
        index.invalidate(PackageName(invalidated))
        return found

    store.fragment = fragment_then_write  # type: ignore[method-assign]
    try:
        summaries = dict(await index.summaries())
    finally:
        del store.fragment
    assert summaries[PackageName("racy")].matches(["racy"])  # used for this search either way
    assert len(index) == (1 if kept else 0)
    await index.summaries()
    assert len(index) == 1


async def test_unpublished_and_removed_packages_leave_the_index(registry: Registry) -> None:
    await publish(registry, "short-lived", "1.0.0")
    await publish(registry, "stays", "1.0.0")
    assert await names_found(registry, "s") == ["short-lived", "stays"]
    resp = await registry.client.delete("/short-lived/-rev/1-0", headers=registry.auth("alice"))
    assert resp.status == 200, await resp.text()
    assert await names_found(registry, "s") == ["stays"]
    assert len(registry.app[SEARCH]) == 2  # its summary: no live latest
