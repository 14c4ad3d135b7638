"""``overlaystore import verdaccio``: the Verdaccio fixtures
(:mod:`tests.fixtures.verdaccio_builder`) split into a published store and a
cache: exactly the expected published versions, byte-identical, with their
times, tags, deprecations and maintainers; proxied data in the cache or
dropped; dry runs that write nothing; idempotence; an untouched source; and
the result served by the registry."""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.errors import InvalidInput
from overlaystore.names import tarball_filename
from overlaystore.packages import PackageStore
from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule, ProxyMode
from overlaystore.store_marker import MARKER
from server.__main__ import main
from server.app import make_app
from server.migrate_verdaccio import ImportReport, import_verdaccio
from server.verdaccio_storage import open_storage, read_package
from tests.fixtures.verdaccio_builder import FETCHED_MS, VerdaccioTree, build

from .conftest import make_config

OVERLAY_LODASH = NamePolicy(rules=(PackageRule("lodash", proxy=ProxyMode.OVERLAY), DEFAULT_RULE))


@pytest.fixture
def tree(tmp_path: Path) -> VerdaccioTree:
    return build(tmp_path / "verdaccio")


def tree_state(root: Path) -> dict[str, Any]:
    """Every entry under ``root``: bytes digest and mtime of files, mtime of directories."""
    state: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            path = Path(dirpath, name)
            state[str(path.relative_to(root)) + "/"] = path.stat().st_mtime_ns
        for name in filenames:
            path = Path(dirpath, name)
            state[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  path.stat().st_mtime_ns)
    return state


async def run_import(tree: VerdaccioTree, dest: Path, **kwargs: Any) -> ImportReport:
    kwargs.setdefault("htpasswd", tree.htpasswd)
    return await import_verdaccio(
        tree.storage, published_root=dest / "published", cache_root=dest / "cache",
        users_file=dest / "auth" / "htpasswd", **kwargs,
    )


async def open_store(dest: Path) -> PackageStore:
    return await PackageStore.open_directories(dest / "published", dest / "cache")


# ------------------------------------------------------------------ reading the format


def test_versions_are_classified_as_verdaccio_wrote_them(tree: VerdaccioTree) -> None:
    storage = open_storage(tree.storage)
    origins = {}
    for name, directory in storage.package_dirs:
        pkg = read_package(storage, name, directory)
        origins[name] = {v.version: v.origin for v in pkg.versions}
    assert origins == {
        "@acme/gadget": {"0.1.0": "published", "0.2.0": "published", "0.3.0-rc.1": "published"},
        "@acme/widget": {"1.0.0": "published", "1.0.1": "published"},
        "is-number": {"6.0.0": "proxied", "7.0.0": "proxied"},
        "left-pad": {"1.2.0": "proxied", "1.3.0": "proxied"},
        "local-only": {"1.0.0": "published", "1.1.0": "published", "2.0.0-beta.1": "published"},
        "lodash": {"4.17.20": "proxied", "4.17.21": "proxied", "4.17.21-acme.1": "published"},
    }


# ------------------------------------------------------------------ what goes where


async def test_import_yields_exactly_the_published_versions(tree: VerdaccioTree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    report = await run_import(tree, dest)
    assert report.ok, report.render()
    exp = tree.expected
    store = await open_store(dest)
    assert await store.published_names() == sorted(exp.published)
    for name, versions in exp.published.items():
        fragment = await store.fragment(PackageName(name))
        assert fragment is not None
        assert set(fragment.versions) == set(versions), name
        assert dict(fragment.times) == {v: when for v, (_, when) in versions.items()}, name
        assert dict(fragment.dist_tags) == exp.published_tags[name], name
        assert dict(fragment.deprecations) == exp.deprecations[name], name
        assert [dict(m) for m in fragment.maintainers] == exp.maintainers[name], name
        assert fragment.created == min(when for _, when in versions.values())
        for version, (data, _) in versions.items():
            stored = dest / "published" / name / tarball_filename(PackageName(name), version)
            assert stored.read_bytes() == data, f"{name}@{version}"
            assert "deprecated" not in fragment.versions[version]
    # Nothing else landed in the published store: every file belongs to an
    # expected version (or is the store's marker).
    files = {str(p.relative_to(dest / "published")) for p in (dest / "published").rglob("*")
             if p.is_file() and ".locks" not in p.parts}
    wanted = {MARKER}
    for name, versions in exp.published.items():
        wanted.add(f"{name}/package-meta.json")
        for version in versions:
            wanted |= {f"{name}/versions/{version}.json", f"{name}/{tarball_filename(PackageName(name), version)}"}
    assert files == wanted
    local = await store.fragment(PackageName("local-only"))
    assert local is not None and dict(local.users) == {"bob": True}
    # Verdaccio moved the readme of the last publish to the top level; it goes back there.
    assert local.versions["2.0.0-beta.1"]["readme"] == "# local-only\n\nThe beta readme.\n"
    assert "readme" not in local.versions["1.1.0"]


async def test_proxied_versions_go_to_the_cache(tree: VerdaccioTree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    await run_import(tree, dest)
    store = await open_store(dest)
    exp = tree.expected
    assert sorted(await store.layered.cache.names()) == sorted(exp.cached_versions)
    for name, versions in exp.cached_versions.items():
        cached = await store.cached_packument(PackageName(name))
        assert cached is not None, name
        doc = orjson.loads(cached.body)
        assert set(doc["versions"]) == versions, name
        assert doc["dist-tags"] == exp.cached_tags[name]
        assert set(doc["time"]) == versions | {"created", "modified"}
        assert cached.meta.fetched_at == FETCHED_MS / 1000 and cached.meta.etag is None
        for version, data in exp.cached_tarballs[name].items():
            path = dest / "cache" / name / tarball_filename(PackageName(name), version)
            assert path.read_bytes() == data
        tarballs = {p.name for p in (dest / "cache" / name).glob("*.tgz")}
        assert tarballs == {tarball_filename(PackageName(name), v) for v in exp.cached_tarballs[name]}
    lodash = orjson.loads((await store.cached_packument(PackageName("lodash"))).body)  # type: ignore[union-attr]
    # The upstream's deprecation stays in its manifest; the published version is not in the upstream copy.
    assert lodash["versions"]["4.17.20"]["deprecated"] == "upstream deprecation"


async def test_drop_cache_writes_nothing_to_the_cache(tree: VerdaccioTree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    report = await run_import(tree, dest, drop_cache=True)
    assert report.ok
    assert not [p for p in (dest / "cache").rglob("*")
                if p.is_file() and ".locks" not in p.parts and p.name != MARKER]
    dropped = {p.name: set(p.dropped) for p in report.packages if p.dropped}
    assert dropped == tree.expected.cached_versions
    store = await open_store(dest)
    assert await store.published_names() == sorted(tree.expected.published)


async def test_dry_run_writes_nothing_and_reports_what_goes_where(tree: VerdaccioTree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    report = await run_import(tree, dest, dry_run=True)
    assert not dest.exists()
    by_name = {p.name: p for p in report.packages}
    for name, versions in tree.expected.published.items():
        assert set(by_name[name].published) == set(versions)
    for name, versions in tree.expected.cached_versions.items():
        assert set(by_name[name].cached) == versions
    assert by_name["lodash"].overlay_rule_needed
    assert report.users is not None and sorted(report.users.added) == ["alice", "bob", "carol"]
    text = report.render()
    assert "dry run: nothing written" in text
    assert "lodash: would publish 4.17.21-acme.1; would cache 2 upstream version(s); would cache 1 tarball(s)" in text
    assert 'pattern = "lodash" proxy = "overlay"' in text
    # A dry run against an existing store reports without writing either.
    await run_import(tree, dest)
    before = tree_state(dest)
    again = await run_import(tree, dest, dry_run=True)
    assert tree_state(dest) == before
    assert not any(p.published or p.cached for p in again.packages)


async def test_second_run_changes_nothing(tree: VerdaccioTree, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    first = await run_import(tree, dest)
    assert first.changed
    before = tree_state(dest)
    second = await run_import(tree, dest)
    assert tree_state(dest) == before
    assert second.ok and not second.changed
    for result in second.packages:
        assert not result.published and not result.cached and not result.cache_tarballs
        assert set(result.already) == set(tree.expected.published.get(result.name, {}))
    assert second.users is not None and not second.users.added and len(second.users.present) == 3
    assert "already imported: nothing changed" in second.render()


async def test_a_version_published_with_other_bytes_is_a_conflict_left_alone(
    tree: VerdaccioTree, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    store = await open_store(dest)
    other = b"someone else's 1.0.0"
    digest = "sha512-" + base64.b64encode(hashlib.sha512(other).digest()).decode()
    await store.publish(PackageName("local-only"), "1.0.0",
                        {"name": "local-only", "version": "1.0.0", "dist": {"integrity": digest}},
                        other, tags={"latest": "1.0.0"}, user={"name": "zed"})
    report = await run_import(tree, dest)
    local = next(p for p in report.packages if p.name == "local-only")
    assert [c.split(":")[0] for c in local.conflicts] == ["1.0.0"]
    assert set(local.published) == {"1.1.0", "2.0.0-beta.1"}
    assert not report.ok
    path = dest / "published" / "local-only" / "local-only-1.0.0.tgz"
    assert path.read_bytes() == other
    fragment = await store.fragment(PackageName("local-only"))
    assert fragment is not None
    # The store's own metadata was not rewritten: no deprecation of someone else's 1.0.0.
    assert dict(fragment.deprecations) == {}
    assert [dict(m) for m in fragment.maintainers] == [{"name": "zed"}]


async def test_an_unverifiable_tarball_is_reported_not_imported(tmp_path: Path) -> None:
    tree = build(tmp_path / "verdaccio", broken=True)
    dest = tmp_path / "dest"
    report = await run_import(tree, dest)
    broken = next(p for p in report.packages if p.name == "broken")
    assert broken.published == ["1.0.0"]
    assert [s.split(":")[0] for s in broken.skipped] == ["1.0.1"] and "integrity" in broken.skipped[0]
    assert not report.ok
    fragment = await (await open_store(dest)).fragment(PackageName("broken"))
    assert fragment is not None and set(fragment.versions) == {"1.0.0"}
    assert dict(fragment.dist_tags) == {"latest": "1.0.0"}


async def test_the_source_is_never_modified(tree: VerdaccioTree, tmp_path: Path) -> None:
    before = tree_state(tree.home)
    dest = tmp_path / "dest"
    await run_import(tree, dest, dry_run=True)
    await run_import(tree, dest)
    await run_import(tree, dest)
    await run_import(tree, tmp_path / "other", drop_cache=True)
    assert tree_state(tree.home) == before


async def test_destinations_inside_the_source_are_refused(tree: VerdaccioTree) -> None:
    before = tree_state(tree.home)
    # Verdaccio's default storage is ./storage, overlaystore's ./storage/published.
    with pytest.raises(InvalidInput, match="overlap"):
        await run_import(tree, tree.storage)
    with pytest.raises(InvalidInput, match="overlap"):
        await import_verdaccio(tree.storage, published_root=tree.home.parent / "p", cache_root=tree.home.parent / "c",
                               users_file=tree.storage / "auth" / "htpasswd")
    assert tree_state(tree.home) == before


async def test_users_are_merged_and_conflicts_left_alone(tree: VerdaccioTree, tmp_path: Path) -> None:
    users = tmp_path / "dest" / "auth" / "htpasswd"
    users.parent.mkdir(parents=True)
    users.write_text("alice:$2b$04$someotherhashsomeotherhashsomeotherhashsomeotherhash12:\ndave:{SHA}x=\n")
    report = await run_import(tree, tmp_path / "dest")
    assert report.users is not None
    assert sorted(report.users.added) == ["bob", "carol"]
    assert [c.split(":")[0] for c in report.users.conflicts] == ["alice"]
    text = users.read_text()
    assert "alice:$2b$04$someotherhash" in text and "dave:{SHA}x=" in text
    assert "bob:$2a$04$" in text and "carol:{SHA}" in text and "autocreated 2023-10-02" in text


# ------------------------------------------------------------------ served by the registry


async def test_the_imported_store_is_served(tree: VerdaccioTree, tmp_path: Path, aiohttp_client: Any) -> None:
    config = make_config(tmp_path / "registry", None)
    await import_verdaccio(tree.storage, published_root=config.storage.published, cache_root=config.storage.cache,
                           users_file=config.auth.htpasswd, htpasswd=tree.htpasswd)
    client = await aiohttp_client(make_app(config))
    exp = tree.expected

    resp = await client.get("/local-only")
    assert resp.status == 200
    doc = await resp.json()
    assert set(doc["versions"]) == set(exp.published["local-only"])
    assert doc["dist-tags"] == {"latest": "1.1.0", "next": "2.0.0-beta.1"}
    assert doc["versions"]["1.0.0"]["deprecated"] == "please upgrade to 1.1.0"
    assert doc["time"]["1.1.0"] == exp.published["local-only"]["1.1.0"][1]
    resp = await client.get("/@acme/widget/-/widget-1.0.1.tgz")
    assert resp.status == 200 and await resp.read() == exp.published["@acme/widget"]["1.0.1"][0]

    # No overlay rule: the mixed package is private, published versions only.
    doc = await (await client.get("/lodash")).json()
    assert set(doc["versions"]) == {"4.17.21-acme.1"}

    # Proxied packages come from the cache (no upstream configured here).
    doc = await (await client.get("/left-pad")).json()
    assert set(doc["versions"]) == {"1.2.0", "1.3.0"}
    resp = await client.get("/left-pad/-/left-pad-1.3.0.tgz")
    assert resp.status == 200 and await resp.read() == exp.cached_tarballs["left-pad"]["1.3.0"]

    # Verdaccio's users log in with their passwords ($2y$ bcrypt, {SHA}).
    for user in ("alice", "carol"):
        raw = base64.b64encode(f"{user}:{exp.users[user]}".encode()).decode()
        resp = await client.get("/-/whoami", headers={"Authorization": f"Basic {raw}"})
        assert resp.status == 200 and (await resp.json())["username"] == user


async def test_the_mixed_package_needs_an_overlay_rule(tree: VerdaccioTree, tmp_path: Path, aiohttp_client: Any) -> None:
    config = replace(make_config(tmp_path / "registry", None), policy=OVERLAY_LODASH)
    report = await import_verdaccio(tree.storage, published_root=config.storage.published,
                                    cache_root=config.storage.cache, users_file=config.auth.htpasswd,
                                    policy=config.policy)
    assert not next(p for p in report.packages if p.name == "lodash").overlay_rule_needed
    client = await aiohttp_client(make_app(config))
    doc = await (await client.get("/lodash")).json()
    assert set(doc["versions"]) == {"4.17.20", "4.17.21", "4.17.21-acme.1"}
    assert doc["dist-tags"] == {"latest": "4.17.21", "acme": "4.17.21-acme.1"}
    assert doc["versions"]["4.17.20"]["deprecated"] == "upstream deprecation"
    resp = await client.get("/lodash/-/lodash-4.17.21-acme.1.tgz")
    assert resp.status == 200 and await resp.read() == tree.expected.published["lodash"]["4.17.21-acme.1"][0]
    resp = await client.get("/lodash/-/lodash-4.17.21.tgz")
    assert resp.status == 200 and await resp.read() == tree.expected.cached_tarballs["lodash"]["4.17.21"]


# ------------------------------------------------------------------ the command


def test_command_line(tree: VerdaccioTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    for key in list(os.environ):
        if key.startswith("OVERLAYSTORE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    flags = ["--published-storage", "out/published", "--cache-storage", "out/cache"]
    args = ["import", "verdaccio", str(tree.storage), "--htpasswd", str(tree.htpasswd), *flags]
    assert main([*args, "--dry-run"]) == 0
    assert "would publish" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "local-only: published 1.0.0, 1.1.0, 2.0.0-beta.1" in out
    assert "users from" in out and (tmp_path / "out" / "auth" / "htpasswd").is_file()
    assert main(args) == 0
    assert "already imported: nothing changed" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["changed"] is False
    assert main(["import", "verdaccio", str(tmp_path / "nowhere"), *flags]) == 1
    assert "not a directory" in capsys.readouterr().err
