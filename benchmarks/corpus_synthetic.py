"""A synthetic corpus with the real one's shape, for machines without a registry.

Deterministic for a given ``seed`` and ``scale``: the same bytes on every
machine, so results from different machines compare. At ``scale=1`` it has
~250 packages, ~50 MiB of packuments with one ~9 MB document of ~3,500
versions (``typescript``), a small one (``ms``), and ~17 MiB of tarballs up to
~5 MB; tests pass a small ``scale`` to get the same structure in milliseconds.

The tree installs: the lockfile (v3) is flat, every package's dependencies are
exact-major ranges (``^x.y.z``) of the locked versions of later packages, and
every locked version has a real gzip tarball (``package/package.json`` and a
filler ``package/index.js``) whose sha512 integrity and sha1 shasum are in
both the packument and the lockfile. Only locked versions have tarballs; the
other versions carry well-formed digests of nothing anyone downloads.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import random
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks.corpus import (
    HUGE,
    PLACEHOLDER_BASE,
    PROJECT_NAME,
    SMALL,
    Corpus,
    sri_sha512,
    tarball_url_path,
    write_manifest,
)

SYNTHETIC_SEED = 5
PACKAGES = 250
HUGE_VERSIONS = 3500
HUGE_TARBALL = 5_000_000
#: top-level dependencies of the project, like the real corpus's seven
ROOTS = 7
#: packages with many releases (react, eslint, @types/node-like)
LARGE = 4

_WORDS = (
    "array", "async", "babel", "body", "buffer", "cache", "call", "chalk", "color", "core", "debug", "deep",
    "define", "encode", "escape", "event", "fast", "file", "flat", "function", "glob", "graceful", "has",
    "http", "inherits", "is", "json", "lru", "merge", "mime", "minimatch", "object", "once", "parse", "path",
    "proxy", "punycode", "queue", "range", "raw", "safe", "semver", "send", "set", "signal", "source", "stream",
    "string", "supports", "through", "type", "uri", "util", "which", "wrap", "yallist", "keys", "bind", "proto",
)  # fmt: skip
_SCOPES = ("@synth", "@types", "@eslint-synth", "@babel-synth")
_EPOCH = datetime(2014, 1, 1, tzinfo=UTC)
_TAR_MTIME = 499162500  # npm pack's fixed 1985-10-26 mtime
# base64 of random bytes deflates to ~76% of its length; used to size the filler
_BASE64_DEFLATE_RATIO = 0.76


@dataclass(frozen=True)
class _Package:
    name: str
    versions: tuple[str, ...]
    latest: str
    dependencies: tuple[str, ...]
    dev_count: int
    readme_bytes: int
    tarball_bytes: int


def synthesize(root: Path, *, scale: float = 1.0, seed: int = SYNTHETIC_SEED) -> Corpus:
    """Generate the synthetic corpus at ``root`` (replacing any there) and return it."""
    packages = _plan(scale, seed)
    by_name = {package.name: package for package in packages}
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "project").mkdir(parents=True)
    try:
        locked: dict[str, dict[str, Any]] = {}
        packument_bytes = tarball_bytes = 0
        sizes: dict[str, int] = {}
        for package in packages:
            ranges = {dep: f"^{by_name[dep].latest}" for dep in package.dependencies}
            tarball = _tarball(package, ranges, seed)
            path = tarball_url_path(package.name, package.latest)
            target = staging / "tarballs" / path[1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tarball)
            tarball_bytes += len(tarball)
            dist = {
                "integrity": sri_sha512(tarball),
                "shasum": hashlib.sha1(tarball).hexdigest(),
                "tarball": PLACEHOLDER_BASE + path,
            }
            body = orjson.dumps(_packument(package, ranges, dist, seed))
            document = staging / "packuments" / f"{package.name}.json"
            document.parent.mkdir(parents=True, exist_ok=True)
            document.write_bytes(body)
            packument_bytes += len(body)
            sizes[package.name] = len(body)
            entry: dict[str, Any] = {
                "version": package.latest,
                "resolved": dist["tarball"],
                "integrity": dist["integrity"],
                "license": "MIT",
            }
            if ranges:
                entry["dependencies"] = ranges
            locked[f"node_modules/{package.name}"] = entry
        root_deps = {package.name: package.latest for package in packages[:ROOTS]}
        package_json = {
            "name": PROJECT_NAME,
            "version": "1.0.0",
            "private": True,
            "dependencies": dict(sorted(root_deps.items())),
        }
        lock = {
            "name": PROJECT_NAME,
            "version": "1.0.0",
            "lockfileVersion": 3,
            "requires": True,
            "packages": {"": {k: v for k, v in package_json.items() if k != "private"}} | dict(sorted(locked.items())),
        }
        (staging / "project" / "package.json").write_text(json.dumps(package_json, indent=2) + "\n")
        (staging / "project" / "package-lock.json").write_text(json.dumps(lock, indent=2) + "\n")
        tarball_large = tarball_url_path(HUGE, by_name[HUGE].latest)
        manifest = {
            "kind": "synthetic",
            "captured": None,
            "seed": seed,
            "scale": scale,
            "packages": len(packages),
            "names": sorted(by_name),
            "small": SMALL,
            "huge": HUGE,
            "tarball_small": tarball_url_path(SMALL, by_name[SMALL].latest),
            "tarball_large": tarball_large,
            "tarballs": sorted(tarball_url_path(p.name, p.latest) for p in packages),
            "packument_bytes": packument_bytes,
            "tarball_bytes": tarball_bytes,
            "huge_bytes": sizes[HUGE],
            "huge_versions": len(by_name[HUGE].versions),
            "tarball_large_bytes": (staging / "tarballs" / tarball_large[1:]).stat().st_size,
            "dependencies": package_json["dependencies"],
        }
        return write_manifest(staging, manifest, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plan(scale: float, seed: int) -> list[_Package]:
    """Names, release histories, sizes and the dependency DAG, roots first."""
    rng = random.Random(seed)
    count = max(12, round(PACKAGES * scale))
    names = _names(rng, count - 2)
    roots = [HUGE, *names[: ROOTS - 1]]
    rest = names[ROOTS - 1 :]
    # ms is a leaf somewhere in the middle of the tree, as it is in the real one
    rest.insert(rng.randrange(len(rest) + 1), SMALL)
    ordered = roots + rest
    leaves = {HUGE, SMALL}
    deps: dict[str, set[str]] = {name: set() for name in ordered}
    for index in range(ROOTS, len(ordered)):
        # one parent above it makes every package reachable from the project
        parents = [name for name in ordered[:index] if name not in leaves]
        deps[rng.choice(parents)].add(ordered[index])
    for index, name in enumerate(ordered):
        later = ordered[index + 1 :]
        if name not in leaves and later:
            deps[name].update(rng.sample(later, min(len(later), rng.choice((0, 0, 1, 1, 2, 3)))))
    large = set(roots[1 : 1 + LARGE])
    packages = []
    for name in ordered:
        if name == HUGE:
            count_versions, prerelease, dev, readme = max(20, round(HUGE_VERSIONS * scale)), 0.8, 45, 9000
            tarball = HUGE_TARBALL
        elif name == SMALL:
            count_versions, prerelease, dev, readme = 16, 0.0, 3, 4000
            tarball = 7000
        else:
            if name in large:
                count_versions = round(rng.randint(600, 1600) * scale)
            else:
                count_versions = round(min(500.0, rng.lognormvariate(math.log(40), 1.1)) * scale)
            prerelease = 0.4 if name in large else 0.1
            dev = rng.randint(0, 30)
            readme = round(min(60000.0, rng.lognormvariate(math.log(6000), 1.0)))
            tarball = round(min(2_000_000.0, rng.lognormvariate(math.log(24000), 1.3)))
        versions = _versions(rng, max(1, count_versions), prerelease)
        packages.append(
            _Package(
                name=name,
                versions=versions,
                latest=[v for v in versions if "-" not in v][-1],
                dependencies=tuple(sorted(deps[name])),
                dev_count=dev,
                readme_bytes=max(200, round(readme * min(1.0, scale * 4))),
                tarball_bytes=max(600, round(tarball * scale)),
            )
        )
    return packages


def _names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    seen = {HUGE, SMALL}
    while len(names) < count:
        base = "-".join(rng.sample(_WORDS, rng.choice((1, 2, 2, 3))))
        name = f"{rng.choice(_SCOPES)}/{base}" if rng.random() < 0.2 else base
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _versions(rng: random.Random, count: int, prerelease: float) -> tuple[str, ...]:
    """``count`` ascending release versions, a ``prerelease`` share of them nightlies."""
    major, minor, patch, nightly = rng.choice((0, 1, 1, 2)), 0, 0, 0
    out: list[str] = []
    while len(out) < count:
        # the last one is a release, so "latest" is the newest version
        if len(out) < count - 1 and rng.random() < prerelease:
            nightly += 1
            out.append(f"{major}.{minor + 1}.0-dev.{20140101 + nightly}")
            continue
        out.append(f"{major}.{minor}.{patch}")
        roll = rng.random()
        if roll < 0.03:
            major, minor, patch = major + 1, 0, 0
        elif roll < 0.2:
            minor, patch = minor + 1, 0
        else:
            patch += 1
    return tuple(out)


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)


def _digest_dist(identity: str, path: str) -> dict[str, Any]:
    """A well-formed ``dist`` for a version whose tarball nobody downloads."""
    seed = identity.encode()
    return {
        "integrity": "sha512-" + base64.b64encode(hashlib.sha512(seed).digest()).decode(),
        "shasum": hashlib.sha1(seed).hexdigest(),
        "tarball": PLACEHOLDER_BASE + path,
    }


def _packument(package: _Package, ranges: dict[str, str], locked_dist: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = random.Random(f"{seed}/packument/{package.name}")
    name = package.name
    slug = name.replace("@", "").replace("/", "-")
    description = _text(rng, 60)
    maintainers = [
        {"name": f"maintainer-{rng.randrange(1000)}", "email": f"m{i}@mail.invalid"} for i in range(rng.randint(1, 3))
    ]
    repository = {"type": "git", "url": f"git+https://git.invalid/synthetic/{slug}.git"}
    dev = {f"synth-dev-{_WORDS[k % len(_WORDS)]}-{k}": f"^{k % 7 + 1}.{k % 5}.0" for k in range(package.dev_count)}
    step = timedelta(days=3650) / len(package.versions)
    times: dict[str, str] = {}
    versions: dict[str, Any] = {}
    for index, version in enumerate(package.versions):
        stamp = _EPOCH + step * index
        times[version] = stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        identity = f"{name}@{version}"
        path = tarball_url_path(name, version)
        dist = dict(locked_dist) if version == package.latest else _digest_dist(identity, path)
        dist |= {
            "fileCount": 2,
            "unpackedSize": package.tarball_bytes * 4 // 3,
            "signatures": [
                {
                    "keyid": "SHA256:synthetic-corpus",
                    "sig": base64.b64encode(hashlib.sha256(identity.encode()).digest()).decode(),
                }
            ],
        }
        versions[version] = {
            "name": name,
            "version": version,
            "description": description,
            "license": "MIT",
            "main": "index.js",
            "author": maintainers[0],
            "repository": repository,
            "homepage": f"https://docs.invalid/{slug}#readme",
            "bugs": {"url": f"https://git.invalid/synthetic/{slug}/issues"},
            "scripts": {"test": "node test.js", "build": "tsc -p .", "lint": "eslint ."},
            "dependencies": ranges,
            "devDependencies": dev,
            "engines": {"node": ">=14"},
            "gitHead": hashlib.sha1(identity.encode()).hexdigest(),
            "_id": identity,
            "_nodeVersion": "20.11.0",
            "_npmVersion": "10.2.4",
            "dist": dist,
            "_npmUser": maintainers[0],
            "directories": {},
            "maintainers": maintainers,
            "_hasShrinkwrap": False,
        }
    tags = {"latest": package.latest}
    prereleases = [v for v in package.versions if "-" in v]
    if prereleases:
        tags["next"] = prereleases[-1]
    return {
        "_id": name,
        "_rev": f"{len(package.versions)}-{hashlib.md5(name.encode()).hexdigest()}",
        "name": name,
        "dist-tags": tags,
        "versions": versions,
        "time": {"created": times[package.versions[0]], "modified": times[package.versions[-1]], **times},
        "maintainers": maintainers,
        "description": description,
        "homepage": f"https://docs.invalid/{slug}#readme",
        "repository": repository,
        "author": maintainers[0],
        "license": "MIT",
        "readme": _text(rng, package.readme_bytes),
        "readmeFilename": "README.md",
    }


def _tarball(package: _Package, ranges: dict[str, str], seed: int) -> bytes:
    """A gzip tarball of ~``package.tarball_bytes``: package.json + filler."""
    rng = random.Random(f"{seed}/tarball/{package.name}")
    manifest = {
        "name": package.name,
        "version": package.latest,
        "description": "synthetic benchmark package",
        "main": "index.js",
        "license": "MIT",
        "dependencies": ranges,
    }
    filler_raw = max(0, round(package.tarball_bytes / _BASE64_DEFLATE_RATIO) - 400)
    files = {
        "package/package.json": json.dumps(manifest, indent=2).encode() + b"\n",
        "package/index.js": b"// synthetic filler\n" + base64.encodebytes(rng.randbytes(filler_raw * 3 // 4)),
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
            tar.addfile(info, io.BytesIO(data))
    # zlib with wbits=31: gzip container with a zero mtime, so output is reproducible
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(raw.getvalue()) + compressor.flush()
