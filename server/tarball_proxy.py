"""Upstream tarballs: streamed to the client, verified, then cached.

The handler serves tarballs the store already has; :class:`TarballProxy` serves
the rest. For a miss it looks the version up in the upstream packument
(``dist.tarball``, ``dist.integrity`` or, failing that, ``dist.shasum``), then
one download per file runs in its own task:

* it streams the upstream body to the first requester (the *leader*) while
  writing it to a cache temp file and hashing it;
* it commits the file to the cache only if the body is complete (length as
  announced) and its digest matches; otherwise it aborts the temp file, logs
  the mismatch on ``overlaystore.upstream`` and the leader's connection is
  broken (bytes already went out, so the status cannot change: a cut
  connection is what makes npm fail instead of installing a bad file);
* concurrent requesters of the same file (*followers*) wait for the download
  and are then served the committed file, or get its error (502 for a bad
  body, 404 for a missing one).

The download does not depend on the leader's connection: if the leader hangs
up, the file is still fetched and cached for the followers. A slow leader does
slow the download (the stream is written to it as it arrives).

Invariants: a file in the cache has been verified against the packument; a
response is never content-encoded (npm hashes what it receives); a version the
upstream packument does not list is NotFound; a tarball without any digest to
check is passed through but never cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from overlaystore._types import PackageName
from overlaystore.errors import NotFound, StorageError
from overlaystore.names import tarball_basename
from overlaystore.backend import BlobWriter
from overlaystore.packages import PackageStore, TarballRef

from .errors import UpstreamError
from .refresh import DistInfo, UpstreamSource
from .flight import SingleFlight
from .upstream import UpstreamBody, UpstreamClient

log = logging.getLogger("overlaystore.upstream")

TARBALL_TYPE = "application/octet-stream"
#: Tarballs are immutable (as the handler says for store hits).
TARBALL_HEADERS = MappingProxyType({"Content-Type": TARBALL_TYPE, "Cache-Control": "public, max-age=31536000, immutable"})
#: Strongest first; npm picks the strongest algorithm it knows.
_ALGORITHMS = ("sha512", "sha384", "sha256", "sha1")


@dataclass(frozen=True, slots=True)
class Expected:
    """The digest a tarball must have: ``algorithm`` and acceptable values."""

    algorithm: str
    digests: frozenset[bytes]

    @classmethod
    def from_dist(cls, dist: DistInfo) -> Expected | None:
        """From SRI ``integrity`` (strongest algorithm present), else hex ``shasum``."""
        found: dict[str, set[bytes]] = {}
        for token in (dist.integrity or "").split():
            algorithm, sep, rest = token.partition("-")
            if not sep or algorithm not in _ALGORITHMS:
                continue
            try:
                found.setdefault(algorithm, set()).add(base64.b64decode(rest.partition("?")[0], validate=True))
            except (binascii.Error, ValueError):
                continue
        for algorithm in _ALGORITHMS:
            if algorithm in found:
                return cls(algorithm, frozenset(found[algorithm]))
        if dist.shasum:
            try:
                return cls("sha1", frozenset({bytes.fromhex(dist.shasum)}))
            except ValueError:
                pass
        return None

    def describe(self, digest: bytes) -> str:
        return f"{self.algorithm}-{base64.b64encode(digest).decode()}"


class _Sink:
    """The leader's response, written by the download task. Once the client
    has gone, writes are dropped and the download goes on for the cache."""

    def __init__(self, request: web.BaseRequest) -> None:
        self.request = request
        self.response = web.StreamResponse(headers=TARBALL_HEADERS)
        self.alive = True

    async def start(self, content_length: int | None) -> None:
        if content_length is not None:
            self.response.content_length = content_length
        await self._guard(self.response.prepare(self.request))

    async def write(self, chunk: bytes) -> None:
        if self.alive:
            await self._guard(self.response.write(chunk))

    async def _guard(self, op: Awaitable[object]) -> None:
        try:
            await op
        except (ConnectionError, RuntimeError) as exc:
            # RuntimeError: aiohttp refuses writes once the payload writer is gone.
            log.debug("client went away during a tarball download: %s", exc)
            self.alive = False

    def abort(self) -> None:
        """Cut the connection: the client must not take a partial body for a file."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class TarballProxy:
    """Serves tarballs that are not in the store, from the upstream. See the module docstring."""

    def __init__(
        self,
        store: PackageStore,
        source: UpstreamSource,
        client: UpstreamClient | None,
        *,
        chunk_size: int = 64 * 1024,
    ) -> None:
        self._store = store
        self._source = source
        self._client = client
        self._chunk_size = chunk_size
        self._downloads: SingleFlight[tuple[str, str], bool] = SingleFlight()

    async def close(self) -> None:
        """Cancel downloads still running (at shutdown, after the handlers)."""
        await self._downloads.cancel_all()

    async def serve(
        self, request: web.BaseRequest, name: PackageName, filename: str, *, head: bool = False
    ) -> web.StreamResponse:
        """Answer a GET (or HEAD) of ``/<name>/-/<filename>`` from the upstream.

        Raises NotFound (no such version or file upstream, or no upstream) and
        UpstreamError subclasses (upstream failure; the leader's bad body, for
        followers). A leader whose body turns out bad gets a cut connection.
        """
        if self._client is None:
            raise NotFound(f"no tarball {filename} for {name}")
        version = version_of(name, filename)
        dist = await self._source.dist(name, version)
        if dist is None:
            raise NotFound(f"no version {version} of {name} upstream")
        key = (str(name), filename)
        expected = Expected.from_dist(dist)
        url = dist.tarball or f"{self._client.base_url}/{name}/-/{filename}"
        if expected is None:
            log.warning("%s@%s has no integrity or shasum upstream: passed through, not cached", name, version)
            sink = None if head else _Sink(request)
            await self._run(sink, self._download(name, filename, url, None, sink))
            return sink.response if sink is not None else _head_response(None)
        for _ in range(2):
            task = self._downloads.running(key)
            if task is None:
                ref = await self._store.tarball(name, filename)
                if ref is not None and ref.layer == "cache":
                    response = await serve_ref(ref, head)
                    if response is not None:
                        return response
                task = self._downloads.running(key)  # the await above may have let one start
            if task is None:
                sink = None if head else _Sink(request)
                task = self._downloads.start(key, self._download(name, filename, url, expected, sink))
                await self._run(sink, task)
                if sink is not None:
                    return sink.response
            else:
                await asyncio.shield(task)  # a follower: the leader's error is ours
            ref = await self._store.tarball(name, filename)
            if ref is not None:
                response = await serve_ref(ref, head)
                if response is not None:
                    return response
            # Downloaded but not cached (a storage failure, a concurrent wipe): once more.
        # Wiped under us twice (cache clears in a loop): fetch for this request
        # alone, streamed to it as a leader's download is.
        sink = None if head else _Sink(request)
        await self._run(sink, self._download(name, filename, url, expected, sink))
        return sink.response if sink is not None else _head_response(None)

    async def _run(self, sink: _Sink | None, work: Awaitable[bool]) -> None:
        """Await the download for the leader: errors before the response went
        out propagate (the error middleware answers them); after, the
        connection is cut."""
        try:
            # Shielded: a leader that is cancelled must not cancel the followers' download.
            await (asyncio.shield(work) if isinstance(work, asyncio.Future) else work)
        except Exception:
            if sink is None or not sink.response.prepared:
                raise
            sink.abort()

    async def _download(
        self,
        name: PackageName,
        filename: str,
        url: str,
        expected: Expected | None,
        sink: _Sink | None,
    ) -> bool:
        """Fetch ``url`` into the cache (if ``expected``) and ``sink``; True if committed."""
        assert self._client is not None
        async with self._client.open_tarball(url) as upstream:
            if upstream.status in (404, 410):
                raise NotFound(f"upstream has no tarball {filename} for {name}")
            if upstream.status != 200:
                raise UpstreamError(f"upstream answered {upstream.status} for {url}")
            writer = await self._open_writer(name, filename) if expected is not None else None
            try:
                return await self._copy(name, filename, upstream, expected, sink, writer)
            finally:
                if writer is not None:
                    await self._quietly(writer.abort())  # a no-op after commit

    async def _copy(
        self,
        name: PackageName,
        filename: str,
        upstream: UpstreamBody,
        expected: Expected | None,
        sink: _Sink | None,
        writer: BlobWriter | None,
    ) -> bool:
        hasher = hashlib.new(expected.algorithm) if expected is not None else None
        if sink is not None:
            await sink.start(upstream.content_length)
        size = 0
        # The last chunk is held back until the digest is checked: a bad body
        # then always reaches the client short of its length, so the cut
        # connection is an error even to a client that does not verify.
        held = b""
        async for chunk in upstream.chunks(self._chunk_size):
            size += len(chunk)
            if hasher is not None:
                hasher.update(chunk)
            if writer is not None:
                try:
                    await writer.write(chunk)
                except StorageError as exc:
                    log.warning("caching %s/-/%s failed, serving without caching: %s", name, filename, exc)
                    await self._quietly(writer.abort())
                    writer = None
            if sink is not None and held:
                await sink.write(held)
            held = chunk
        if upstream.content_length is not None and size != upstream.content_length:
            log.error(
                "upstream tarball %s/-/%s: %d bytes received, %d announced; not cached",
                name, filename, size, upstream.content_length,
            )
            raise UpstreamError(f"upstream sent a truncated tarball {filename}")
        if expected is not None and hasher is not None:
            digest = hasher.digest()
            if digest not in expected.digests:
                log.error(
                    "integrity mismatch for upstream tarball %s/-/%s: wanted %s, got %s; not cached",
                    name, filename, expected.describe(next(iter(expected.digests))), expected.describe(digest),
                )
                raise UpstreamError(f"upstream tarball {filename} failed its integrity check")
        committed = False
        if writer is not None:
            # Commit before the last bytes go out: a client that has the whole
            # file can count on the next request being a cache hit.
            try:
                await writer.commit()
                committed = True
            except StorageError as exc:
                log.warning("caching %s/-/%s failed: %s", name, filename, exc)
        if sink is not None and held:
            await sink.write(held)
        return committed

    async def _open_writer(self, name: PackageName, filename: str) -> BlobWriter | None:
        try:
            return await self._store.open_cache_tarball(name, filename)
        except StorageError as exc:
            log.warning("cannot cache %s/-/%s: %s", name, filename, exc)
            return None

    @staticmethod
    async def _quietly(op: Awaitable[None]) -> None:
        try:
            await op
        except StorageError as exc:
            log.warning("cache cleanup failed: %s", exc)


def version_of(name: PackageName, filename: str) -> str:
    """The version in ``<basename>-<version>.tgz``; NotFound for any other shape."""
    prefix = tarball_basename(name) + "-"
    if not (filename.startswith(prefix) and filename.endswith(".tgz")) or len(filename) <= len(prefix) + 4:
        raise NotFound(f"{filename} is not a tarball of {name}")
    return filename[len(prefix) : -len(".tgz")]


#: Where an open file can be named by its descriptor (Linux); elsewhere cache
#: files are sent by path, and a wipe racing the send can turn it into a 404.
_FD_DIR = Path("/proc/self/fd")
_PIN_BY_FD = _FD_DIR.is_dir()


class _PinnedFileResponse(web.FileResponse):
    """Sends a file that was already open (by its ``/proc/self/fd`` name), so
    a cache wipe or GC removing it after the lookup cannot turn the answer
    into a 404: the open file stays readable whole. aiohttp still does the
    rest (sendfile, Range, conditional requests, HEAD)."""

    def __init__(self, file: BinaryIO, headers: dict[str, str]) -> None:
        super().__init__(_FD_DIR / str(file.fileno()), headers=headers)
        # Closed once aiohttp has opened its own handle (or when dropped unsent).
        self._release = weakref.finalize(self, file.close)

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            return await super().prepare(request)
        finally:
            self._release()


async def serve_ref(ref: TarballRef, head: bool) -> web.StreamResponse | None:
    """A stored tarball, as the handlers serve store hits; None if it is a
    cache file that vanished since the lookup (a wipe or GC: treat as a miss).
    Published files are never removed, so they are sent by path."""
    headers = dict(TARBALL_HEADERS)
    if ref.path is not None:
        if ref.layer == "published":
            return web.FileResponse(ref.path, headers=headers)
        file = await ref.open()
        if file is None:
            return None
        if _PIN_BY_FD:
            return _PinnedFileResponse(file, headers)
        file.close()
        return web.FileResponse(ref.path, headers=headers)
    try:
        data = await ref.read()
    except NotFound:
        if ref.layer == "cache":
            return None
        raise
    if head:
        return web.Response(headers={**headers, "Content-Length": str(len(data))})
    return web.Response(body=data, headers=headers)


def _head_response(size: int | None) -> web.Response:
    response = web.Response(headers={"Content-Type": TARBALL_TYPE})
    if size is not None:
        response.headers["Content-Length"] = str(size)
    return response


__all__ = ["Expected", "TARBALL_HEADERS", "TARBALL_TYPE", "TarballProxy", "serve_ref", "version_of"]
