"""A publisher process for the crash-safety and cross-process lock tests.

    publish_loop.py PUBLISHED CACHE NAME loop [--seed N]
        publish 1.0.<k> for k = 0, 1, ... forever (k continues after the
        versions already stored, so a publish interrupted by SIGKILL is
        retried by the next run over its orphan tarball); moves a dist-tag now
        and then. Prints "ready" once the store is open.
    publish_loop.py PUBLISHED CACHE NAME versions V1 V2 ... --tag-prefix P [--start-file F]
        publish exactly those versions, tagging each "<P><i>"; waits for F to
        exist before starting (a start barrier between processes).

Tarballs are random bytes of random size; each manifest carries the sha512
integrity of its tarball, which the tests check after every crash.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from overlaystore._types import PackageName  # noqa: E402
from overlaystore.errors import AlreadyPublished  # noqa: E402
from overlaystore.packages import PackageStore  # noqa: E402


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def manifest(name: str, version: str, tarball: bytes) -> dict[str, object]:
    return {
        "name": name,
        "version": version,
        "_id": f"{name}@{version}",
        "_npmUser": {"name": "loop", "email": "loop@example.com"},
        "dist": {"integrity": integrity(tarball), "shasum": hashlib.sha1(tarball).hexdigest()},
    }


async def loop(store: PackageStore, name: PackageName, rng: random.Random) -> None:
    fragment = await store.fragment(name)
    k = len(fragment.times) if fragment is not None else 0
    print("ready", flush=True)
    while True:
        version = f"1.0.{k}"
        tarball = rng.randbytes(rng.choice([100, 10_000, 100_000, 600_000]))
        await store.publish(name, version, manifest(name, version, tarball), tarball,
                            tags={"latest": version}, user={"name": "loop"})
        if k % 3 == 0:
            await store.set_dist_tag(name, "stable", version)
        k += 1


async def versions(store: PackageStore, name: PackageName, wanted: list[str], prefix: str,
                   start_file: str | None, rng: random.Random) -> None:
    print("ready", flush=True)
    if start_file:
        deadline = time.monotonic() + 30
        while not os.path.exists(start_file):
            if time.monotonic() > deadline:
                raise SystemExit("start barrier timed out")
            await asyncio.sleep(0.001)
    for i, version in enumerate(wanted):
        tarball = rng.randbytes(rng.randint(100, 5000))
        try:
            await store.publish(name, version, manifest(name, version, tarball), tarball,
                                tags={f"{prefix}{i}": version}, user={"name": prefix})
        except AlreadyPublished:
            print(f"refused {version}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("published")
    parser.add_argument("cache")
    parser.add_argument("name")
    parser.add_argument("mode", choices=["loop", "versions"])
    parser.add_argument("versions", nargs="*")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag-prefix", default="t")
    parser.add_argument("--start-file")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    store = await PackageStore.open_directories(Path(args.published), Path(args.cache))
    name = PackageName(args.name)
    if args.mode == "loop":
        await loop(store, name, rng)
    else:
        await versions(store, name, args.versions, args.tag_prefix, args.start_file, rng)


if __name__ == "__main__":
    asyncio.run(main())
