"""The floor under a durable publish: what any registry built to the design
pays per publish before it does any work of its own.

* ``durable_writes``: the two write-once files of a publish (the tarball,
  then the version file that commits it), each written the way the design
  requires and the store does it (:func:`overlaystore.atomic.write_file`:
  temp file, write, fsync, link, fsync of the directory), on the disk that
  ``--dir`` is on;
* ``page_cache_writes``: the same two files with no fsync at all, which is
  what a registry that does not fsync (Verdaccio) pays;
* ``http_put``: an aiohttp app with one route that reads the body of a
  publish, parses it and answers 201, driven over one keep-alive connection
  as the side-by-side publish scenario drives a registry.

The ceiling it prints is the rate of a registry that spent nothing but
``durable_writes + http_put`` per publish: no authentication, validation,
locking or bookkeeping.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
from aiohttp import web

from benchmarks.bench_lookup import machine
from overlaystore.atomic import write_file

#: a publish's tarball and version file, about the size of the scenario's
TARBALL_BYTES, VERSION_FILE_BYTES = 4096, 900


@dataclass(frozen=True, slots=True)
class Floor:
    name: str
    n: int
    p10_ms: float
    p50_ms: float
    p90_ms: float


def _floor(name: str, samples_ms: list[float]) -> Floor:
    ordered = sorted(samples_ms)
    decile = len(ordered) // 10
    return Floor(name, len(ordered), ordered[decile], statistics.median(ordered), ordered[-1 - decile])


def _timed(publishes: int, one: Callable[[int], None]) -> list[float]:
    samples = []
    for index in range(publishes):
        started = time.perf_counter()
        one(index)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def disk_floors(directory: Path, publishes: int) -> list[Floor]:
    work = Path(tempfile.mkdtemp(prefix="publish-floor-", dir=directory))
    try:
        package = work / "pkg"
        (package / "versions").mkdir(parents=True)
        tarball, version_file = os.urandom(TARBALL_BYTES), os.urandom(VERSION_FILE_BYTES)

        def durable(index: int) -> None:
            write_file(package / f"pkg-1.0.{index}.tgz", tarball, replace=False)
            write_file(package / "versions" / f"1.0.{index}.json", version_file, replace=False)

        def page_cache(index: int) -> None:
            (package / f"plain-1.0.{index}.tgz").write_bytes(tarball)
            (package / "versions" / f"plain-1.0.{index}.json").write_bytes(version_file)

        return [_floor("durable_writes", _timed(publishes, durable)),
                _floor("page_cache_writes", _timed(publishes, page_cache))]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _serve(ready: threading.Event, port: list[int], stop: list[asyncio.AbstractEventLoop]) -> None:
    async def put(request: web.Request) -> web.Response:
        orjson.loads(await request.read())
        return web.json_response({"ok": True}, status=201)

    async def main() -> None:
        app = web.Application()
        app.router.add_put("/{name}", put)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port.append(runner.addresses[0][1])
        stop.append(asyncio.get_running_loop())
        ready.set()
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass


def http_floor(publishes: int) -> Floor:
    from tests.npmdata import publish_body  # the scenario's npm-shaped body

    ready, port, loops = threading.Event(), [], []
    server = threading.Thread(target=_serve, args=(ready, port, loops), daemon=True)
    server.start()
    if not ready.wait(10):
        raise RuntimeError("the floor server did not start")
    bodies = [json.dumps(publish_body("floor", f"1.0.{i}")).encode() for i in range(publishes)]
    connection = http.client.HTTPConnection("127.0.0.1", port[0], timeout=30)
    headers = {"Content-Type": "application/json"}

    def put(index: int) -> None:
        connection.request("PUT", "/floor", body=bodies[index], headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            raise RuntimeError(f"the floor server answered {response.status}")

    try:
        _timed(min(publishes, 50), put)  # warm-up
        return _floor("http_put", _timed(publishes, put))
    finally:
        connection.close()
        for task in asyncio.all_tasks(loops[0]):
            loops[0].call_soon_threadsafe(task.cancel)
        server.join(10)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks publish-floor", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default=str(Path(__file__).parent / ".work"),
                        help="a directory on the disk the published store would be on (default: benchmarks/.work)")
    parser.add_argument("--publishes", type=int, default=300, help="publishes per measurement")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(list(argv))
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    floors = [*disk_floors(Path(args.dir), args.publishes), http_floor(args.publishes)]
    by_name = {f.name: f for f in floors}
    ceiling = 1000 / (by_name["durable_writes"].p50_ms + by_name["http_put"].p50_ms)
    info = machine()
    if args.json:
        for floor in floors:
            print(json.dumps({**asdict(floor), "machine": info}))
        print(json.dumps({"name": "ceiling_publishes_per_s", "value": round(ceiling, 1), "machine": info}))
        return 0
    print(f"# machine: nproc={info['nproc']} cpu={info['cpu']!r} python={info['python']}; disk: {args.dir}")
    print(f"{'floor':<20} {'n':>5} {'p10':>9} {'p50':>9} {'p90':>9}")
    for floor in floors:
        print(f"{floor.name:<20} {floor.n:>5} {floor.p10_ms:>6.2f} ms {floor.p50_ms:>6.2f} ms {floor.p90_ms:>6.2f} ms")
    print(f"ceiling (durable_writes + http_put, medians): {ceiling:.0f} publishes/s")
    sys.stdout.flush()
    return 0
