"""Lookup latency: LRU hits, misses that compose, gzip, tarball lookups, invalidation.

``python -m benchmarks lookup [--json] [--packages N] [--quick]``

Builds a synthetic store in a temporary directory (``--packages`` packages,
10,000 by default: cache packuments and tarballs written directly as files in
the on-disk layout, every tenth package also published, plus three overlaid
packages with 10 / 300 / 3,000 upstream versions, the last one ~10 MB), then
measures, each as p50/p99 over many runs:

* ``lru_hit``: :meth:`ComposedView.get` of a cached rendering;
  ``lru_hit_workers`` the same with change counters (several workers: one
  more shared-memory load per hit);
* ``compose_{small,medium,huge}``: the issue's "compose-and-serialize" miss,
  as the server runs it after an invalidation that left the upstream body
  unchanged (a publish, another variant, an LRU eviction, a 304):
  ``Documents.composed`` (published fragment read twice, cached upstream
  packument read through :class:`PackageStore` (FileBackend), its parse
  found in the source's parsed cache, :func:`compose`) + :func:`serialize`
  (full form, pre-serialized upstream versions spliced, ETag); gzip
  excluded (the ``gzip_*`` rows);
* ``miss_warm_{size}``: the whole server miss of the same kind,
  ``Documents.rendered`` after ``view.invalidate``: the above plus gzip, the
  worker-thread hop (>= 100 versions) and the view ``put``;
* ``miss_cold_{size}``: the same after an upstream change (the parsed entry
  dropped): read, parse, compose, building the pre-serialized versions,
  serialize, gzip, put: nothing skipped;
* ``huge.*`` rows split the huge case into its stages (``render_full_plain``:
  render without the parsed cache's fragments, the pre-2026-11-25 path);
  ``gc_full_collect``: one ``gc.collect()`` while the parsed cache holds the
  three bench documents (what keeping parsed documents costs the cyclic GC);
* ``gzip_{small,medium,huge}``: gzip of the rendered body on its own;
* ``tarball_*``: :meth:`LayeredStore.lookup` / ``locate`` of tarball keys
  over the whole store (published hit, fall-through to the cache, miss);
* ``invalidation_delay``: an atomic file replace under a root → the
  :class:`Watcher` callback (inotify; ``_polling`` on a small tree);
* ``search_{cold,warm}``: the published packages a search matches, with a
  fresh :class:`~server.search_index.SearchIndex` (every package read: what
  every search cost before the index) and with a filled one;
* ``raw_*``: baselines (dict lookup, plain file read, a thread hop).

Targets (design): LRU hit p50 <= 5 us; medium <= 5 ms; huge <= 100 ms;
invalidation delay p50 <= 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from overlaystore._types import PackageName
from overlaystore.changes import ChangeCounters
from overlaystore.compose import compose
from overlaystore.packages import PackageStore, packument_digest
from overlaystore.policy import DEFAULT_RULE, NamePolicy, PackageRule, ProxyMode
from overlaystore.prepared import PreparedUpstream
from overlaystore.render import Variant, gzip_bytes, render, serialize
from overlaystore.view import ComposedView
from overlaystore.watch import Watcher
from server.config import UpstreamConfig
from server.documents import Documents
from server.refresh import UpstreamSource
from server.search_index import SearchIndex

URL = "http://127.0.0.1:4873"
SIZES = {"small": 10, "medium": 300, "huge": 3000}


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    n: int
    p50_us: float
    p99_us: float
    mean_us: float
    note: str = ""


def summarize(name: str, samples_ns: Sequence[int], note: str = "") -> Result:
    ordered = sorted(samples_ns)
    count = len(ordered)
    p99 = ordered[min(count - 1, int(count * 0.99))]
    return Result(name, count, ordered[count // 2] / 1000, p99 / 1000, statistics.fmean(ordered) / 1000, note)


def measure(fn: Callable[[], object], runs: int) -> list[int]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return samples


async def measure_async(fn: Callable[[], Awaitable[object]], runs: int,
                        before: Callable[[], object] | None = None) -> list[int]:
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        start = time.perf_counter_ns()
        await fn()
        samples.append(time.perf_counter_ns() - start)
    return samples


# --- synthetic data -----------------------------------------------------------------


def manifest(name: str, version: str, rnd: random.Random, *, fat: bool) -> dict[str, Any]:
    """A version manifest shaped like the upstream's (``fat``: ~3.3 KB, as in big packages)."""
    base = name.rpartition("/")[2]
    digest = hashlib.sha512(f"{name}@{version}".encode()).digest()
    m: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": f"{name}: synthetic package for benchmarks",
        "main": "index.js",
        "license": "MIT",
        "_id": f"{name}@{version}",
        "dependencies": {f"dep-{rnd.randrange(5000)}": f"^{rnd.randrange(9)}.{rnd.randrange(20)}.0" for _ in range(4)},
        "dist": {
            "integrity": "sha512-" + base64.b64encode(digest).decode(),
            "shasum": hashlib.sha1(digest).hexdigest(),
            "tarball": f"https://upstream.invalid/{name}/-/{base}-{version}.tgz",
        },
    }
    if fat:
        m.update(
            scripts={"test": "mocha test/*.js", "build": "tsc -p .", "lint": "eslint ."},
            repository={"type": "git", "url": f"git+https://git.invalid/{base}.git"},
            keywords=["synthetic", "benchmark", base, "overlay", "registry"],
            author={"name": "Some One", "email": "someone@example.invalid", "url": "https://example.invalid"},
            bugs={"url": f"https://git.invalid/{base}/issues"},
            homepage=f"https://git.invalid/{base}#readme",
            devDependencies={f"devdep-{rnd.randrange(5000)}": f"~{rnd.randrange(9)}.{rnd.randrange(20)}.{rnd.randrange(9)}"
                             for _ in range(52)},
            peerDependencies={f"peer-{rnd.randrange(500)}": f">={rnd.randrange(9)}.0.0" for _ in range(4)},
            files=["index.js", "lib/", "dist/", "types/index.d.ts", "README.md", "LICENSE", "cli.js", "bin/"],
            contributors=[{"name": f"Contributor {i}", "email": f"c{i}@example.invalid"} for i in range(4)],
            types="types/index.d.ts",
            engines={"node": ">=14"},
            gitHead=hashlib.sha1(version.encode()).hexdigest(),
            _nodeVersion="20.11.0",
            _npmVersion="10.2.4",
            _npmUser={"name": "someone", "email": "someone@example.invalid"},
            maintainers=[{"name": "someone", "email": "someone@example.invalid"},
                         {"name": "other", "email": "other@example.invalid"}],
            directories={},
            _npmOperationalInternal={"host": "s3://registry-packages",
                                     "tmp": f"tmp/{base}_{version}_1600000000000_0.{rnd.randrange(10**9)}"},
            _hasShrinkwrap=False,
        )
        m["dist"].update(
            fileCount=rnd.randrange(5, 400),
            unpackedSize=rnd.randrange(10**4, 10**7),
            signatures=[{"keyid": "SHA256:synthetic-key-id-0123456789abcdef",
                         "sig": base64.b64encode(rnd.randbytes(70)).decode()}],
        )
    return m


def version_list(count: int) -> list[str]:
    out = []
    for i in range(count):
        v = f"{i // 400}.{(i // 20) % 20}.{i % 20}"
        out.append(v + "-beta.1" if i % 9 == 4 else v)
    return out


def packument(name: str, count: int, rnd: random.Random, *, fat: bool) -> dict[str, Any]:
    vs = version_list(count)
    time_doc = {"created": "2015-01-01T00:00:00.000Z", "modified": "2024-06-01T00:00:00.000Z"}
    time_doc.update({v: f"20{15 + i * 9 // max(1, count)}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00.000Z"
                     for i, v in enumerate(vs)})
    return {
        "_id": name,
        "_rev": f"{count}-0123456789abcdef",
        "name": name,
        "description": f"{name}: synthetic",
        "dist-tags": {"latest": [v for v in vs if "-" not in v][-1]},
        "versions": {v: manifest(name, v, rnd, fat=fat) for v in vs},
        "time": time_doc,
        "maintainers": [{"name": "someone", "email": "someone@example.invalid"}],
        "readme": "# synthetic\n" + "Lorem ipsum dolor sit amet. " * 200,
        "license": "MIT",
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_cached(cache: Path, name: str, doc: dict[str, Any], *, meta: bool = True) -> bytes:
    body = orjson.dumps(doc)
    _write(cache / name / "packument.json", body)
    if meta:  # without one the packument reads as "fetched at 0": fine for lookups
        _write(cache / name / "packument.meta", orjson.dumps({"fetched_at": time.time(), "etag": '"x"',
                                                              "body_xxh3": packument_digest(body)}))
    return body


def write_published(pub: Path, name: str, version: str, rnd: random.Random, tarball: bytes) -> None:
    base = name.rpartition("/")[2]
    stamp = "2025-01-01T00:00:00.000Z"
    m = manifest(name, version, rnd, fat=False)
    _write(pub / name / "versions" / f"{version}.json", orjson.dumps({"time": stamp, "manifest": m}))
    _write(pub / name / f"{base}-{version}.tgz", tarball)
    _write(pub / name / "package-meta.json", orjson.dumps({
        "rev": 1, "created": stamp, "modified": stamp, "dist-tags": {"latest": version},
        "maintainers": [{"name": "alice", "email": "alice@example.invalid"}],
    }))


def package_name(i: int) -> str:
    return f"@scope{i % 50}/pkg-{i:05d}" if i % 7 == 0 else f"pkg-{i:05d}"


@dataclass
class Fixture:
    pub: Path
    cache: Path
    names: list[str]
    published: list[str]
    sizes: dict[str, int]  # upstream packument bytes per size class


def build(root: Path, packages: int, seed: int = 1) -> Fixture:
    rnd = random.Random(seed)
    pub, cache = root / "published", root / "cache"
    tarball = rnd.randbytes(512)
    names = [package_name(i) for i in range(packages)]
    published = []
    for i, name in enumerate(names):
        base = name.rpartition("/")[2]
        write_cached(cache, name, packument(name, 3, rnd, fat=False), meta=False)
        _write(cache / name / f"{base}-0.0.1.tgz", tarball)
        if i % 10 == 0:
            write_published(pub, name, "9.0.0", rnd, tarball)
            published.append(name)
    sizes = {}
    for label, count in SIZES.items():
        name = f"bench-{label}"
        sizes[label] = len(write_cached(cache, name, packument(name, count, rnd, fat=True)))
        for v in ("0.0.1-acme.1", "0.0.2-acme.1"):
            write_published(pub, name, v, rnd, tarball)
    return Fixture(pub, cache, names, published, sizes)


# --- benchmarks -------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    scale = 0.2 if args.quick else 1.0

    def runs(n: int) -> int:
        return max(5, int(n * scale))

    with tempfile.TemporaryDirectory(prefix="overlaystore-bench-", dir=args.dir) as tmp:
        started = time.perf_counter()
        fx = build(Path(tmp), args.packages)
        build_s = time.perf_counter() - started
        # A small tree for the polling watcher (built early: see watch.py on
        # the polling backend's one-second mtime resolution).
        small_root = Path(tmp) / "small-root"
        small_names = [package_name(i) for i in range(100)]
        for pkg in small_names:
            _write(small_root / pkg / "packument.json", b"{}")
        store = await PackageStore.open_directories(fx.pub, fx.cache)
        view = ComposedView()
        rnd = random.Random(2)
        gc.collect()

        # Baselines.
        table = {(n, Variant.FULL, URL): n for n in fx.names}
        key = (fx.names[1234 % len(fx.names)], Variant.FULL, URL)
        results.append(summarize("raw_dict_get", measure(lambda: table.get(key), runs(100_000))))
        sample = fx.cache / fx.names[1] / "packument.json"
        results.append(summarize("raw_file_read", measure(sample.read_bytes, runs(5000)),
                                 f"{sample.stat().st_size} B"))
        results.append(summarize("raw_thread_hop", await measure_async(
            lambda: asyncio.to_thread(sample.read_bytes), runs(3000)), "asyncio.to_thread(read)"))

        # Stages of the huge case first (parse while no other parsed copy is
        # alive: the cyclic GC's full collections scan every live object).
        name = PackageName("bench-huge")
        fragment = await store.fragment(name)
        cached = await store.cached_packument(name)
        assert cached is not None
        n = runs(15)
        results.append(summarize("huge.read", await measure_async(
            lambda: asyncio.gather(store.fragment(name), store.cached_packument(name)), n),
            "fragment + cached packument (+ its xxh3)"))
        gc.collect()
        results.append(summarize("huge.parse", measure(lambda: orjson.loads(cached.body), n),
                                 "cold misses only"))
        gc.disable()
        try:
            results.append(summarize("huge.parse_gc_disabled", measure(lambda: orjson.loads(cached.body), n),
                                     "the cyclic GC's share"))
        finally:
            gc.enable()
        upstream = orjson.loads(cached.body)
        doc = compose(name, fragment, upstream)
        results.append(summarize("huge.compose", measure(lambda: compose(name, fragment, upstream), n)))
        results.append(summarize("huge.prepare_full", measure(
            lambda: PreparedUpstream(name, upstream).fragments("full"), n),
            "pre-serializing the upstream versions, cold misses only"))
        prepared = PreparedUpstream(name, upstream)
        results.append(summarize("huge.serialize_full", measure(
            lambda: serialize(doc, Variant.FULL, URL, upstream=prepared), n),
            "spliced, with ETag: what a warm miss serializes"))
        results.append(summarize("huge.serialize_abbreviated", measure(
            lambda: serialize(doc, Variant.ABBREVIATED, URL, upstream=prepared), n), "spliced, with ETag"))
        results.append(summarize("huge.render_full_plain", measure(lambda: render(doc, Variant.FULL, URL), n),
                                 "no fragments: rewrite + serialize + gzip + ETag"))
        results.append(summarize("huge.render_abbreviated_plain", measure(
            lambda: render(doc, Variant.ABBREVIATED, URL), n)))
        results.append(summarize("huge.serialize_only", measure(lambda: orjson.dumps(doc), n),
                                 "orjson.dumps of the composed document"))
        del upstream, doc, prepared
        gc.collect()

        # The miss path, per size, as the server runs it (the no-upstream
        # UpstreamSource reads the cache only; online, a fresh copy takes the
        # same path).
        source = UpstreamSource(store, None, UpstreamConfig(url=None))
        policy = NamePolicy(rules=(PackageRule(pattern="bench-*", proxy=ProxyMode.OVERLAY), DEFAULT_RULE))
        documents = Documents(store, view, source, policy)

        async def compose_and_serialize(name: str) -> None:
            composed = await documents.composed(PackageName(name))
            prepared = composed.upstream.prepared if composed.upstream is not None else None
            serialize(composed.doc, Variant.FULL, URL, upstream=prepared)

        async def miss(name: str) -> None:
            await documents.rendered(PackageName(name), Variant.FULL, URL)

        miss_runs = {"small": 300, "medium": 100, "huge": 40}
        bodies = {}
        for label, n in miss_runs.items():
            name = f"bench-{label}"
            await miss(name)  # parsed and prepared once, as by an earlier request
            samples = await measure_async(lambda name=name: compose_and_serialize(name), runs(n))  # type: ignore[misc]
            hit = view.get(name, Variant.FULL, URL)
            assert hit is not None
            bodies[label] = hit.body
            results.append(summarize(f"compose_{label}", samples,
                                     f"{SIZES[label]} versions, upstream {fx.sizes[label] / 1e6:.2f} MB, "
                                     f"body {hit.size / 1e6:.2f} MB, gzip {len(hit.gzip) / 1e6:.2f} MB"))
        for label, n in miss_runs.items():
            name = f"bench-{label}"
            results.append(summarize(f"miss_warm_{label}", await measure_async(
                lambda name=name: miss(name), runs(n),  # type: ignore[misc]
                before=lambda name=name: view.invalidate(name)),  # type: ignore[misc]
                "+ gzip, thread hop, view put"))
        for label, n in (("small", 100), ("medium", 30), ("huge", 10)):
            name = f"bench-{label}"

            def upstream_changed(name: str = name) -> None:
                view.invalidate(name)
                source.parsed_cache.drop(name)

            results.append(summarize(f"miss_cold_{label}", await measure_async(
                lambda name=name: miss(name), runs(n), before=upstream_changed),  # type: ignore[misc]
                "after an upstream change: + parse, pre-serializing"))
        parsed = source.parsed_cache.stats
        results.append(summarize("gc_full_collect", measure(gc.collect, runs(10)),
                                 f"parsed cache: {parsed.entries} documents, {parsed.bytes / 2**20:.0f} MiB (estimate)"))

        for label, runs_n in (("small", 300), ("medium", 60), ("huge", 10)):
            body = bodies[label]
            results.append(summarize(f"gzip_{label}", measure(lambda body=body: gzip_bytes(body), runs(runs_n)),  # type: ignore[misc]
                                     f"{len(body) / 1e6:.2f} MB, level {'6' if len(body) <= 256 * 1024 else '1'}"))
        big = bodies["huge"]
        results.append(summarize("gzip_huge_level6", measure(lambda: gzip_bytes(big, 6), runs(5)), "for comparison"))

        # LRU hit.
        for label in ("small", "medium", "huge"):
            assert view.get(f"bench-{label}", Variant.FULL, URL) is not None
        hit_name = "bench-medium"
        results.append(summarize("lru_hit", measure(lambda: view.get(hit_name, Variant.FULL, URL), runs(100_000))))
        results.append(summarize("lru_miss", measure(lambda: view.get("absent", Variant.FULL, URL), runs(100_000))))
        # The same hit with several workers: the entry's change counter is checked.
        with ChangeCounters(Path(tmp) / "changes") as changes:
            shared = ComposedView(changes=changes)
            shared.put(hit_name, Variant.FULL, URL, view.get(hit_name, Variant.FULL, URL),  # type: ignore[arg-type]
                       generation=shared.generation(hit_name))
            results.append(summarize("lru_hit_workers", measure(lambda: shared.get(hit_name, Variant.FULL, URL),
                                                                runs(100_000)), "with change counters (--workers N)"))
            assert shared.stats.misses == 0

        # Tarball keys over the whole store.
        layered = store.layered

        def tarball_key(pkg: str, version: str) -> str:
            return f"{pkg}/{pkg.rpartition('/')[2]}-{version}.tgz"

        pub_keys = [tarball_key(p, "9.0.0") for p in fx.published]
        cache_keys = [tarball_key(p, "0.0.1") for p in fx.names]
        miss_keys = [tarball_key(p, "7.7.7") for p in fx.names]
        for label, keys, fn in (
            ("tarball_lookup_published", pub_keys, layered.lookup),
            ("tarball_lookup_fallthrough", cache_keys, layered.lookup),
            ("tarball_lookup_miss", miss_keys, layered.lookup),
            ("tarball_locate_published", pub_keys, layered.locate),
            ("tarball_locate_fallthrough", cache_keys, layered.locate),
        ):
            picks = [rnd.choice(keys) for _ in range(runs(2000))]
            it = iter(picks)
            samples = await measure_async(lambda fn=fn, it=it: fn(next(it)), len(picks))  # type: ignore[misc]
            results.append(summarize(label, samples, f"random keys over {len(fx.names)} packages"))

        # Search over the published packages: a cold index reads every one
        # (what every search cost before the index), a warm one lists names.
        words = ["pkg-0001"]

        async def search(index: SearchIndex) -> int:
            return sum(1 for _, summary in await index.summaries() if summary.matches(words))

        results.append(summarize("search_cold", await measure_async(lambda: search(SearchIndex(store)), runs(5)),
                                 f"{len(fx.published)} published packages, each read"))
        warm = SearchIndex(store)
        await search(warm)
        results.append(summarize("search_warm", await measure_async(lambda: search(warm), runs(50)),
                                 "summaries kept: one listing of the names"))

        # Invalidation delay.
        results.append(await invalidation(fx.cache, fx.pub, fx.names, rnd, runs(40), polling=False))
        results.append(await invalidation(small_root, None, small_names, rnd, runs(20), polling=True))

        results.append(Result("store_build", 1, build_s * 1e6, build_s * 1e6, build_s * 1e6,
                              f"{len(fx.names)} packages, {len(fx.published)} published"))
        shutil.rmtree(tmp, ignore_errors=True)
    return results


async def invalidation(root: Path, other: Path | None, names: list[str], rnd: random.Random,
                       samples_n: int, *, polling: bool) -> Result:
    arrived: dict[str, int] = {}
    wanted: asyncio.Event = asyncio.Event()
    target: list[str] = [""]

    def on_change(changed: set[PackageName]) -> None:
        now = time.perf_counter_ns()
        for name in changed:
            arrived.setdefault(name, now)
        if target[0] in changed:
            wanted.set()

    def on_reset() -> None:  # a view would drop everything: the target included
        arrived.setdefault(target[0], time.perf_counter_ns())
        wanted.set()

    roots = [root] + ([other] if other is not None else [])
    watcher = Watcher(roots, on_change, on_reset, force_polling=polling)
    started = time.perf_counter()
    await watcher.start()
    start_s = time.perf_counter() - started
    samples = []
    try:
        await asyncio.sleep(0.2)
        for _ in range(samples_n):
            name = rnd.choice(names)
            target[0] = name
            arrived.pop(name, None)
            wanted.clear()
            path = root / name / "packument.json"
            tmp = path.with_name(f".tmp.{os.getpid()}.b.packument.json")
            tmp.write_bytes(b'{"changed": true}')
            os.replace(tmp, path)
            written = time.perf_counter_ns()
            await asyncio.wait_for(wanted.wait(), 10)
            samples.append(max(0, arrived[name] - written))
            await asyncio.sleep(0.05)
    finally:
        await watcher.stop()
    label = "invalidation_delay_polling" if polling else "invalidation_delay"
    return summarize(label, samples, f"{len(names)} packages watched, start {start_s * 1000:.0f} ms"
                     + (", poll 100 ms" if polling else ", inotify"))


# --- output -----------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu, "python": platform.python_version(),
            "platform": platform.platform()}


def print_table(results: list[Result]) -> None:
    info = machine()
    print(f"# machine: nproc={info['nproc']} cpu={info['cpu']!r} python={info['python']} ({info['platform']})")
    print(f"{'benchmark':<28} {'n':>7} {'p50':>12} {'p99':>12}  note")
    for r in results:
        print(f"{r.name:<28} {r.n:>7} {fmt(r.p50_us):>12} {fmt(r.p99_us):>12}  {r.note}")


def fmt(us: float) -> str:
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.2f} us"


def default_dir() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks lookup", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--packages", type=int, default=10_000, help="packages in the synthetic store")
    parser.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    parser.add_argument("--dir", default=default_dir(),
                        help="where to build the synthetic store (default: /dev/shm if present: creating "
                             "~25,000 files on a journaling disk takes minutes; reads are page-cache hits either way)")
    args = parser.parse_args(list(argv))
    results = asyncio.run(run(args))
    try:
        if args.json:
            info = machine()
            for r in results:
                print(json.dumps({**asdict(r), "machine": info}))
        else:
            print_table(results)
        sys.stdout.flush()
    except BrokenPipeError:  # piped into head & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
