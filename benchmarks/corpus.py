"""The package corpus the side-by-side benchmark serves, and how to get one.

A corpus is a dependency tree frozen on disk: every package's full packument,
the tarball of every locked version, and a project (``package.json`` +
``package-lock.json``) that installs exactly that tree. Tarball URLs inside
the stored files start with :data:`PLACEHOLDER_BASE`; whoever serves the
corpus rewrites them to its own address, so nothing stored points at a real
host and no measurement can reach the network.

Two kinds live side by side under ``benchmarks/corpus/`` (git-ignored):

* ``real``: captured once from the configured upstream (``npm config get
  registry``, read at run time) by resolving :data:`CAPTURE_DEPENDENCIES`;
* ``synthetic``: generated deterministically (:mod:`benchmarks.corpus_synthetic`)
  with the same shape, for machines without a registry.

Layout of ``<root>`` (``corpus.json`` is written last, so its presence means
the corpus is complete)::

    corpus.json                         manifest: names, scenarios, byte totals
    packuments/<name>.json              full packument (scoped: @scope/name.json)
    tarballs/<name>/-/<file>.tgz        mirrors the tarball URL path
    project/package.json, package-lock.json
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

PLACEHOLDER_BASE = "http://corpus.invalid"
CORPUS_ROOT = Path(__file__).resolve().parent / "corpus"
MANIFEST = "corpus.json"
KINDS = ("real", "synthetic")

#: What the real corpus resolves: a typical web project's direct dependencies.
#: typescript stays on its last 5.x line: from 7.0 its tarball is a 0.4 MB
#: launcher plus twenty ~10 MB per-platform binaries, while the large-tarball
#: scenario wants the classic multi-megabyte compiler package.
CAPTURE_DEPENDENCIES = ("express", "react", "react-dom", "typescript@5", "@types/node", "lodash", "eslint")
SMALL = "ms"
HUGE = "typescript"
PROJECT_NAME = "overlaystore-bench-corpus"

_CAPTURE_WORKERS = 8
_FETCH_ATTEMPTS = 3
_USER_AGENT = "overlaystore-bench-corpus"


class CaptureFailed(Exception):
    """The real corpus could not be captured here; the message says why."""


@dataclass(frozen=True)
class Corpus:
    """A complete corpus on disk (see the module docstring for the layout)."""

    root: Path
    kind: str
    names: tuple[str, ...]
    small: str
    huge: str
    tarball_small: str
    tarball_large: str
    #: URL path of every tarball, sorted
    tarball_paths: tuple[str, ...] = ()

    def packument_file(self, name: str) -> Path:
        return self.root / "packuments" / f"{name}.json"

    def tarballs(self) -> Iterator[tuple[str, Path]]:
        for path in self.tarball_paths:
            yield path, self.tarball_file(path)

    def tarball_file(self, url_path: str) -> Path:
        return self.root / "tarballs" / url_path.lstrip("/")

    @property
    def project(self) -> Path:
        return self.root / "project"

    def manifest(self) -> dict[str, Any]:
        """``corpus.json``: also byte totals and the capture date."""
        data: dict[str, Any] = json.loads((self.root / MANIFEST).read_text())
        return data


def url_path(name: str) -> str:
    """The packument URL path of ``name`` (``/@types%2fnode``), as npm sends it."""
    return "/" + name.replace("/", "%2f")


def tarball_url_path(name: str, version: str) -> str:
    """``/<name>/-/<basename>-<version>.tgz``, the canonical tarball path."""
    return f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"


def load(kind: str = "auto", *, root: Path = CORPUS_ROOT) -> Corpus:
    """The corpus of ``kind`` (``real``, ``synthetic`` or ``auto``), creating it if absent.

    ``auto`` prefers the real corpus, capturing it when missing, and falls back
    to the synthetic one (with the reason printed) when capture fails.
    """
    if kind == "synthetic":
        from benchmarks.corpus_synthetic import synthesize

        return open_corpus(root / "synthetic") or synthesize(root / "synthetic")
    if kind == "real":
        return open_corpus(root / "real") or capture(root / "real")
    if kind == "auto":
        existing = open_corpus(root / "real")
        if existing is not None:
            return existing
        try:
            return capture(root / "real")
        except CaptureFailed as exc:
            print(f"corpus: no real corpus ({exc}); using the synthetic one", file=sys.stderr)
        return load("synthetic", root=root)
    raise ValueError(f"unknown corpus kind {kind!r} (real, synthetic or auto)")


def open_corpus(root: Path) -> Corpus | None:
    """The corpus at ``root``, or None when none is complete there."""
    try:
        data = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    return Corpus(
        root=root,
        kind=data["kind"],
        names=tuple(data["names"]),
        small=data["small"],
        huge=data["huge"],
        tarball_small=data["tarball_small"],
        tarball_large=data["tarball_large"],
        tarball_paths=tuple(data["tarballs"]),
    )


def write_project(corpus: Corpus, dest: Path, registry_base: str) -> Path:
    """Copy the corpus project to ``dest`` with its lockfile rebased on ``registry_base``.

    The ``.npmrc`` written next to it points npm at the same registry and turns
    off audit, fund and the update check: each would otherwise send requests
    the peer might forward upstream, off the loopback and into the timing.
    """
    base = registry_base.rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus.project / "package.json", dest / "package.json")
    lock = (corpus.project / "package-lock.json").read_text()
    (dest / "package-lock.json").write_text(lock.replace(f'"{PLACEHOLDER_BASE}/', f'"{base}/'))
    (dest / ".npmrc").write_text(f"registry={base}/\naudit=false\nfund=false\nupdate-notifier=false\n")
    return dest


def describe(corpus: Corpus) -> str:
    """One line for reports: kind, size and origin date of the corpus."""
    data = corpus.manifest()
    when = f", captured {data['captured']}" if data.get("captured") else f", seed {data.get('seed')}"
    return (
        f"{corpus.kind} corpus: {len(corpus.names)} packages, "
        f"{data['packument_bytes'] / 2**20:.1f} MiB packuments, {data['tarball_bytes'] / 2**20:.1f} MiB tarballs; "
        f"{corpus.huge} {data['huge_bytes'] / 2**20:.1f} MiB with {data['huge_versions']} versions{when}"
    )


def write_manifest(staging: Path, manifest: dict[str, Any], dest: Path) -> Corpus:
    """Write ``corpus.json`` (last, it marks completeness) and move ``staging`` to ``dest``."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    corpus = open_corpus(dest)
    assert corpus is not None
    return corpus


def integrity_matches(data: bytes, integrity: str) -> bool:
    """Whether ``data`` matches an SRI string (``sha512-<base64>``, maybe several)."""
    checked = False
    for token in integrity.split():
        algorithm, _, digest = token.partition("-")
        if algorithm not in hashlib.algorithms_available:
            continue
        if base64.b64encode(hashlib.new(algorithm, data).digest()).decode() != digest.split("?")[0]:
            return False
        checked = True
    return checked


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


# -- capture ---------------------------------------------------------------


@dataclass(frozen=True)
class _Locked:
    """One installed package of the lockfile."""

    key: str  # "node_modules/a/node_modules/b"
    name: str
    version: str
    resolved: str
    integrity: str


def npm_registry() -> str:
    """The configured upstream (``npm config get registry``), without trailing slash."""
    try:
        result = subprocess.run(
            ["npm", "config", "get", "registry"], capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise CaptureFailed(f"cannot ask npm for the registry: {exc}") from exc
    registry = result.stdout.strip().rstrip("/")
    if not registry.startswith(("http://", "https://")):
        raise CaptureFailed(f"npm reports no usable registry ({registry!r})")
    return registry


def capture(
    dest: Path,
    *,
    registry: str | None = None,
    dependencies: Sequence[str] = CAPTURE_DEPENDENCIES,
    workers: int = _CAPTURE_WORKERS,
) -> Corpus:
    """Resolve ``dependencies`` against the upstream and store the tree at ``dest``.

    The only network access of the harness: one ``npm install
    --package-lock-only`` (throwaway cache on tmpfs), then every packument in
    full and every locked tarball, integrity-checked against the lockfile.
    """
    base = (registry or npm_registry()).rstrip("/")
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    scratch = Path(tempfile.mkdtemp(prefix="corpus-capture-", dir=_tmpfs()))
    try:
        (staging / "project").mkdir(parents=True)
        package_json, lock = _resolve(dependencies, scratch, base)
        locked = _locked_packages(lock, base)
        names = sorted({item.name for item in locked})
        for required in (SMALL, HUGE):
            if required not in names:
                raise CaptureFailed(f"the resolved tree has no {required!r}")
        unique = {item.resolved: item for item in locked}
        packument_bytes = tarball_bytes = 0
        sizes: dict[str, int] = {}
        with (
            ThreadPoolExecutor(workers) as pool,
            tqdm(total=len(names) + len(unique), unit="file", desc="capture", file=sys.stderr) as bar,
        ):
            packuments = {pool.submit(_capture_packument, base, name, staging): name for name in names}
            tarballs = {pool.submit(_capture_tarball, base, item, staging): item for item in unique.values()}
            for future in as_completed([*packuments, *tarballs]):
                size = future.result()
                if future in packuments:
                    packument_bytes += size
                    sizes[packuments[future]] = size
                else:
                    tarball_bytes += size
                bar.update()
                bar.set_postfix_str(f"{(packument_bytes + tarball_bytes) / 2**20:.0f} MiB")
        _rebase_lock(lock, locked, base, staging)
        (staging / "project" / "package.json").write_text(json.dumps(package_json, indent=2) + "\n")
        (staging / "project" / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n")
        huge_doc = orjson.loads(staging.joinpath("packuments", f"{HUGE}.json").read_bytes())
        large = _hoisted(locked, HUGE)
        manifest = {
            "kind": "real",
            "captured": date.today().isoformat(),
            "packages": len(names),
            "names": names,
            "small": SMALL,
            "huge": HUGE,
            "tarball_small": _rebase_path(base, _hoisted(locked, SMALL).resolved),
            "tarball_large": _rebase_path(base, large.resolved),
            "tarballs": sorted(_rebase_path(base, url) for url in unique),
            "packument_bytes": packument_bytes,
            "tarball_bytes": tarball_bytes,
            "huge_bytes": sizes[HUGE],
            "huge_versions": len(huge_doc.get("versions", {})),
            "tarball_large_bytes": staging.joinpath("tarballs", _rebase_path(base, large.resolved)[1:]).stat().st_size,
            "dependencies": package_json.get("dependencies", {}),
        }
        return write_manifest(staging, manifest, dest)
    except CaptureFailed:
        raise
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        raise CaptureFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def _tmpfs() -> str | None:
    # npm's cache does thousands of small writes; keep them off the disk.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _resolve(dependencies: Sequence[str], scratch: Path, registry: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``npm install --package-lock-only --save-exact``: package.json and lockfile."""
    project = scratch / "project"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": PROJECT_NAME, "version": "1.0.0", "private": True}, indent=2) + "\n"
    )
    env = dict(os.environ, npm_config_cache=str(scratch / "npm-cache"), npm_config_registry=registry + "/")
    command = [
        "npm", "install", "--package-lock-only", "--ignore-scripts", "--no-audit", "--no-fund",
        "--save-exact", *dependencies,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise CaptureFailed(f"npm install failed: {(result.stderr or result.stdout).strip()[-500:]}")
    package_json = json.loads((project / "package.json").read_text())
    lock = json.loads((project / "package-lock.json").read_text())
    if lock.get("lockfileVersion", 0) < 2:
        raise CaptureFailed(f"npm wrote lockfile version {lock.get('lockfileVersion')}; need 2 or 3")
    return package_json, lock


def _locked_packages(lock: dict[str, Any], registry: str) -> list[_Locked]:
    found = []
    for key, entry in lock["packages"].items():
        # the root, workspace links and bundled dependencies have no tarball of their own
        if not key or entry.get("link") or entry.get("inBundle") or "version" not in entry:
            continue
        name = entry.get("name") or key.rpartition("node_modules/")[2]
        # npm leaves "resolved" out under omit-lockfile-registry-resolved: then
        # the tarball is at its canonical place in the registry
        resolved = entry.get("resolved") or registry + tarball_url_path(name, entry["version"])
        found.append(_Locked(key, name, entry["version"], resolved, entry.get("integrity", "")))
    return found


def _rebase_lock(lock: dict[str, Any], locked: list[_Locked], registry: str, staging: Path) -> None:
    """Point every entry's ``resolved`` at :data:`PLACEHOLDER_BASE`, in npm's key order."""
    packages = lock["packages"]
    for item in locked:
        path = _rebase_path(registry, item.resolved)
        integrity = item.integrity or sri_sha512(staging.joinpath("tarballs", path[1:]).read_bytes())
        entry = packages[item.key]
        head = {"version": entry["version"], "resolved": PLACEHOLDER_BASE + path, "integrity": integrity}
        packages[item.key] = head | {k: v for k, v in entry.items() if k not in head}


def _hoisted(locked: list[_Locked], name: str) -> _Locked:
    """The top-level copy of ``name`` (the one npm installs for the root)."""
    candidates = [item for item in locked if item.name == name]
    return next((item for item in candidates if item.key == f"node_modules/{name}"), candidates[0])


def _rebase_path(registry: str, url: str) -> str:
    """The URL path of ``url`` below ``registry`` (``/ms/-/ms-2.1.3.tgz``)."""
    path = url[len(registry) :] if url.startswith(registry + "/") else urllib.parse.urlsplit(url).path
    path = urllib.parse.unquote(path.split("?")[0])
    if not path.startswith("/") or any(part in ("", ".", "..") for part in path[1:].split("/")):
        raise CaptureFailed(f"unexpected tarball URL path {path!r}")
    return path


def _fetch(url: str, accept: str) -> bytes:
    request = urllib.request.Request(
        url, headers={"Accept": accept, "Accept-Encoding": "gzip", "User-Agent": _USER_AGENT}
    )
    for attempt in range(_FETCH_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body: bytes = response.read()
                if response.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                return body
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == _FETCH_ATTEMPTS - 1:
                raise CaptureFailed(f"GET {urllib.parse.urlsplit(url).path}: HTTP {exc.code}") from exc
        except OSError as exc:
            if attempt == _FETCH_ATTEMPTS - 1:
                raise CaptureFailed(f"GET {urllib.parse.urlsplit(url).path}: {exc}") from exc
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _capture_packument(registry: str, name: str, staging: Path) -> int:
    doc = orjson.loads(_fetch(registry + url_path(name), "application/json"))
    for manifest in (doc.get("versions") or {}).values():
        dist = manifest.get("dist") if isinstance(manifest, dict) else None
        if isinstance(dist, dict) and isinstance(dist.get("tarball"), str):
            try:
                dist["tarball"] = PLACEHOLDER_BASE + _rebase_path(registry, dist["tarball"])
            except CaptureFailed:
                # an odd URL of a version nobody installs: its canonical path, never a real host
                dist["tarball"] = PLACEHOLDER_BASE + tarball_url_path(name, str(manifest.get("version")))
    body = orjson.dumps(doc)
    target = staging / "packuments" / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(body)
    return len(body)


def _capture_tarball(registry: str, item: _Locked, staging: Path) -> int:
    data = _fetch(item.resolved, "application/octet-stream")
    if item.integrity and not integrity_matches(data, item.integrity):
        raise CaptureFailed(f"{item.name}@{item.version}: tarball does not match the lockfile's integrity")
    target = staging / "tarballs" / _rebase_path(registry, item.resolved)[1:]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return len(data)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.corpus [real|synthetic|auto]``: create if needed, describe."""
    args = list(sys.argv[1:] if argv is None else argv)
    kind = args[0] if args else "auto"
    try:
        corpus = load(kind)
    except CaptureFailed as exc:
        print(f"corpus: capture failed: {exc}", file=sys.stderr)
        return 1
    print(describe(corpus))
    print(f"at {corpus.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
