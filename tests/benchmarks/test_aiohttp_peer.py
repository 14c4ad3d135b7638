"""The aiohttp reference peer: the nginx peer's folder, answered like nginx does."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.aiohttp_peer import AiohttpPeer
from benchmarks.nginx_peer import ABBREVIATED
from benchmarks.peer import PeerUnavailable

FULL = b'{"name":"left-pad","versions":{"1.0.0":{"readme":"long"}}}'
ABBR = b'{"name":"left-pad","versions":{"1.0.0":{}}}'
SCOPED = b'{"name":"@acme/widget"}'
TARBALL = b"\x1f\x8b tarball bytes"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AiohttpPeer]:
    www = tmp_path_factory.mktemp("nginx") / "www"
    for relative, data in {
        "full/left-pad.json": FULL,
        "full/left-pad.json.gz": gzip.compress(FULL),
        "abbreviated/left-pad.json": ABBR,
        "abbreviated/left-pad.json.gz": gzip.compress(ABBR),
        "full/@acme/widget.json": SCOPED,
        "tarballs/left-pad/-/left-pad-1.0.0.tgz": TARBALL,
    }.items():
        (www / relative).parent.mkdir(parents=True, exist_ok=True)
        (www / relative).write_bytes(data)
    peer = AiohttpPeer(www, tmp_path_factory.mktemp("work"))
    peer.setup("http://127.0.0.1:9")
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def get(peer: AiohttpPeer, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(peer.base_url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_variants_and_encodings(peer: AiohttpPeer) -> None:
    status, headers, body = get(peer, "/left-pad")
    assert (status, body, headers["Content-Type"]) == (200, FULL, "application/json")
    assert "Content-Encoding" not in headers
    status, headers, body = get(peer, "/left-pad", Accept=ABBREVIATED + ", application/json")
    assert (status, body, headers["Content-Type"]) == (200, ABBR, ABBREVIATED)
    status, headers, body = get(peer, "/left-pad", **{"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(body) == FULL
    assert headers["Vary"] == "Accept, Accept-Encoding"


def test_scoped_names_tarballs_and_misses(peer: AiohttpPeer) -> None:
    assert get(peer, "/@acme%2fwidget")[2] == SCOPED
    # no .gz file: the plain one, unencoded
    status, headers, body = get(peer, "/@acme%2fwidget", **{"Accept-Encoding": "gzip"})
    assert (status, body) == (200, SCOPED) and "Content-Encoding" not in headers
    status, headers, body = get(peer, "/left-pad/-/left-pad-1.0.0.tgz")
    assert (status, body, headers["Content-Type"]) == (200, TARBALL, "application/octet-stream")
    assert get(peer, "/nope")[0] == 404
    assert get(peer, "/left-pad/-/left-pad-9.9.9.tgz")[0] == 404


def test_revalidation(peer: AiohttpPeer) -> None:
    etag = get(peer, "/left-pad")[1]["ETag"]
    status, _, body = get(peer, "/left-pad", **{"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert get(peer, "/left-pad", **{"If-None-Match": '"other"'})[0] == 200


def test_needs_a_prepared_folder(tmp_path: Path) -> None:
    with pytest.raises(PeerUnavailable, match="prepares them"):
        AiohttpPeer(tmp_path / "www", tmp_path).setup("http://127.0.0.1:9")
