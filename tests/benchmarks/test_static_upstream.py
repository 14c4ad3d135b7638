"""The fake upstream: registry URLs over a corpus, on nginx or the aiohttp fallback."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from benchmarks.corpus import PLACEHOLDER_BASE, Corpus, url_path, write_project
from benchmarks.static_upstream import StaticUpstream
from tests.benchmarks.conftest import requires_npm, servers


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get_content_type(), error.read()


@pytest.mark.parametrize("server", servers())
def test_serves_the_corpus_with_urls_pointing_at_itself(small_corpus: Corpus, tmp_path: Path, server: str) -> None:
    with StaticUpstream(small_corpus, tmp_path / "upstream", prefer=server) as upstream:
        assert upstream.server == server and upstream.url.startswith("http://127.0.0.1:")
        assert upstream.pids()
        status, content_type, body = _get(upstream.url + "/ms")
        assert (status, content_type) == (200, "application/json")
        expected = (
            small_corpus.packument_file("ms").read_bytes().replace(PLACEHOLDER_BASE.encode(), upstream.url.encode())
        )
        assert body == expected
        tarball = orjson.loads(body)["versions"][orjson.loads(body)["dist-tags"]["latest"]]["dist"]["tarball"]
        assert tarball == upstream.url + small_corpus.tarball_small

        scoped = next(name for name in small_corpus.names if name.startswith("@"))
        spellings = {url_path(scoped), url_path(scoped).replace("%2f", "%2F"), "/" + scoped}
        bodies = {_get(upstream.url + spelling)[2] for spelling in spellings}
        assert len(bodies) == 1 and orjson.loads(bodies.pop())["name"] == scoped

        for path, file in small_corpus.tarballs():
            assert _get(upstream.url + path) == (200, "application/octet-stream", file.read_bytes())

        for missing in ("/no-such-package", "/@nope%2fnothing", "/ms/-/ms-0.0.0-none.tgz"):
            status, content_type, body = _get(upstream.url + missing)
            assert (status, content_type) == (404, "application/json") and json.loads(body)["error"]
        url = upstream.url
    with pytest.raises(urllib.error.URLError):
        _get(url + "/ms")


@requires_npm
@pytest.mark.e2e
def test_npm_ci_installs_the_project_from_it(small_corpus: Corpus, tmp_path: Path, shm_dir: Path) -> None:
    with StaticUpstream(small_corpus, tmp_path / "upstream") as upstream:
        project = write_project(small_corpus, shm_dir / "project", upstream.url)
        result = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--cache", str(shm_dir / "npm-cache")],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    for name in small_corpus.names:
        installed = json.loads((project / "node_modules" / name / "package.json").read_text())
        assert installed["name"] == name
