"""The benchmark corpus: synthetic generation, loading, project rebasing, capture."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import corpus as corpus_module
from benchmarks.corpus import (
    PLACEHOLDER_BASE,
    CaptureFailed,
    Corpus,
    capture,
    integrity_matches,
    load,
    open_corpus,
    tarball_url_path,
    url_path,
    write_project,
)
from benchmarks.corpus_synthetic import synthesize
from benchmarks.static_upstream import StaticUpstream
from tests.benchmarks.conftest import SMALL_SCALE, requires_npm


def _tree(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _lock(corpus: Corpus) -> dict[str, dict[str, Any]]:
    packages: dict[str, dict[str, Any]] = json.loads((corpus.project / "package-lock.json").read_text())["packages"]
    return packages


def test_synthetic_corpus_is_deterministic(small_corpus: Corpus, tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", scale=SMALL_SCALE)
    assert _tree(again.root) == _tree(small_corpus.root)
    other = synthesize(tmp_path / "other", scale=SMALL_SCALE, seed=99)
    assert other.names != small_corpus.names


def test_synthetic_corpus_has_the_scenarios_shape(small_corpus: Corpus) -> None:
    manifest = small_corpus.manifest()
    assert small_corpus.kind == "synthetic"
    assert list(small_corpus.names) == sorted(small_corpus.names) and len(small_corpus.names) >= 12
    assert {small_corpus.small, small_corpus.huge} == {"ms", "typescript"}
    assert any(name.startswith("@") for name in small_corpus.names)
    sizes = {name: small_corpus.packument_file(name).stat().st_size for name in small_corpus.names}
    assert max(sizes, key=sizes.__getitem__) == small_corpus.huge
    assert manifest["huge_bytes"] == sizes[small_corpus.huge]
    assert manifest["packument_bytes"] == sum(sizes.values())
    tarballs = dict(small_corpus.tarballs())
    assert len(tarballs) == len(small_corpus.names)
    assert manifest["tarball_bytes"] == sum(path.stat().st_size for path in tarballs.values())
    largest = max(tarballs, key=lambda key: tarballs[key].stat().st_size)
    assert largest == small_corpus.tarball_large and small_corpus.tarball_small in tarballs
    assert manifest["captured"] is None


def test_every_locked_version_has_a_matching_tarball_and_dist(small_corpus: Corpus) -> None:
    lock = _lock(small_corpus)
    for key, entry in lock.items():
        if not key:
            continue
        name = key.removeprefix("node_modules/")
        version = str(entry["version"])
        resolved, integrity = str(entry["resolved"]), str(entry["integrity"])
        assert resolved == PLACEHOLDER_BASE + tarball_url_path(name, version)
        data = small_corpus.tarball_file(resolved.removeprefix(PLACEHOLDER_BASE)).read_bytes()
        assert integrity_matches(data, integrity)
        dist = orjson.loads(small_corpus.packument_file(name).read_bytes())["versions"][version]["dist"]
        assert dist["integrity"] == integrity and dist["tarball"] == resolved
        assert dist["shasum"] == hashlib.sha1(data).hexdigest()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            member = tar.extractfile("package/package.json")
            assert member is not None
            inner = json.loads(member.read())
        assert (inner["name"], inner["version"]) == (name, version)
        assert inner["dependencies"] == entry.get("dependencies", {})


def test_lockfile_tree_is_consistent_and_complete(small_corpus: Corpus) -> None:
    lock = _lock(small_corpus)
    package_json = json.loads((small_corpus.project / "package.json").read_text())
    assert lock[""]["dependencies"] == package_json["dependencies"]
    reached: set[str] = set()
    pending = list(package_json["dependencies"].items())
    while pending:
        name, spec = pending.pop()
        entry = lock[f"node_modules/{name}"]
        assert str(spec).lstrip("^") == entry["version"]  # exact pins and ^locked ranges
        if name not in reached:
            reached.add(name)
            pending.extend(entry.get("dependencies", {}).items())
    assert reached == set(small_corpus.names)
    for name in small_corpus.names:
        doc = orjson.loads(small_corpus.packument_file(name).read_bytes())
        assert doc["dist-tags"]["latest"] == lock[f"node_modules/{name}"]["version"]
        assert all(v["dist"]["tarball"].startswith(PLACEHOLDER_BASE + "/") for v in doc["versions"].values())


def test_write_project_rebases_the_lockfile(small_corpus: Corpus, tmp_path: Path) -> None:
    dest = write_project(small_corpus, tmp_path / "project", "http://127.0.0.1:9/")
    lock = (dest / "package-lock.json").read_text()
    assert PLACEHOLDER_BASE not in lock
    assert '"resolved": "http://127.0.0.1:9/ms/-/ms-' in lock
    assert (dest / ".npmrc").read_text().startswith("registry=http://127.0.0.1:9/\n")
    assert (dest / "package.json").read_bytes() == (small_corpus.project / "package.json").read_bytes()


def test_url_paths() -> None:
    assert url_path("ms") == "/ms"
    assert url_path("@types/node") == "/@types%2fnode"
    assert tarball_url_path("@types/node", "20.1.0") == "/@types/node/-/node-20.1.0.tgz"


def test_integrity_matches() -> None:
    data = b"tarball"
    assert integrity_matches(data, corpus_module.sri_sha512(data))
    assert not integrity_matches(b"other", corpus_module.sri_sha512(data))
    assert not integrity_matches(data, "")


def test_open_and_load(
    small_corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert open_corpus(tmp_path / "nothing") is None
    assert open_corpus(small_corpus.root) == small_corpus
    with pytest.raises(ValueError):
        load("bogus", root=tmp_path)
    synthesize(tmp_path / "synthetic", scale=SMALL_SCALE)

    def no_network(dest: Path) -> Corpus:
        raise CaptureFailed("no registry here")

    monkeypatch.setattr(corpus_module, "capture", no_network)
    loaded = load("auto", root=tmp_path)
    assert loaded.kind == "synthetic" and loaded.names == small_corpus.names
    assert "no registry here" in capsys.readouterr().err
    with pytest.raises(CaptureFailed):
        load("real", root=tmp_path)


@requires_npm
@pytest.mark.e2e
def test_capture_from_a_static_upstream_reproduces_the_corpus(small_corpus: Corpus, tmp_path: Path) -> None:
    """Capture end to end, offline: the synthetic corpus served on 127.0.0.1 is the registry."""
    deps = json.loads((small_corpus.project / "package.json").read_text())["dependencies"]
    with StaticUpstream(small_corpus, tmp_path / "upstream") as upstream:
        captured = capture(tmp_path / "real", registry=upstream.url, dependencies=[f"{n}@{v}" for n, v in deps.items()])
    assert captured.kind == "real" and captured.names == small_corpus.names
    assert (captured.small, captured.tarball_small, captured.tarball_large) == (
        small_corpus.small,
        small_corpus.tarball_small,
        small_corpus.tarball_large,
    )
    for name in small_corpus.names:
        assert captured.packument_file(name).read_bytes() == small_corpus.packument_file(name).read_bytes()
    assert {path: file.read_bytes() for path, file in captured.tarballs()} == {
        path: file.read_bytes() for path, file in small_corpus.tarballs()
    }
    assert {k: (v["resolved"], v["integrity"]) for k, v in _lock(captured).items() if k} == {
        k: (v["resolved"], v["integrity"]) for k, v in _lock(small_corpus).items() if k
    }
    assert upstream.url not in json.dumps(captured.manifest())


def test_capture_fails_cleanly_without_a_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("npm_config_fetch_retries", "0")  # npm would back off for a minute
    with pytest.raises(CaptureFailed):
        capture(tmp_path / "real", registry="http://127.0.0.1:9", dependencies=["ms"])
    assert not (tmp_path / "real").exists() and not (tmp_path / "real.partial").exists()
