"""The issue's scenarios, each a small function of a running peer.

Every scenario returns :class:`benchmarks.report.Outcome` values and leaves
the peer running as it found it (except :func:`npm_ci`'s cold runs, which
empty the proxy cache they measure). Which peers run, in what order and
with which others stopped is :mod:`benchmarks.side_by_side`'s business.

Scenario ids are stable: :data:`benchmarks.report.TARGETS` and the JSON
results refer to them.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks import wrk
from benchmarks.corpus import Corpus, url_path, write_project
from benchmarks.overlaystore_peer import OverlaystorePeer
from benchmarks.peer import Peer, cpu_seconds, memory_kib, stop_process
from benchmarks.report import Outcome

ABBREVIATED = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
#: npm sends this for full documents (``npm view``, publishes)
FULL = "application/json"
#: tmpfs for npm ci's project and cache (see the issue: on the disk here npm's
#: own system time grows run after run and drowns the registry's share)
SHM = Path("/dev/shm")
#: ids of the scenarios besides the wrk ones, in table order
RSS_IDS = ("peak-rss-hwm", "peak-rss-sampled")
NPM_CI_WARM, NPM_CI_COLD, PUBLISH, STARTUP = "npm-ci-warm", "npm-ci-cold", "publish-100", "startup-100k"
OTHER_IDS = (*RSS_IDS, NPM_CI_WARM, NPM_CI_COLD, PUBLISH, STARTUP)


@dataclass(frozen=True)
class Settings:
    """How long and how often: the issue's full run, or a smoke run.

    ``repetitions`` counts rounds: each round measures every scenario once
    on every peer, so the spread of a scenario's values spans the whole run
    (the machine is shared) rather than three back-to-back runs.
    """

    duration_s: int = 10
    warmup_s: int = 3
    repetitions: int = 3
    publishes: int = 100
    startup_packages: int = 100_000
    startup_runs: int = 3
    rss_interval_s: float = 0.5

    @classmethod
    def quick(cls) -> Settings:
        return cls(duration_s=2, warmup_s=1, repetitions=1, startup_runs=1)

    def describe(self) -> str:
        return (f"{self.repetitions} round(s), each: wrk -t1 for {self.duration_s} s after a {self.warmup_s} s "
                f"warm-up per scenario, npm ci warm and cold, {self.publishes} publishes; "
                f"start-up with {self.startup_packages:,} cached packages x {self.startup_runs}")


# --- wrk scenarios ------------------------------------------------------------


@dataclass(frozen=True)
class WrkScenario:
    """One load: paths (round-robin), request headers, connections."""

    id: str
    title: str
    paths: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    connections: int
    expect_status: int = 200
    #: the scenario sends ``If-None-Match`` with the ETag the peer gives the first path
    revalidate: bool = False

    @property
    def gzip(self) -> bool:
        return any(name.lower() == "accept-encoding" and "gzip" in value for name, value in self.headers)


def wrk_scenarios(corpus: Corpus) -> tuple[WrkScenario, ...]:
    """The issue's 15 wrk scenarios, in the order the table lists them."""
    out = []
    docs = {"small": (url_path(corpus.small),), "huge": (url_path(corpus.huge),),
            "mix": tuple(url_path(name) for name in corpus.names)}
    for label, paths in docs.items():
        connections = 8 if label == "huge" else 32
        for form, accept in (("full", FULL), ("abbreviated", ABBREVIATED)):
            for gzip in (False, True):
                headers = (("Accept", accept),) + ((("Accept-Encoding", "gzip"),) if gzip else ())
                out.append(WrkScenario(
                    id=f"packument-{label}-{form}" + ("-gzip" if gzip else ""),
                    title=f"packument {label}, {form}" + (", gzip" if gzip else ""),
                    paths=paths, headers=headers, connections=connections))
    out.append(WrkScenario("tarball-small", "tarball small", (corpus.tarball_small,), (), 32))
    out.append(WrkScenario("tarball-large", "tarball large", (corpus.tarball_large,), (), 32))
    out.append(WrkScenario("revalidate-304", "304 revalidation (small)", (url_path(corpus.small),),
                           (("Accept", FULL),), 32, expect_status=304, revalidate=True))
    return tuple(out)


def settle(peer: Peer, *, idle_share: float = 0.1, window_s: float = 0.25, timeout_s: float = 120.0) -> float:
    """Wait until ``peer`` is idle (under ``idle_share`` of a core over ``window_s``); return the seconds waited.

    A server keeps working on requests wrk abandoned at the end of a run (a
    Node server finishes rendering a huge document nobody reads any more);
    without this the next measurement would pay for the previous one.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        pids = peer.pids()
        before = cpu_seconds(pids)
        time.sleep(window_s)
        if (cpu_seconds(pids) - before) / window_s < idle_share:
            break
    return time.monotonic() - started


@dataclass(frozen=True)
class Probe:
    status: int
    body_bytes: int
    etag: str | None
    content_encoding: str | None


def probe(base_url: str, path: str, headers: Sequence[tuple[str, str]]) -> Probe:
    """One request as wrk will send it: its status, body size and validators."""
    request = urllib.request.Request(base_url + path, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            return Probe(response.status, len(body), response.headers.get("ETag"),
                         response.headers.get("Content-Encoding"))
    except urllib.error.HTTPError as exc:
        body = exc.read()
        return Probe(exc.code, len(body), exc.headers.get("ETag"), exc.headers.get("Content-Encoding"))


def run_wrk(scenario: WrkScenario, peer: Peer, *, duration_s: int, warmup_s: int, repetitions: int = 1) -> Outcome:
    """A warm-up run, then ``repetitions`` measured wrk runs against ``peer``."""

    def outcome(values: tuple[float, ...], details: tuple[tuple[str, float], ...] = (), note: str = "") -> Outcome:
        return Outcome(scenario.id, scenario.title, "req/s", True, peer.name, values, details, note)

    headers = scenario.headers
    settle(peer)
    first = probe(peer.base_url, scenario.paths[0], headers)
    if scenario.revalidate:
        if first.etag is None:
            return outcome((), note=f"no ETag on GET {scenario.paths[0]} (status {first.status}): "
                                    "nothing to revalidate")
        headers = headers + (("If-None-Match", first.etag),)
        first = probe(peer.base_url, scenario.paths[0], headers)
    if first.status != scenario.expect_status:
        return outcome((), note=f"GET {scenario.paths[0]} answered {first.status}, expected {scenario.expect_status}")
    notes = []
    if scenario.gzip and (first.content_encoding or "").lower() != "gzip":
        notes.append("answers without gzip")

    def run(seconds: int) -> wrk.WrkRun:
        settle(peer)
        return wrk.run(peer.base_url, scenario.paths, headers=headers, connections=scenario.connections,
                       duration_s=seconds, server_pids=peer.pids())

    if warmup_s > 0:
        run(warmup_s)
    runs = [run(duration_s) for _ in range(repetitions)]
    errors = sum(r.output.errors for r in runs)
    if any(r.output.requests == 0 for r in runs):
        notes.append(f"no request completed within a {duration_s} s run")
    if errors:
        notes.append(f"{errors} errors (socket errors or non-2xx/3xx)")

    def med(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    details = {
        "transfer_mib_s": med([r.output.transfer_bytes_per_s / 2**20 for r in runs]),
        "p50_ms": med([r.output.percentile(50) for r in runs]),
        "p99_ms": med([r.output.percentile(99) for r in runs]),
        "wrk_cpu": med([r.wrk_cpu for r in runs]),
        "server_cpu": med([r.server_cpu for r in runs]),
        "errors": float(errors),
        "body_bytes": float(first.body_bytes),
    }
    return outcome(tuple(r.output.requests_per_s for r in runs),
                   tuple((k, v) for k, v in details.items() if v is not None), "; ".join(notes))


# --- warming a peer -----------------------------------------------------------


def warm(base_url: str, corpus: Corpus, *, threads: int = 8) -> list[str]:
    """GET every packument (full and abbreviated, plain and gzip) and every
    tarball once through the peer; return the failures (empty when all 200)."""
    requests: list[tuple[str, dict[str, str]]] = []
    for name in corpus.names:
        for accept in (FULL, ABBREVIATED):
            for encoding in ("identity", "gzip"):
                requests.append((url_path(name), {"Accept": accept, "Accept-Encoding": encoding}))
    requests += [(path, {}) for path, _ in corpus.tarballs()]

    def get(item: tuple[str, dict[str, str]]) -> str | None:
        path, headers = item
        found = probe(base_url, path, tuple(headers.items()))
        return None if found.status == 200 else f"GET {path}: {found.status}"

    with ThreadPoolExecutor(threads) as pool:
        return [failure for failure in pool.map(get, requests) if failure is not None]


# --- peak RSS -----------------------------------------------------------------


class RssSampler:
    """Samples the summed VmRSS of a peer's processes in a background thread."""

    def __init__(self, peer: Peer, interval_s: float) -> None:
        self.peer = peer
        self.interval_s = interval_s
        self.samples_kib: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples_kib.append(memory_kib(self.peer.pids(), "VmRSS"))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def rss_outcomes(peer: Peer, sampler: RssSampler) -> list[Outcome]:
    """The peer's peak memory: VmHWM summed over its processes (read now, after
    the mixed load) and the largest VmRSS sum sampled during it, in MiB."""
    hwm = memory_kib(peer.pids(), "VmHWM") / 1024
    sampled = max(sampler.samples_kib, default=0) / 1024
    count = len(sampler.samples_kib)
    return [
        Outcome(RSS_IDS[0], "peak RSS (VmHWM sum, after the mixed load)", "MiB", False, peer.name, (hwm,),
                note=f"{len(peer.pids())} process(es)"),
        Outcome(RSS_IDS[1], "RSS during the mixed load (max sample)", "MiB", False, peer.name, (sampled,),
                note=f"{count} samples every {sampler.interval_s:g} s"),
    ]


# --- npm ci -------------------------------------------------------------------


def _scratch_root() -> Path:
    return SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else Path(tempfile.gettempdir())


def npm_ci(corpus: Corpus, peer: Peer, *, cold: bool, runs: int = 1) -> Outcome:
    """Wall time of ``npm ci`` of the corpus project against ``peer``, with a
    fresh npm cache each run; ``cold`` empties the proxy's cache before each."""
    scenario = NPM_CI_COLD if cold else NPM_CI_WARM
    title = "npm ci, cold proxy" if cold else "npm ci, warm"
    times, server_cpu, failures = [], [], []
    for run_index in range(runs):
        if cold:
            peer.clear_cache()
        scratch = Path(tempfile.mkdtemp(prefix=f"overlaystore-bench-npm-{peer.name}-", dir=_scratch_root()))
        try:
            project = write_project(corpus, scratch / "project", peer.base_url)
            userconfig = scratch / "empty-npmrc"  # the user's own npmrc must not change the install
            userconfig.write_text("")
            argv = ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error",
                    f"--registry={peer.base_url}/", f"--cache={scratch / 'npm-cache'}", f"--userconfig={userconfig}"]
            settle(peer)
            pids = peer.pids()
            cpu_before = cpu_seconds(pids)
            started = time.monotonic()
            done = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=900, check=False)
            elapsed = time.monotonic() - started
            server_cpu.append((cpu_seconds(pids) - cpu_before) / elapsed)
            if done.returncode != 0:
                tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
                failures.append(f"run {run_index + 1}: npm ci exited {done.returncode}: {tail}")
                continue
            times.append(elapsed)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    details = (("server_cpu", statistics.median(server_cpu)),) if server_cpu and times else ()
    return Outcome(scenario, title, "s", False, peer.name, tuple(times), details, "; ".join(failures))


# --- publishes ----------------------------------------------------------------


def publishes(peer: Peer, *, count: int, runs: int = 1) -> Outcome:
    """``count`` sequential publishes (one new package, one new
    version each), over one keep-alive connection: publishes per second."""
    from tests.npmdata import publish_body  # the tests' npm-11-shaped publish body, reused

    token = peer.credentials().token
    parts = urlsplit(peer.base_url)
    rates, failures = [], []
    for run_index in range(runs):
        # A fresh name each run: the stores keep what earlier runs published.
        name = f"bench-publish-{os.getpid()}-{time.time_ns() // 1000}-{run_index}"
        bodies = [json.dumps(publish_body(name, f"1.0.{i}", registry=peer.base_url)).encode()
                  for i in range(count)]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "npm-command": "publish"}
        settle(peer)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
        try:
            started = time.monotonic()
            for index, body in enumerate(bodies):
                connection.request("PUT", url_path(name), body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                if response.status not in (200, 201):
                    failures.append(f"run {run_index + 1}, publish {index + 1}: {response.status} "
                                    f"{answer[:200].decode(errors='replace')}")
                    break
            else:
                rates.append(len(bodies) / (time.monotonic() - started))
        finally:
            connection.close()
    return Outcome(PUBLISH, f"{count} sequential publishes", "publishes/s", True, peer.name,
                   tuple(rates), note="; ".join(failures))


# --- start-up with a big cache ------------------------------------------------

#: the cached package the start-up scenario asks for (bench_lookup's naming)
_STARTUP_PROBE_INDEX = 1
_BUILT_MARKER = ".bench-startup-built"


def build_startup_cache(cache: Path, packages: int) -> bool:
    """``packages`` cached packuments in overlaystore's on-disk cache layout,
    written by :mod:`benchmarks.bench_lookup`'s own helpers; reused when a
    previous run built the same count. Returns True when it was built now."""
    from benchmarks.bench_lookup import package_name, packument, write_cached

    marker = cache / _BUILT_MARKER
    if marker.is_file() and marker.read_text().strip() == str(packages):
        return False
    if cache.exists():
        shutil.rmtree(cache)
    rnd = random.Random(5)
    for index in range(packages):
        name = package_name(index)
        # No .meta: it reads as "fetched long ago", which start-up never looks
        # at; the probed package gets a fresh one before each start.
        write_cached(cache, name, packument(name, 3, rnd, fat=False), meta=False)
    marker.write_text(f"{packages}\n")
    return True


def startup(upstream_url: str, settings: Settings, *, workers: int = 1) -> Outcome:
    """Seconds from ``overlaystore serve``'s process start to the first 200
    answer of a cached packument, with ``settings.startup_packages`` cached.

    A peer of its own, on tmpfs: the big cache is built once and reused, and
    the measured peer's cache stays the corpus one."""
    from benchmarks.bench_lookup import package_name, packument, write_cached

    peer = OverlaystorePeer(_scratch_root() / "overlaystore-bench-startup", workers=workers)
    cache = peer.cache_dir
    built_at = time.monotonic()
    built = build_startup_cache(cache, settings.startup_packages)
    build_note = f"cache built in {time.monotonic() - built_at:.0f} s" if built else "cache reused"
    peer.setup(upstream_url)
    name = package_name(_STARTUP_PROBE_INDEX)
    url = peer.base_url + url_path(name)
    times, failures = [], []
    for _ in range(settings.startup_runs):
        # Fresh: the answer must come from the cache, not from a revalidation
        # against an upstream that has never heard of the package.
        write_cached(cache, name, packument(name, 3, random.Random(_STARTUP_PROBE_INDEX), fat=False), meta=True)
        argv = peer.command()
        log = (peer.work / "startup.log").open("ab")
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=peer.work, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        try:
            status = _poll_until_200(url, process, timeout_s=120)
            elapsed = time.monotonic() - started
            if status == 200:
                times.append(elapsed)
            else:
                failures.append(f"no 200 for GET {url_path(name)}: {status}")
        finally:
            stop_process(process, timeout_s=30)
            log.close()
    note = "; ".join([f"{settings.startup_packages:,} cached packages, {build_note}", *failures])
    return Outcome(STARTUP, f"start-up to first answer, {settings.startup_packages:,} cached", "s", False,
                   peer.name, tuple(times), note=note)


def _poll_until_200(url: str, process: subprocess.Popen[bytes], *, timeout_s: float) -> int | str:
    deadline = time.monotonic() + timeout_s
    last: int | str = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:  # not ready yet, or never: the deadline decides
            last = exc.code
        except OSError:
            pass
        time.sleep(0.005)
    return f"{last} after {timeout_s:.0f} s"


@contextmanager
def running(peer: Peer) -> Iterator[Peer]:
    """``peer`` started for the block, stopped after it."""
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


__all__ = ["RssSampler", "Settings", "WrkScenario", "npm_ci", "publishes", "rss_outcomes", "run_wrk", "running",
           "startup", "warm", "wrk_scenarios"]
