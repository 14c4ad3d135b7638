"""``overlaystore serve --workers 3`` as a real process tree: read-your-writes
across workers over HTTP and with the npm CLI, graceful shutdown, and a
worker that dies.

Every request goes out on a NEW connection, so the kernel (SO_REUSEPORT)
spreads them over the workers; ``X-Overlaystore-Worker`` says which one
answered. Before each publish, every worker is made to hold the packument in
its LRU (a proven hit), so the read right after the publish's 2xx tests the
cross-worker invalidation, not a cold cache. The watcher alone (tens of ms)
would not pass: the read follows the acknowledgement within about a
millisecond.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import FakeUpstream
from tests.helpers.processes import children_running
from tests.npmdata import publish_body

from .conftest import Cli, Server

pytestmark = pytest.mark.e2e

WORKERS = 3
CYCLES = 50
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
_START_LINE = re.compile(r"overlaystore on http://\S+ .*, (\d+) workers \(pids ([\d, ]+)\)")


@dataclass
class WorkersServer(Server):
    """The real server with ``--workers N``; started when every worker listens."""

    workers: int = WORKERS
    pids: list[int] = field(default_factory=list)

    start_timeout: float = 60.0

    def extra_args(self) -> list[str]:
        return ["--workers", str(self.workers)]

    def ready(self) -> bool:
        """Ready once the supervisor's start line says every worker listens."""
        match = _START_LINE.search(self.log_path.read_text())
        if match is None:
            return False
        assert int(match[1]) == self.workers
        self.pids = [int(p) for p in match[2].split(", ")]
        return True

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def adduser(self, name: str) -> str:
        status, _, body = self.request("PUT", f"/-/user/org.couchdb.user:{name}", {
            "_id": f"org.couchdb.user:{name}", "name": name, "password": "s3cret-pass",
            "email": f"{name}@example.com", "type": "user", "roles": []})
        assert status == 201, body
        return str(json.loads(body)["token"])

    def warm(self, name: str) -> set[str]:
        """Until every worker has answered both packument forms of ``name``
        from its LRU (two requests per connection: the same worker)."""
        warm: set[str] = set()
        for _ in range(200):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                outcomes = []
                for accept in ("application/json", CORGI):
                    conn.request("GET", f"/{name}", headers={"Accept": accept})
                    resp = conn.getresponse()
                    resp.read()
                    assert resp.status == 200
                    worker = resp.getheader("X-Overlaystore-Worker")
                    outcomes.append(resp.getheader("X-Overlaystore-Cache"))
            finally:
                conn.close()
            if outcomes == ["hit", "hit"]:
                warm.add(str(worker))
                if len(warm) == self.workers:
                    return warm
        raise AssertionError(f"could not reach every worker: {warm}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def workers_server(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[WorkersServer]:
    srv = WorkersServer(tmp_path_factory.mktemp("workers"), upstream.url)
    srv.start()
    yield srv
    srv.stop()


def test_read_your_writes_across_workers(workers_server: WorkersServer) -> None:
    srv = workers_server
    token = srv.adduser("ryw")
    auth = {"Authorization": f"Bearer {token}"}
    name = "ryw-pkg"
    status, _, body = srv.request("PUT", f"/{name}", publish_body(name, "1.0.0"), auth)
    assert status == 201, body

    answered: Counter[str] = Counter()  # worker that served the first read after a publish
    cross = 0  # ... and was not the one that took the publish
    for i in range(1, CYCLES + 1):
        version = f"1.0.{i}"
        time.sleep(0.05)  # let the watchers report the previous publish, so the warm-up holds
        assert len(srv.warm(name)) == WORKERS
        pub = publish_body(name, version)
        status, headers, body = srv.request("PUT", f"/{name}", pub, auth)
        assert status == 201, body
        publisher = headers["x-overlaystore-worker"]

        # The very next request, on a new connection, whichever worker takes it.
        status, headers, body = srv.request("GET", f"/{name}")
        doc = json.loads(body)
        worker = headers["x-overlaystore-worker"]
        assert status == 200 and version in doc["versions"] and doc["dist-tags"]["latest"] == version, (
            f"cycle {i}: worker {worker} (publish on {publisher}) served {sorted(doc['versions'])[-3:]}, "
            f"{headers.get('x-overlaystore-cache')}")
        assert headers["x-overlaystore-cache"] == "miss"
        answered[worker] += 1
        cross += worker != publisher

        status, headers, body = srv.request("GET", f"/{name}", headers={"Accept": CORGI})
        assert status == 200 and version in json.loads(body)["versions"], f"cycle {i}: abbreviated"
        status, _, body = srv.request("GET", f"/{name}/{version}")
        assert status == 200 and json.loads(body)["version"] == version, f"cycle {i}: manifest"
        status, _, body = srv.request("GET", f"/{name}/-/{name}-{version}.tgz")
        assert status == 200 and body == base64.b64decode(
            pub["_attachments"][f"{name}-{version}.tgz"]["data"]), f"cycle {i}: tarball"

    print(f"first reads after a publish, by worker: {dict(answered)}; on another worker: {cross}/{CYCLES}")
    assert len(answered) == WORKERS  # the requests really spread
    assert cross >= CYCLES // 5


def test_npm_publish_then_install(workers_server: WorkersServer, tmp_path: Path) -> None:
    srv = workers_server
    token = srv.adduser("npmrw")
    home = tmp_path / "home"
    home.mkdir()
    cli = Cli(home, srv.url)
    cli.npmrc.write_text(f"registry={srv.url}/\n//127.0.0.1:{srv.port}/:_authToken={token}\n")
    name = "ryw-cli"
    for k in range(3):
        version = f"1.0.{k}"
        pkg = tmp_path / f"pkg{k}"
        pkg.mkdir()
        (pkg / "package.json").write_text(json.dumps({"name": name, "version": version, "main": "index.js"}))
        (pkg / "index.js").write_text(f"module.exports = {json.dumps(version)};\n")
        if k:
            srv.warm(name)  # every worker (and npm's own cache) holds the previous version
        cli.npm("publish", cwd=pkg)
        project = tmp_path / f"app{k}"
        project.mkdir()
        (project / "package.json").write_text(json.dumps({"name": "app", "version": "0.0.0", "private": True}))
        cli.npm("install", f"{name}@latest", cwd=project)
        installed = json.loads((project / "node_modules" / name / "package.json").read_text())
        assert installed["version"] == version


def test_one_watcher_for_all_workers_reports_an_operators_edit(workers_server: WorkersServer) -> None:
    """The supervisor watches the stores once (two watch children, not two
    per worker), and what it sees reaches every worker's LRU."""
    srv = workers_server
    assert srv.proc is not None
    assert len(children_running(srv.proc.pid, b"watch_child")) == 2
    assert all(not children_running(pid, b"watch_child") for pid in srv.pids)
    token = srv.adduser("operator-edit")
    name = "hand-edited"
    status, _, body = srv.request("PUT", f"/{name}", publish_body(name, "1.0.0"), {"Authorization": f"Bearer {token}"})
    assert status == 201, body
    time.sleep(0.1)  # the watchers' report of the publish itself
    srv.warm(name)
    # An operator's edit by hand (atomic replace), which no worker makes.
    meta_path = srv.root / "published" / name / "package-meta.json"
    meta = json.loads(meta_path.read_text())
    meta["dist-tags"]["beta"] = "1.0.0"
    temp = meta_path.with_name(".edit.json")
    temp.write_text(json.dumps(meta))
    os.replace(temp, meta_path)
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while len(seen) < WORKERS:
        assert time.monotonic() < deadline, f"only workers {seen} saw the edit"
        status, headers, body = srv.request("GET", f"/{name}")
        if json.loads(body)["dist-tags"].get("beta") == "1.0.0":
            seen.add(headers["x-overlaystore-worker"])
        else:
            time.sleep(0.01)


def test_any_worker_answers_every_workers_metrics(workers_server: WorkersServer) -> None:
    srv = workers_server
    name = "metrics-probe"
    answered = [srv.request("GET", f"/{name}")[1]["x-overlaystore-worker"] for _ in range(60)]
    assert len(set(answered)) == WORKERS  # the 404s spread over the workers
    scrapers: set[str] = set()
    for _ in range(30):
        status, headers, body = srv.request("GET", "/-/metrics")
        assert status == 200
        scrapers.add(headers["x-overlaystore-worker"])
        up: dict[str, float] = {}
        misses: dict[str, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == "overlaystore_worker_scrape_up":
                    up[sample.labels["worker"]] = sample.value
                elif (sample.name == "overlaystore_http_requests_total" and sample.labels["method"] == "GET"
                      and sample.labels["status"] == "404"):
                    misses[sample.labels["worker"]] = misses.get(sample.labels["worker"], 0) + sample.value
        workers = {str(i) for i in range(1, WORKERS + 1)}
        assert up == dict.fromkeys(workers, 1.0)
        # every worker's 404s, whichever worker answered the scrape
        assert set(misses) == workers and sum(misses.values()) >= len(answered)
    assert len(scrapers) > 1


def test_graceful_shutdown(workers_server: WorkersServer) -> None:
    """Runs last in this module: it stops the shared server."""
    srv = workers_server
    assert srv.proc is not None and all(_alive(pid) for pid in srv.pids)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=40) == 0
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in srv.pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in srv.pids)
    log = srv.log_path.read_text()
    assert "Traceback" not in log, log
    assert log.count("overlaystore on http://") == 1  # one start line, from the parent
    srv.proc = None


def test_a_dead_worker_stops_the_server(tmp_path: Path, upstream: FakeUpstream) -> None:
    srv = WorkersServer(tmp_path, upstream.url, workers=2)
    srv.start()
    try:
        os.kill(srv.pids[0], signal.SIGKILL)
        assert srv.proc is not None
        assert srv.proc.wait(timeout=40) == 1
        assert not _alive(srv.pids[1])
        assert "worker 1 (pid %d) was killed by SIGKILL; stopping the server" % srv.pids[0] in srv.log_path.read_text()
    finally:
        srv.stop()


def test_port_in_use_is_refused(tmp_path: Path, upstream: FakeUpstream) -> None:
    """A second server must never join another one's port through SO_REUSEPORT."""
    with socket.socket() as taken:  # as another multi-worker server would hold it
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        srv = WorkersServer(tmp_path, upstream.url, port=taken.getsockname()[1], workers=2)
        with pytest.raises(RuntimeError, match="cannot listen on"):
            srv.start()
        assert srv.proc is not None and srv.proc.wait(timeout=10) == 1
