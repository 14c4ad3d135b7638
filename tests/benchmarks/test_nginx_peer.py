"""The nginx static peer: pre-rendered variants, gzip_static, tarballs, 304s."""

from __future__ import annotations

import gzip
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import nginx_peer
from benchmarks.corpus import PLACEHOLDER_BASE, Corpus, url_path
from benchmarks.nginx_peer import ABBREVIATED, NginxPeer
from benchmarks.peer import PeerUnavailable
from tests.benchmarks.conftest import requires_nginx

NPM_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


class _Source(ThreadingHTTPServer):
    """Stands in for a warm overlaystore: both variants of every corpus packument."""

    corpus: Corpus
    url: str


class _Handler(BaseHTTPRequestHandler):
    server: _Source

    def do_GET(self) -> None:
        name = urllib.parse.unquote(self.path[1:])
        file = self.server.corpus.packument_file(name)
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes().replace(PLACEHOLDER_BASE.encode(), self.server.url.encode())
        content_type = "application/json"
        if ABBREVIATED in self.headers.get("Accept", ""):
            content_type = ABBREVIATED
            body = orjson.dumps(_abbreviate(orjson.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _abbreviate(doc: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "version", "dependencies", "dist")
    versions = {v: {k: m[k] for k in keep if k in m} for v, m in doc["versions"].items()}
    return {"name": doc["name"], "dist-tags": doc["dist-tags"], "versions": versions}


@pytest.fixture
def source(small_corpus: Corpus) -> Iterator[str]:
    server = _Source(("127.0.0.1", 0), _Handler)
    server.corpus = small_corpus
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), error.read()


def _from_source(source: str, peer: NginxPeer, name: str, accept: str) -> bytes:
    return _get(source + url_path(name), Accept=accept)[2].replace(source.encode(), peer.base_url.encode())


@requires_nginx
def test_serves_overlaystores_bytes(small_corpus: Corpus, source: str, tmp_path: Path) -> None:
    peer = NginxPeer(tmp_path)
    assert (peer.name, peer.is_proxy, peer.can_publish) == ("nginx", False, False)
    peer.setup("http://127.0.0.1:9")
    peer.prepare(small_corpus, source)
    peer.start()
    try:
        assert len(peer.pids()) == 1 + nginx_peer.WORKERS
        scoped = next(name for name in small_corpus.names if name.startswith("@"))
        for name in ("ms", small_corpus.huge, scoped):
            for accept, content_type in (("application/json", "application/json"), (NPM_ACCEPT, ABBREVIATED)):
                expected = _from_source(source, peer, name, accept)
                status, headers, body = _get(peer.base_url + url_path(name), Accept=accept)
                assert (status, headers["Content-Type"], body) == (200, content_type, expected)
                assert headers["Vary"] == "Accept, Accept-Encoding"
                status, headers, body = _get(
                    peer.base_url + url_path(name), Accept=accept, **{"Accept-Encoding": "gzip"}
                )
                assert (status, headers["Content-Type"], headers["Content-Encoding"]) == (200, content_type, "gzip")
                assert gzip.decompress(body) == expected

        full = orjson.loads(_get(peer.base_url + "/ms")[2])
        assert (
            full["versions"][full["dist-tags"]["latest"]]["dist"]["tarball"]
            == peer.base_url + small_corpus.tarball_small
        )
        assert _get(peer.base_url + url_path(scoped).replace("%2f", "%2F"))[0] == 200

        for path, file in small_corpus.tarballs():
            status, headers, body = _get(peer.base_url + path)
            assert (status, headers["Content-Type"], body) == (200, "application/octet-stream", file.read_bytes())

        etag = _get(peer.base_url + "/ms")[1]["ETag"]
        status, headers, body = _get(peer.base_url + "/ms", **{"If-None-Match": etag})
        assert (status, body) == (304, b"")

        for missing in ("/no-such-package", "/full/ms.json", "/ms/-/ms-0.0.0-none.tgz"):
            status, headers, body = _get(peer.base_url + missing)
            assert (status, headers["Content-Type"], orjson.loads(body)) == (
                404,
                "application/json",
                {"error": "Not found"},
            )
    finally:
        peer.stop()
    assert peer.pids() == []


@requires_nginx
def test_start_needs_setup_and_prepare(tmp_path: Path) -> None:
    peer = NginxPeer(tmp_path)
    with pytest.raises(PeerUnavailable, match="setup"):
        peer.start()
    peer.setup("http://127.0.0.1:9")
    with pytest.raises(PeerUnavailable, match="prepare"):
        peer.start()


def test_setup_without_nginx_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nginx_peer, "find_nginx", lambda: None)
    with pytest.raises(PeerUnavailable, match="nginx is not installed"):
        NginxPeer(tmp_path).setup("http://127.0.0.1:9")
