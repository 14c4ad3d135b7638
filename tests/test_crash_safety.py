"""Invariant 7: a crash at any point of a publish leaves the whole version or
nothing of it.

A subprocess (tests/helpers/publish_loop.py) publishes in a loop and is
SIGKILLed at random moments. After each kill the store is opened like a
restarting server would: it must open cleanly, remove the temp files of the
dead writer, and every version it shows (every version file, in fact) must
have its tarball, whose sha512 matches the manifest's ``dist.integrity``.
The next run continues publishing, re-publishing over any orphan tarball.

Default: 15 kills. ``-m slow`` runs at least 100 (or
``OVERLAYSTORE_CRASH_ITERATIONS``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from overlaystore._types import PackageName
from overlaystore.names import tarball_filename
from overlaystore.packages import PackageStore

HELPER = Path(__file__).parent / "helpers" / "publish_loop.py"
NAME = PackageName("@acme/crash")


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def hidden_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".tmp.", ".trash."))]


async def check_store(published: Path, cache: Path, stats: Counter[str]) -> None:
    store = await PackageStore.open_directories(published, cache)
    assert hidden_leftovers(published) == [] and hidden_leftovers(cache) == []
    pub = store.layered.published
    keys = {info.key for info in await pub.keys()}
    version_files = sorted(k for k in keys if k.startswith(f"{NAME}/versions/"))
    for key in version_files:
        doc = orjson.loads(await pub.get(key) or b"")
        manifest = doc["manifest"]
        data = await pub.get(f"{NAME}/{tarball_filename(NAME, manifest['version'])}")
        assert data is not None, f"{key} committed without its tarball"
        assert integrity(data) == manifest["dist"]["integrity"], f"tarball of {key} is torn"
    fragment = await store.fragment(NAME)
    if fragment is None:
        assert version_files == []
        return
    assert len(fragment.versions) == len(version_files)
    # "latest" is absent only if the first publish died before its metadata
    assert fragment.dist_tags.get("latest", next(iter(fragment.versions), None)) in fragment.versions
    assert set(fragment.dist_tags.values()) <= set(fragment.versions)
    for version, manifest in fragment.versions.items():
        ref = await store.tarball(NAME, tarball_filename(NAME, version))
        assert ref is not None and ref.layer == "published"
        assert integrity(await ref.read()) == manifest["dist"]["integrity"]
    # Orphans (a kill between tarball and version file) are never served.
    committed = {fragment_version for fragment_version in fragment.times}
    for key in keys:
        if key.endswith(".tgz"):
            version = key.rsplit("-", 1)[1][: -len(".tgz")]
            if version not in committed:
                stats["orphans"] += 1
                assert await store.tarball(NAME, key.rsplit("/", 1)[1]) is None
    stats["versions"] = len(version_files)


def crash_loop(tmp_path: Path, iterations: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    published, cache = tmp_path / "published", tmp_path / "cache"
    stats: Counter[str] = Counter()
    for i in range(iterations):
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), str(published), str(cache), NAME, "loop", "--seed", str(seed * 1000 + i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0.0, 0.2))
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the publisher died on its own:\n{err}"
        stats["temps"] += len(hidden_leftovers(published))
        asyncio.run(check_store(published, cache, stats))
    return stats


def test_crash_safety(tmp_path: Path) -> None:
    stats = crash_loop(tmp_path, 15, seed=7)
    assert stats["versions"] > 0  # the loop made progress between kills


@pytest.mark.slow
def test_crash_safety_many(tmp_path: Path) -> None:
    iterations = max(100, int(os.environ.get("OVERLAYSTORE_CRASH_ITERATIONS", "100")))
    stats = crash_loop(tmp_path, iterations, seed=11)
    assert stats["versions"] > 0
    # With this many kills some must have landed mid-write; otherwise the
    # test is not testing what it says.
    assert stats["temps"] + stats["orphans"] > 0, stats
