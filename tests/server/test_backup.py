"""``overlaystore backup`` / ``restore`` (:mod:`overlaystore.backup`): byte-identical
round trips of the published store and the user/token files, consistent
snapshots while other processes publish, refusal of non-empty targets and of
damaged archives, and a running server picking restored packages up."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.backup import (
    MANIFEST_NAME,
    BackupError,
    ExtraFile,
    StoreNotEmpty,
    create_backup,
    restore_backup,
    verify_backup,
)
from overlaystore.cache import CacheMeta
from overlaystore.store_marker import MARKER
from overlaystore.disk import FileBackend
from overlaystore.errors import Conflict
from overlaystore.packages import PackageStore
from overlaystore.published import PublishedLayer
from server.__main__ import main
from server.app import make_app
from server.auth import Authenticator
from server.config import AuthConfig, WatchConfig
from server.recovery_cli import auth_extras

from .conftest import make_config

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "publish_loop.py"
ALICE = {"name": "alice", "email": "alice@example.com"}


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


async def publish(store: PackageStore, name: str, version: str, tags: dict[str, str] | None = None) -> bytes:
    data = f"{name}@{version}".encode() * 50 + os.urandom(64)
    manifest = {"name": name, "version": version, "dist": {"integrity": integrity(data)}}
    await store.publish(PackageName(name), version, manifest, data,
                        tags={"latest": version} if tags is None else tags, user=ALICE)
    return data


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but lock files and the store marker (which
    the next open writes, not a restore), by relative path."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".locks" not in p.parts and not p.name.endswith(".lock") and p.name != MARKER
    }


def auth_config(root: Path) -> AuthConfig:
    return AuthConfig(htpasswd=root / "auth" / "htpasswd", tokens=root / "auth" / "tokens.json", bcrypt_rounds=4)


async def populated(root: Path) -> PackageStore:
    """A store with scoped and unscoped packages, tags, a deprecation, a
    tombstone, stars and maintainers; plus a user with a token."""
    store = await PackageStore.open_directories(root / "published", root / "cache")
    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        await publish(store, "@acme/widget", version, tags={"next": version} if "rc" in version else None)
    await store.set_deprecations(PackageName("@acme/widget"), {"1.0.0": "use 1.1"})
    await publish(store, "plain", "0.1.0")
    await publish(store, "plain", "0.2.0")
    await store.unpublish(PackageName("plain"), ["0.2.0"])
    await store.set_star(PackageName("plain"), "bob", True)
    await publish(store, "lodash", "4.17.21-acme.1", tags={"acme": "4.17.21-acme.1"})
    await store.store_packument(PackageName("lodash"), b'{"name":"lodash"}', CacheMeta(fetched_at=1.0))
    auth = Authenticator(auth_config(root))
    identity = await auth.add_user("alice", "alice-password", "alice@example.com")
    await auth.create_token(identity, name="ci")
    return store


def layer(root: Path) -> PublishedLayer:
    return PublishedLayer(FileBackend(root / "published"))


# ------------------------------------------------------------------ round trip


async def test_backup_wipe_restore_round_trips_byte_identically(tmp_path: Path) -> None:
    root = tmp_path / "store"
    await populated(root)
    published_before = files_of(root / "published")
    auth_before = files_of(root / "auth")
    assert len(published_before) > 10 and set(auth_before) == {"htpasswd", "tokens.json"}
    archive = tmp_path / "backup.tar.gz"
    report = await create_backup(layer(root), archive, extras=auth_extras(auth_config(root)))
    assert report.packages == 3 and report.files == len(published_before) + 2 and report.orphans == 0
    assert report.extras == ("auth/htpasswd", "auth/tokens.json")

    shutil.rmtree(root / "published")
    shutil.rmtree(root / "auth")
    cache_before = files_of(root / "cache")
    restored = await restore_backup(archive, layer(root), extras=auth_extras(auth_config(root)))
    assert restored.files == report.files and restored.packages == 3
    assert files_of(root / "published") == published_before
    assert files_of(root / "auth") == auth_before
    assert files_of(root / "cache") == cache_before  # never touched
    assert (root / "auth" / "tokens.json").stat().st_mode & 0o777 == 0o600

    # The restored store works: reads, and the write-once rules still hold.
    store = await PackageStore.open_directories(root / "published", root / "cache")
    assert json.loads((root / "published" / MARKER).read_text()) == {"store": "published", "format": 1}
    fragment = await store.fragment(PackageName("plain"))
    assert fragment is not None and set(fragment.versions) == {"0.1.0"} and "0.2.0" in fragment.unpublished
    auth = Authenticator(auth_config(root))
    assert (await auth.login("alice", "alice-password", remote=None)).name == "alice"


async def test_manifest_lists_every_file_with_its_digest(tmp_path: Path) -> None:
    root = tmp_path / "store"
    await populated(root)
    archive = tmp_path / "b.tar.gz"
    await create_backup(layer(root), archive)
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        assert names[-1] == MANIFEST_NAME
        manifest = orjson.loads(tar.extractfile(MANIFEST_NAME).read())  # type: ignore[union-attr]
        members = {n: tar.extractfile(n).read() for n in names[:-1]}  # type: ignore[union-attr]
    assert manifest["format"] == "overlaystore-backup" and manifest["version"] == 1
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        n: hashlib.sha256(data).hexdigest() for n, data in members.items()
    }
    # Publish order inside each package: tarballs, version files, metadata last.
    widget = [n for n in names if n.startswith("published/@acme/widget/")]
    assert widget[-1].endswith("package-meta.json") and widget[0].endswith(".tgz")
    assert verify_backup(archive).packages == 3


async def test_backup_never_overwrites(tmp_path: Path) -> None:
    root = tmp_path / "store"
    await populated(root)
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(b"precious")
    with pytest.raises(Conflict):
        await create_backup(layer(root), archive)
    assert archive.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


# ------------------------------------------------------------------ consistency under load


def snapshot(archive: Path) -> dict[str, bytes]:
    verify_backup(archive)
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name[len("published/"):]: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar if m.name.startswith("published/")}


def check_consistent(files: dict[str, bytes]) -> dict[str, int]:
    """Every version complete and integrity-valid, the metadata naming only
    versions in the snapshot, no stray tarball. Returns versions per package."""
    counts: dict[str, int] = {}
    packages = {k.rsplit("/versions/", 1)[0] for k in files if "/versions/" in k}
    packages |= {k[: -len("/package-meta.json")] for k in files if k.endswith("/package-meta.json")}
    for name in packages:
        base = name.rpartition("/")[2]
        versions = {k[len(f"{name}/versions/"):-len(".json")] for k in files if k.startswith(f"{name}/versions/")}
        for version in versions:
            doc = orjson.loads(files[f"{name}/versions/{version}.json"])
            tarball = files.get(f"{name}/{base}-{version}.tgz")
            assert tarball is not None, f"{name}@{version} without its tarball"
            assert doc["manifest"]["dist"]["integrity"] == integrity(tarball), f"{name}@{version} torn"
        tarballs = {k for k in files if k.startswith(f"{name}/") and k.endswith(".tgz")}
        assert tarballs == {f"{name}/{base}-{v}.tgz" for v in versions}, "a tarball without its version"
        meta = orjson.loads(files[f"{name}/package-meta.json"])
        assert set(meta["dist-tags"].values()) <= versions, "metadata names a version not in the snapshot"
        assert meta["dist-tags"]["latest"] in versions
        counts[name] = len(versions)
    return counts


async def test_backup_while_other_processes_publish_is_consistent(tmp_path: Path) -> None:
    pub, cache, go = tmp_path / "published", tmp_path / "cache", tmp_path / "go"
    versions = [f"1.0.{i}" for i in range(40)]
    procs = [
        subprocess.Popen([sys.executable, str(HELPER), str(pub), str(cache), name, "versions", *versions,
                          "--tag-prefix", prefix, "--start-file", str(go), "--seed", str(seed)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed, (name, prefix) in enumerate([("@acme/busy", "a"), ("busy", "b")])
    ]
    counts: list[dict[str, int]] = []
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.to_thread(proc.stdout.readline)).strip() == "ready"
        go.touch()
        deadline = time.monotonic() + 30
        while any(proc.poll() is None for proc in procs):
            assert time.monotonic() < deadline, "the publishers did not finish"
            archive = tmp_path / f"b{len(counts)}.tar.gz"
            await create_backup(PublishedLayer(FileBackend(pub)), archive)
            counts.append(check_consistent(await asyncio.to_thread(snapshot, archive)))
    finally:
        for proc in procs:
            proc.kill()
            await asyncio.to_thread(proc.communicate)
    assert all(proc.returncode == 0 for proc in procs)
    # Snapshots were taken while the publishers were half-way.
    assert any(0 < sum(c.values()) < 2 * len(versions) for c in counts), counts
    archive = tmp_path / "final.tar.gz"
    await create_backup(PublishedLayer(FileBackend(pub)), archive)
    assert check_consistent(await asyncio.to_thread(snapshot, archive)) == {"@acme/busy": 40, "busy": 40}


async def test_backup_during_in_process_publishes_is_consistent(tmp_path: Path) -> None:
    store = await PackageStore.open_directories(tmp_path / "published", tmp_path / "cache")
    stop = asyncio.Event()

    async def publisher(name: str) -> None:
        k = 0
        while not stop.is_set():
            await publish(store, name, f"1.0.{k}")
            k += 1

    tasks = [asyncio.create_task(publisher(n)) for n in ("@acme/x", "y", "z")]
    try:
        for i in range(3):
            await asyncio.sleep(0.05)
            archive = tmp_path / f"b{i}.tar.gz"
            await create_backup(PublishedLayer(FileBackend(tmp_path / "published")), archive)
            check_consistent(await asyncio.to_thread(snapshot, archive))
    finally:
        stop.set()
        await asyncio.gather(*tasks)


# ------------------------------------------------------------------ refusals


async def test_restore_refuses_a_non_empty_store(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await populated(source)
    archive = tmp_path / "b.tar.gz"
    await create_backup(layer(source), archive, extras=auth_extras(auth_config(source)))

    target = tmp_path / "target"
    store = await PackageStore.open_directories(target / "published", target / "cache")
    await publish(store, "already-here", "1.0.0")
    before = files_of(target)
    with pytest.raises(StoreNotEmpty, match="not empty"):
        await restore_backup(archive, layer(target), extras=auth_extras(auth_config(target)))
    assert files_of(target) == before

    # An empty store but existing users: refused too, unless the users are left out.
    other = tmp_path / "other"
    await Authenticator(auth_config(other)).add_user("zed", "zed-password", None)
    before = files_of(other)
    with pytest.raises(StoreNotEmpty, match="auth/htpasswd"):
        await restore_backup(archive, layer(other), extras=auth_extras(auth_config(other)))
    assert files_of(other) == before
    report = await restore_backup(archive, layer(other))
    assert report.extras == () and report.packages == 3
    assert files_of(other / "auth") == {k.removeprefix("auth/"): v for k, v in before.items()}


def _rewrite(archive: Path, target: Path, change: Any) -> None:
    """Copy ``archive`` to ``target`` with ``change(name, data)`` applied to
    each member (None drops it; a list adds members)."""
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(target, "w:gz") as out:
        for name, data in members:
            for new_name, new_data in change(name, data) or []:
                info = tarfile.TarInfo(new_name)
                info.size = len(new_data)
                out.addfile(info, io.BytesIO(new_data))


async def test_damaged_archives_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    await populated(source)
    good = tmp_path / "good.tar.gz"
    await create_backup(layer(source), good)
    raw = good.read_bytes()

    flipped = tmp_path / "flipped.tar.gz"
    middle = len(raw) // 2
    flipped.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:])
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive at all")
    no_manifest = tmp_path / "no-manifest.tar.gz"
    _rewrite(good, no_manifest, lambda n, d: None if n == MANIFEST_NAME else [(n, d)])
    tampered = tmp_path / "tampered.tar.gz"
    _rewrite(good, tampered, lambda n, d: [(n, d + b"!" if n.endswith(".tgz") else d)])
    dropped = tmp_path / "dropped.tar.gz"
    _rewrite(good, dropped, lambda n, d: None if n.endswith("versions/1.1.0.json") else [(n, d)])
    smuggled = tmp_path / "smuggled.tar.gz"
    _rewrite(good, smuggled, lambda n, d: [(n, d), ("published/../../escape", b"x")] if n == MANIFEST_NAME
             else [(n, d)])
    wrong_format = tmp_path / "wrong-format.tar.gz"
    _rewrite(good, wrong_format, lambda n, d: [(n, d.replace(b'"version": 1', b'"version": 99'))])
    newer_store = tmp_path / "newer-store.tar.gz"  # from an overlaystore that writes a newer layout
    _rewrite(good, newer_store, lambda n, d: [(n, d.replace(b'"store_format": 1', b'"store_format": 2'))])
    plain_gzip = tmp_path / "plain.gz"
    plain_gzip.write_bytes(gzip.compress(b"{}"))

    for bad in (flipped, truncated, garbage, no_manifest, tampered, dropped, smuggled, wrong_format, newer_store,
                plain_gzip):
        target = tmp_path / f"restore-{bad.name}"
        with pytest.raises(BackupError):
            await restore_backup(bad, layer(target))
        assert files_of(target) == {}, bad.name
    assert not (tmp_path / "escape").exists()
    assert (await restore_backup(good, layer(tmp_path / "fine"))).packages == 3


# ------------------------------------------------------------------ a running server


async def test_a_running_server_serves_restored_packages(tmp_path: Path, aiohttp_client: Any) -> None:
    source = tmp_path / "source"
    store = await populated(source)
    data = await publish(store, "@acme/late", "3.0.0")
    archive = tmp_path / "b.tar.gz"
    await create_backup(layer(source), archive)

    config = replace(make_config(tmp_path / "registry", None), watch=WatchConfig(enabled=True))
    client = await aiohttp_client(make_app(config))
    assert (await client.get("/@acme/late")).status == 404
    await restore_backup(archive, PublishedLayer(FileBackend(config.storage.published)))
    deadline = time.monotonic() + 10
    while (resp := await client.get("/@acme/late")).status != 200:
        assert time.monotonic() < deadline, "the restored package never appeared"
        await asyncio.sleep(0.05)
    doc = await resp.json()
    assert set(doc["versions"]) == {"3.0.0"}
    resp = await client.get("/@acme/late/-/late-3.0.0.tgz")
    assert resp.status == 200 and await resp.read() == data
    doc = await (await client.get("/@acme/widget")).json()
    assert doc["dist-tags"] == {"latest": "1.1.0", "next": "2.0.0-rc.1"}


# ------------------------------------------------------------------ the commands


def test_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key in list(os.environ):
        if key.startswith("OVERLAYSTORE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    asyncio.run(populated(tmp_path / "live"))
    before = files_of(tmp_path / "live" / "published")
    live = ["--published-storage", "live/published"]
    assert main(["backup", "b.tar.gz", *live]) == 0
    out = capsys.readouterr().out
    assert "backed up 3 package(s)" in out and "auth/htpasswd" in out
    assert main(["backup", "b.tar.gz", *live]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["backup", "live/published/b.tar.gz", *live]) == 1
    assert "inside the published store" in capsys.readouterr().err
    assert main(["restore", "b.tar.gz", "--verify-only"]) == 0
    assert "is intact" in capsys.readouterr().out
    assert main(["restore", "b.tar.gz", *live]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["restore", "b.tar.gz", "--published-storage", "new/published"]) == 0
    assert "restored 3 package(s)" in capsys.readouterr().out
    assert files_of(tmp_path / "new" / "published") == before
    assert files_of(tmp_path / "new" / "auth") == files_of(tmp_path / "live" / "auth")
    (tmp_path / "bad.tar.gz").write_bytes(b"junk")
    assert main(["restore", "bad.tar.gz", "--published-storage", "other/published"]) == 1
    assert "not an intact overlaystore backup" in capsys.readouterr().err


def test_extra_file_contract() -> None:
    # The library needs nothing of the server: extras are plain callables.
    box: dict[str, bytes] = {}
    extra = ExtraFile("auth/htpasswd", lambda: box.get("x"), lambda data: box.__setitem__("x", data))
    extra.write(b"a")
    assert extra.read() == b"a"
