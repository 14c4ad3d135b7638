"""Documents: a composed-view miss re-uses the parsed upstream document, renders
big documents off the event loop, and serves the same bytes as a plain render."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.cache import CacheMeta
from overlaystore.compose import compose
from overlaystore.packages import PackageStore
from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule, ProxyMode
from overlaystore.render import Variant, render
from overlaystore.view import ComposedView
from server import documents as documents_module
from server.config import UpstreamConfig
from server.documents import THREAD_RENDER_VERSIONS, Documents
from server.refresh import UpstreamSource
from tests.server.conftest import ParseCount

URL = "http://registry.test"


def upstream_doc(name: str, count: int) -> dict[str, Any]:
    versions = [f"1.0.{i}" for i in range(count)]
    return {
        "name": name,
        "_rev": "1-a",
        "dist-tags": {"latest": versions[-1]},
        "versions": {v: {"name": name, "version": v, "scripts": {"install": "x"},
                         "dist": {"tarball": f"https://up.invalid/{name}/-/{name}-{v}.tgz", "shasum": "0" * 40}}
                     for v in versions},
        "time": {v: "2020-01-01T00:00:00.000Z" for v in versions},
    }


async def make(tmp_path: Path) -> tuple[Documents, PackageStore, ComposedView, UpstreamSource]:
    store = await PackageStore.open_directories(tmp_path / "published", tmp_path / "cache")
    view = ComposedView()
    source = UpstreamSource(store, None, UpstreamConfig(url=None))
    policy = NamePolicy(rules=(PackageRule(pattern="big", proxy=ProxyMode.OVERLAY), DEFAULT_RULE))
    return Documents(store, view, source, policy), store, view, source


async def test_a_miss_after_invalidation_does_not_parse_again(tmp_path: Path, parses: ParseCount) -> None:
    docs, store, view, source = await make(tmp_path)
    up = upstream_doc("big", 150)
    await store.store_packument(PackageName("big"), orjson.dumps(up), CacheMeta(fetched_at=0.0))
    first, _ = await docs.rendered(PackageName("big"), Variant.FULL, URL)
    view.invalidate("big")
    again, _ = await docs.rendered(PackageName("big"), Variant.FULL, URL)
    abbreviated, _ = await docs.rendered(PackageName("big"), Variant.ABBREVIATED, URL)
    assert parses.calls == 1 and source.parsed_cache.stats.hits == 2
    plain = compose(PackageName("big"), None, up)
    assert first == again == render(plain, Variant.FULL, URL)
    assert abbreviated == render(plain, Variant.ABBREVIATED, URL)
    assert orjson.loads(first.body)["versions"]["1.0.3"]["dist"]["tarball"] == f"{URL}/big/-/big-1.0.3.tgz"


@pytest.mark.parametrize("count, threaded", [(THREAD_RENDER_VERSIONS, True), (THREAD_RENDER_VERSIONS - 1, False)])
async def test_big_documents_render_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int, threaded: bool
) -> None:
    docs, store, _, _ = await make(tmp_path)
    await store.store_packument(PackageName("big"), orjson.dumps(upstream_doc("big", count)), CacheMeta(fetched_at=0.0))
    renders_in_thread = 0
    real = asyncio.to_thread

    async def spy(func: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal renders_in_thread
        if func is documents_module.render:
            renders_in_thread += 1
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(documents_module.asyncio, "to_thread", spy)
    rendered, _ = await docs.rendered(PackageName("big"), Variant.FULL, URL)
    assert len(orjson.loads(rendered.body)["versions"]) == count
    assert renders_in_thread == (1 if threaded else 0)


async def test_published_data_is_read_again_only_when_the_name_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, store, view, source = await make(tmp_path)
    store.subscribe(view.invalidate)
    await store.store_packument(PackageName("big"), orjson.dumps(upstream_doc("big", 3)), CacheMeta(fetched_at=0.0))
    reads = 0
    real_fragment = store.fragment

    async def counting(name: PackageName) -> Any:
        nonlocal reads
        reads += 1
        return await real_fragment(name)

    monkeypatch.setattr(store, "fragment", counting)
    await docs.composed(PackageName("big"))
    assert reads == 1  # nothing changed during the upstream read
    real_packument = source.packument

    async def publishing(name: PackageName) -> Any:
        doc = await real_packument(name)
        await store.publish(name, "9.0.0", {"name": "big", "version": "9.0.0"}, b"tgz",
                            tags={}, user={"name": "alice"}, default_latest=False)
        return doc

    monkeypatch.setattr(source, "packument", publishing)
    reads = 0
    composed = await docs.composed(PackageName("big"))
    assert reads == 2 and "9.0.0" in composed.doc["versions"]
