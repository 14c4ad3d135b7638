"""Several workers, in one test process.

Read-your-writes: two apps (two "workers") on the same storage, with the
watcher OFF, so only the shared change counters (overlaystore.changes) can
make one app see the other's writes. Every write is followed at once by a read
on the other app, after that app had the old document in its LRU. Also the
``--workers`` flag and the supervisor's refusals (tests/e2e/test_workers.py
runs the real process tree)."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from overlaystore.errors import OverlayStoreError
from server.__main__ import main
from server.app import make_app
from server.config import ServerConfig
from server.keys import STORE
from server.workers import serve_workers
from tests.npmdata import publish_body

from .conftest import Registry, make_config

CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


async def two_workers(aiohttp_client: Any, tmp_path: Path, workers: int = 2) -> tuple[Registry, Registry]:
    config = make_config(tmp_path, None)
    config = replace(config, server=replace(config.server, workers=workers))
    assert not config.watch.enabled
    one = Registry(await aiohttp_client(make_app(config)), config)
    two = Registry(await aiohttp_client(make_app(config)), config)
    token = await one.adduser("alice")
    two.tokens["alice"] = token
    return one, two


async def versions(reg: Registry, name: str = "foo", accept: str | None = None) -> tuple[set[str], dict[str, str], str]:
    resp = await reg.client.get(f"/{name}", headers={"Accept": accept} if accept else {})
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    return set(doc["versions"]), doc["dist-tags"], resp.headers["X-Overlaystore-Cache"]


async def publish(reg: Registry, version: str, name: str = "foo") -> None:
    resp = await reg.client.put(f"/{name}", json=publish_body(name, version), headers=reg.auth("alice"))
    assert resp.status == 201, await resp.text()


async def test_a_publish_on_one_worker_is_read_on_the_other(aiohttp_client: Any, tmp_path: Path) -> None:
    one, two = await two_workers(aiohttp_client, tmp_path)
    await publish(one, "1.0.0")
    for i in range(1, 6):
        writer, reader = (one, two) if i % 2 else (two, one)
        for accept in (None, CORGI):  # both variants cached on the reader
            await versions(reader, accept=accept)
            assert (await versions(reader, accept=accept))[2] == "hit"
        await publish(writer, f"1.0.{i}")
        for accept in (None, CORGI):
            seen, tags, outcome = await versions(reader, accept=accept)
            assert f"1.0.{i}" in seen and tags["latest"] == f"1.0.{i}" and outcome == "miss"
        manifest = await reader.client.get(f"/foo/1.0.{i}")
        assert manifest.status == 200 and (await manifest.json())["version"] == f"1.0.{i}"
        tarball = await reader.client.get(f"/foo/-/foo-1.0.{i}.tgz")
        assert tarball.status == 200


async def test_tags_deprecations_and_unpublish_cross_workers(aiohttp_client: Any, tmp_path: Path) -> None:
    one, two = await two_workers(aiohttp_client, tmp_path)
    await publish(one, "1.0.0")
    await publish(one, "1.1.0")
    await versions(two)
    resp = await one.client.put("/-/package/foo/dist-tags/stable", json="1.0.0", headers=one.auth("alice"))
    assert resp.status in (200, 201), await resp.text()
    assert (await versions(two))[1]["stable"] == "1.0.0"

    # unpublish of one version, the way npm does it: full doc, then PUT -rev.
    await versions(one)
    doc = await (await two.client.get("/foo?write=true", headers=two.auth("alice"))).json()
    del doc["versions"]["1.1.0"]
    doc["dist-tags"] = {"latest": "1.0.0"}
    resp = await two.client.put(f"/foo/-rev/{doc['_rev']}", json=doc, headers=two.auth("alice"))
    assert resp.status in (200, 201), await resp.text()
    seen, tags, _ = await versions(one)
    assert seen == {"1.0.0"} and tags["latest"] == "1.0.0"


async def test_without_counters_the_other_worker_would_be_stale(aiohttp_client: Any, tmp_path: Path) -> None:
    """The control experiment: one "worker" each (no counters) and no watcher:
    nothing tells the reader, so it keeps its hit. This is the gap the
    counters close (with workers=1 the watcher is what covers it)."""
    one, two = await two_workers(aiohttp_client, tmp_path, workers=1)
    await publish(one, "1.0.0")
    await versions(two)
    await publish(one, "1.0.1")
    seen, _, outcome = await versions(two)
    assert seen == {"1.0.0"} and outcome == "hit"


@pytest.mark.parametrize("workers", [1, 2])
async def test_counters_file_only_with_several_workers(aiohttp_client: Any, tmp_path: Path, workers: int) -> None:
    one, _ = await two_workers(aiohttp_client, tmp_path, workers=workers)
    await publish(one, "1.0.0")
    assert (one.config.storage.published / ".overlaystore" / "changes").exists() == (workers > 1)
    # The hidden directory is no package.
    assert await one.app[STORE].published_names() == ["foo"]
    resp = await one.client.get("/-/v1/search?text=foo")
    assert [o["package"]["name"] for o in (await resp.json())["objects"]] == ["foo"]
    assert ServerConfig().workers == 1


# ------------------------------------------------------------------ the command line


def test_workers_flag_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERLAYSTORE_CONFIG", raising=False)
    (tmp_path / "ovs.toml").write_text("workers = 2\n")
    assert main(["config", "check", "--config", "ovs.toml", "--upstream", "none", "--print"]) == 0
    assert "workers = 2" in capsys.readouterr().out
    # The flag wins over the file.
    assert main(["config", "check", "--config", "ovs.toml", "--upstream", "none", "--workers", "4", "--print"]) == 0
    assert "workers = 4" in capsys.readouterr().out
    assert main(["config", "check", "--upstream", "none", "--workers", "0"]) == 1
    assert "--workers: must be at least 1" in capsys.readouterr().err


def test_several_workers_need_a_free_fixed_port(tmp_path: Path) -> None:
    config = make_config(tmp_path, None)
    with pytest.raises(OverlayStoreError, match="fixed port"):
        serve_workers(replace(config, server=replace(config.server, workers=2, port=0)))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another multi-worker server would
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OverlayStoreError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve_workers(replace(config, server=replace(config.server, workers=2, host="127.0.0.1", port=port)))
