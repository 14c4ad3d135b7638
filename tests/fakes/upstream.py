"""A fake npm registry on 127.0.0.1, for tests and end-to-end runs.

It serves realistic packuments (``name``, ``dist-tags``, ``versions`` with
``dist.{tarball,integrity,shasum}``, a ``time`` map covering every version,
``modified``) and real gzip'd tarballs (``package/package.json`` plus
``package/index.js``), so the real npm CLI can install from it. It answers
conditional requests (strong ETag, Last-Modified, 304), records every request,
and can be told to misbehave (latency, 5xx bursts, connection resets, truncated
bodies, wrong bytes, HTML, 304 without a validator, being down).

Usage::

    fake = FakeUpstream()
    await fake.start()                      # binds 127.0.0.1:<free port>
    fake.add_package("left-pad", ["1.0.0", "1.1.0"])
    fake.add_package("@acme/w", {"1.0.0": {"dependencies": {"left-pad": "^1.0.0"}}})
    fake.fail_next(2, status=503)           # the next two requests answer 503
    ...
    assert fake.count(fake.packument_path("left-pad")) == 1
    await fake.stop()                       # "down"; start() again reuses the port

Every request is routed by hand from the raw path, so ``/@scope%2fname``,
``/@scope%2Fname`` and ``/@scope/name`` all reach the same package.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import socket
import struct
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

#: npm's fixed tar entry mtime (1985-10-26T08:15:00Z), so tarballs are reproducible.
_TAR_MTIME = 499162500
_BASE_TIME = datetime(2020, 1, 1, tzinfo=UTC)
_MAINTAINER = {"name": "fake", "email": "fake@example.invalid"}
ABBREVIATED = "application/vnd.npm.install-v1+json"
_CORGI_KEYS = (
    "name", "version", "deprecated", "dependencies", "acceptDependencies", "optionalDependencies",
    "devDependencies", "bundleDependencies", "peerDependencies", "peerDependenciesMeta", "bin",
    "directories", "dist", "engines", "_hasShrinkwrap", "hasInstallScript", "funding", "cpu", "os",
)


def make_tarball(manifest: Mapping[str, Any], files: Mapping[str, bytes | str] | None = None) -> bytes:
    """A reproducible npm tarball: ``package/package.json`` (the manifest) plus ``files``."""
    entries: dict[str, bytes] = {"package.json": orjson.dumps(dict(manifest), option=orjson.OPT_INDENT_2)}
    for path, content in (files or {}).items():
        entries[path] = content.encode() if isinstance(content, str) else content
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in entries.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            info.mtime = _TAR_MTIME
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str  # decoded: "/@acme/w", "/@acme/w/-/w-1.0.0.tgz"
    raw_path: str  # as sent, with the query: "/@acme%2fw"
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(slots=True)
class FakePackage:
    """One package on the fake: mutable, so tests can change it between requests."""

    name: str
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    tarballs: dict[str, bytes] = field(default_factory=dict)
    times: dict[str, str] = field(default_factory=dict)
    dist_tags: dict[str, str] = field(default_factory=dict)
    created: str = ""
    modified: str = ""
    rev: int = 1

    @property
    def basename(self) -> str:
        return self.name.rpartition("/")[2]

    def filename(self, version: str) -> str:
        return f"{self.basename}-{version}.tgz"


@dataclass(slots=True)
class _Fault:
    kind: str
    path: str | None
    remaining: int | None  # None: forever
    status: int = 503

    def matches(self, kind: str, path: str) -> bool:
        return self.kind == kind and (self.path is None or self.path == path)


class FakeUpstream:
    """A fake npm registry; see the module docstring."""

    def __init__(self, *, host: str = "127.0.0.1", gzip_json: bool = True) -> None:
        self.host = host
        #: Compress JSON for clients that accept gzip, as the real upstream does.
        self.gzip_json = gzip_json
        #: Seconds every request waits before it is answered.
        self.latency = 0.0
        #: Whether /-/v1/search exists (False: 404, like a registry without search).
        self.search_enabled = True
        #: What the bulk audit endpoint answers.
        self.advisories: dict[str, Any] = {}
        #: When set, a request without exactly this ``Authorization`` is
        #: answered 401, as a mirror that needs a login does.
        self.required_authorization: str | None = None
        self.packages: dict[str, FakePackage] = {}
        self.requests: list[RecordedRequest] = []
        self._faults: list[_Fault] = []
        self._path_latency: dict[str, float] = {}
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._clock = 0

    # ------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """Base URL without a trailing slash (stable across stop/start)."""
        if not self._port:
            raise RuntimeError("FakeUpstream.start() was not awaited")
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen on a free port (the first time) or on the previous one."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._port = int(runner.addresses[0][1])
        self._runner = runner

    async def stop(self) -> None:
        """Stop listening (the upstream is "down"); ``start()`` revives it on the same port."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------- packages

    def add_package(
        self,
        name: str,
        versions: Mapping[str, Mapping[str, Any] | None] | Iterable[str] = ("1.0.0",),
        *,
        dist_tags: Mapping[str, str] | None = None,
        files: Mapping[str, bytes | str] | None = None,
    ) -> FakePackage:
        """Add (or replace) ``name`` with ``versions``.

        ``versions`` is a list of version strings or a mapping version ->
        extra package.json fields (``dependencies``, ``bin``, ``scripts``,
        ``deprecated`` ...). ``latest`` defaults to the last version given.
        ``files`` go into every tarball next to package.json (default: an
        ``index.js`` exporting "<name>@<version>").
        """
        items = versions.items() if isinstance(versions, Mapping) else ((v, None) for v in versions)
        pkg = FakePackage(name)
        self.packages[name] = pkg
        for version, extra in items:
            self._add_version(pkg, version, extra or {}, files)
        pkg.created = pkg.times[next(iter(pkg.manifests))] if pkg.manifests else _iso(self._tick())
        if dist_tags is not None:
            pkg.dist_tags = dict(dist_tags)
        return pkg

    def add_version(
        self,
        name: str,
        version: str,
        extra: Mapping[str, Any] | None = None,
        *,
        tag: str | None = "latest",
        files: Mapping[str, bytes | str] | None = None,
    ) -> FakePackage:
        """Publish one more version of an existing package (changes ETag and modified)."""
        pkg = self.packages[name]
        self._add_version(pkg, version, extra or {}, files, tag=tag)
        return pkg

    def remove_package(self, name: str) -> None:
        """Make ``name`` a 404 (an upstream unpublish)."""
        self.packages.pop(name, None)

    def _tick(self) -> datetime:
        self._clock += 1
        return _BASE_TIME + timedelta(hours=self._clock)

    def _add_version(
        self,
        pkg: FakePackage,
        version: str,
        extra: Mapping[str, Any],
        files: Mapping[str, bytes | str] | None,
        *,
        tag: str | None = "latest",
    ) -> None:
        package_json: dict[str, Any] = {
            "name": pkg.name,
            "version": version,
            "description": f"fake package {pkg.name}",
            "main": "index.js",
            "license": "MIT",
            **{k: v for k, v in extra.items() if k != "deprecated"},
        }
        content = files if files is not None else {
            "index.js": f"module.exports = {orjson.dumps(f'{pkg.name}@{version}').decode()};\n"
        }
        tarball = make_tarball(package_json, content)
        manifest = {
            **package_json,
            "_id": f"{pkg.name}@{version}",
            "_npmUser": dict(_MAINTAINER),
            "maintainers": [dict(_MAINTAINER)],
            "dist": {
                "integrity": sri_sha512(tarball),
                "shasum": hashlib.sha1(tarball).hexdigest(),
                "fileCount": 1 + len(content),
            },
        }
        if "deprecated" in extra:
            manifest["deprecated"] = extra["deprecated"]
        when = _iso(self._tick())
        pkg.manifests[version] = manifest
        pkg.tarballs[version] = tarball
        pkg.times[version] = when
        pkg.modified = when
        if not pkg.created:
            pkg.created = when
        if tag is not None:
            pkg.dist_tags[tag] = version
        pkg.rev += 1

    def packument(self, name: str) -> dict[str, Any]:
        """The full document as served (tarball URLs point at this fake)."""
        pkg = self.packages[name]
        versions = {}
        for version, manifest in pkg.manifests.items():
            doc = dict(manifest)
            doc["dist"] = {"tarball": self.tarball_url(name, version), **manifest["dist"]}
            versions[version] = doc
        latest = versions.get(pkg.dist_tags.get("latest", ""), {})
        return {
            "_id": name,
            "_rev": f"{pkg.rev}-{hashlib.md5(pkg.modified.encode()).hexdigest()}",
            "name": name,
            "description": latest.get("description", ""),
            "dist-tags": dict(pkg.dist_tags),
            "versions": versions,
            "time": {"created": pkg.created, "modified": pkg.modified, **pkg.times},
            "maintainers": [dict(_MAINTAINER)],
            "readme": f"# {name}\n",
            "readmeFilename": "README.md",
            "license": "MIT",
            "users": {},
        }

    def abbreviated(self, name: str) -> dict[str, Any]:
        full = self.packument(name)
        return {
            "name": name,
            "modified": full["time"]["modified"],
            "dist-tags": full["dist-tags"],
            "versions": {
                v: {k: m[k] for k in _CORGI_KEYS if k in m} for v, m in full["versions"].items()
            },
        }

    def packument_bytes(self, name: str) -> bytes:
        return orjson.dumps(self.packument(name))

    def etag(self, name: str) -> str:
        return '"' + hashlib.sha1(self.packument_bytes(name)).hexdigest() + '"'

    def tarball(self, name: str, version: str) -> bytes:
        return self.packages[name].tarballs[version]

    def integrity(self, name: str, version: str) -> str:
        return str(self.packages[name].manifests[version]["dist"]["integrity"])

    # ----------------------------------------------------------------- paths

    @staticmethod
    def packument_path(name: str) -> str:
        """The decoded request path of a packument (what ``count()`` matches)."""
        return f"/{name}"

    def tarball_path(self, name: str, version: str) -> str:
        return f"/{name}/-/{name.rpartition('/')[2]}-{version}.tgz"

    def tarball_url(self, name: str, version: str) -> str:
        return self.url + self.tarball_path(name, version)

    # ------------------------------------------------------------ request log

    def count(self, path: str | None = None, *, method: str | None = "GET") -> int:
        """Requests received for ``path`` (decoded; None: all paths)."""
        return sum(
            1
            for r in self.requests
            if (path is None or r.path == path) and (method is None or r.method == method)
        )

    def requests_for(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def clear_log(self) -> None:
        self.requests.clear()

    # ----------------------------------------------------------------- faults

    def set_latency(self, seconds: float, *, path: str | None = None) -> None:
        """Delay answers (all requests, or just ``path``)."""
        if path is None:
            self.latency = seconds
        else:
            self._path_latency[path] = seconds

    def fail_next(self, n: int = 1, *, status: int = 503, path: str | None = None) -> None:
        """The next ``n`` requests (for ``path``) answer ``status`` with a JSON error."""
        self._faults.append(_Fault("status", path, n, status))

    def reset_mid_body(self, *, path: str | None = None, times: int | None = 1) -> None:
        """Send half the body, then reset the connection (TCP RST)."""
        self._faults.append(_Fault("reset", path, times))

    def truncate_body(self, *, path: str | None = None, times: int | None = 1, chunked: bool = False) -> None:
        """Send half the body, then close cleanly: with a Content-Length that
        promises more, or (``chunked``) without the final chunk."""
        self._faults.append(_Fault("truncate_chunked" if chunked else "truncate", path, times))

    def serve_wrong_bytes(self, *, path: str | None = None, times: int | None = None) -> None:
        """Serve bytes that differ from the published ones (same length, so only
        the digest can tell)."""
        self._faults.append(_Fault("corrupt", path, times))

    def html_body(self, *, path: str | None = None, times: int | None = 1) -> None:
        """Answer 200 with an HTML page (a captive portal, a misrouted proxy)."""
        self._faults.append(_Fault("html", path, times))

    def not_modified_without_validator(self, *, path: str | None = None, times: int | None = 1) -> None:
        """Answer 304 whatever the request said (broken caches do this)."""
        self._faults.append(_Fault("not_modified", path, times))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._path_latency.clear()
        self.latency = 0.0

    def _take_fault(self, kind: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(kind, path):
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # --------------------------------------------------------------- handlers

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.partition("?")[0]
        path = unquote(raw)
        body = await request.read() if request.can_read_body else b""
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=path,
                raw_path=request.raw_path,
                query=dict(request.query),
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
            )
        )
        delay = self._path_latency.get(path, self.latency)
        if delay:
            await asyncio.sleep(delay)
        if self.required_authorization is not None and \
                request.headers.get("Authorization") != self.required_authorization:
            return web.json_response({"error": "authentication required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="fake"'})
        fault = self._take_fault("status", path)
        if fault is not None:
            return web.json_response({"error": f"injected {fault.status}"}, status=fault.status)
        if path.startswith("/-/"):
            return await self._special(request, path, body)
        if request.method not in ("GET", "HEAD"):
            return web.json_response({"error": "method not allowed"}, status=405)
        name, sep, filename = path[1:].partition("/-/")
        if sep:
            return await self._serve_tarball(request, path, name, filename)
        return await self._serve_packument(request, path, name)

    async def _special(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        if path == "/-/ping":
            return web.json_response({})
        if path == "/-/v1/search" and self.search_enabled:
            return web.json_response(self._search(request.query.get("text", ""), int(request.query.get("size", "20"))))
        if path == "/-/npm/v1/security/advisories/bulk" and request.method == "POST":
            return web.json_response(self.advisories)
        return web.json_response({"error": "not found"}, status=404)

    def _search(self, text: str, size: int) -> dict[str, Any]:
        objects = []
        for name, pkg in sorted(self.packages.items()):
            if text and text.lower() not in name.lower():
                continue
            latest = pkg.manifests.get(pkg.dist_tags.get("latest", ""), {})
            objects.append({
                "package": {
                    "name": name,
                    "version": latest.get("version", ""),
                    "description": latest.get("description", ""),
                    "keywords": [],
                    "date": pkg.modified,
                    "links": {},
                    "publisher": {"username": "fake", "email": _MAINTAINER["email"]},
                    "maintainers": [{"username": "fake", "email": _MAINTAINER["email"]}],
                },
                "score": {"final": 1, "detail": {"quality": 1, "popularity": 1, "maintenance": 1}},
                "searchScore": 1,
            })
        return {"objects": objects[:size], "total": len(objects), "time": _iso(datetime.now(UTC))}

    async def _serve_packument(self, request: web.Request, path: str, name: str) -> web.StreamResponse:
        if self._take_fault("not_modified", path) is not None:
            return web.Response(status=304)
        if name not in self.packages:
            return web.json_response({"error": "Not found"}, status=404)
        pkg = self.packages[name]
        if ABBREVIATED in request.headers.get("Accept", ""):
            body, ctype = orjson.dumps(self.abbreviated(name)), ABBREVIATED
        else:
            body, ctype = self.packument_bytes(name), "application/json"
        etag = '"' + hashlib.sha1(body).hexdigest() + '"'
        modified = datetime.strptime(pkg.modified, "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=UTC)
        headers = {
            "ETag": etag,
            "Last-Modified": format_datetime(modified, usegmt=True),
            "Cache-Control": "public, max-age=300",
            "Vary": "Accept, Accept-Encoding",
        }
        if self._take_fault("html", path) is not None:
            html = b"<!DOCTYPE html><html><body><h1>Sign in to the network</h1></body></html>"
            return web.Response(body=html, content_type="text/html")
        if _not_modified(request, etag, modified):
            return web.Response(status=304, headers=headers)
        headers["Content-Type"] = ctype
        if self.gzip_json and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return await self._send(request, path, body, headers)

    async def _serve_tarball(self, request: web.Request, path: str, name: str, filename: str) -> web.StreamResponse:
        pkg = self.packages.get(name)
        version = None
        if pkg is not None:
            prefix = pkg.basename + "-"
            if filename.startswith(prefix) and filename.endswith(".tgz"):
                version = filename[len(prefix):-4]
        if pkg is None or version not in pkg.tarballs:
            return web.json_response({"error": "Not found"}, status=404)
        assert version is not None
        body = pkg.tarballs[version]
        if self._take_fault("corrupt", path) is not None:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        headers = {"Content-Type": "application/octet-stream", "Cache-Control": "public, max-age=31536000"}
        return await self._send(request, path, body, headers)

    async def _send(self, request: web.Request, path: str, body: bytes, headers: Mapping[str, str]) -> web.StreamResponse:
        """Send ``body``, applying a reset or truncation fault if one is due."""
        for kind in ("reset", "truncate", "truncate_chunked"):
            if self._take_fault(kind, path) is not None:
                break
        else:
            return web.Response(body=body, headers=headers)
        response = web.StreamResponse(headers=headers)
        if kind != "truncate_chunked":
            response.content_length = len(body)
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(body[: max(1, len(body) // 2)])
        await asyncio.sleep(0.02)  # let the half reach the client before the connection goes
        transport = request.transport
        if transport is not None:
            if kind == "reset":
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER 0: close() sends an RST instead of a FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        return response


def _not_modified(request: web.Request, etag: str, modified: datetime) -> bool:
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
        return etag in tags or "*" in tags
    ims = request.headers.get("If-Modified-Since")
    if ims is not None:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
        return modified.replace(microsecond=0) <= since
    return False


__all__ = ["ABBREVIATED", "FakePackage", "FakeUpstream", "RecordedRequest", "make_tarball", "sri_sha512"]
