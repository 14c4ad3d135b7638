"""The hit path: GETs of what the composed LRU holds, answered on the socket.

aiohttp's web layer costs about 100 us a request here (a request object,
routing over some forty routes, two middlewares, a response object). A
packument already rendered in the LRU, or a tarball held there, needs none
of it, and such small documents are most of what installs ask for.
Answering those hits from the connection's protocol doubles to quadruples
the rate of small requests (benchmarks/README.md).

Every connection starts on :class:`HitPathProtocol`. Each complete request
head is parsed (httptools). :class:`HitPath` answers a GET or HEAD of a
packument or a tarball, by any spelling of its route, when the LRU holds it,
or of one version's manifest (``/<name>/<version-or-tag>``) when the
packument it was cut from is still the one the LRU holds, provided the
requester may read it anonymously or with a valid token, and the request has
no body and no query string and is HTTP/1.1. It sends the headers and bytes
the aiohttp handlers send (:func:`server.packuments.packument_headers`,
:func:`server.packuments.manifest_headers`,
:func:`server.tarballs.memory_headers`), and counts and logs the request the
same way.

Anything else (a miss, another route, a body, a password login, a head the
parser rejects) hands the connection, with every byte not yet answered, to
aiohttp's own protocol for good. Answers stay in order: a hit is written
before the next request is read, and the bytes handed over start at the
first request not answered. While the socket's send buffer is full, no
further request is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote
from typing import cast

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.tcp_helpers import tcp_keepalive

from overlaystore.render import Variant
from overlaystore.view import TARBALL

from .access_log import log_request
from .documents import Outcome
from .keys import AUTH, CONFIG, DOCUMENTS, METRICS, POLICY, VIEW, WORKER, WORKER_HEADER
from .packuments import body_headers, is_not_modified, manifest_headers, packument_headers
from .request_info import base_url, etags_of, variant_for
from .tarballs import MEMORY, memory_headers

#: Bytes of an unfinished request head the hit path holds before it leaves
#: the connection to aiohttp (whose limits then answer 400 or 431).
MAX_HEAD_BYTES = 16 * 1024

#: Bodies larger than this go out in slices of it, each once the socket has
#: taken the one before (a copy of a whole 10 MB body per connection otherwise).
SLICE_BYTES = 1024 * 1024

_NAME_ROUTE = "/{name}"
_SCOPED_ROUTE = "/@{scope}/{pkg}"
_TARBALL_SUFFIX = "/-/{filename}"
_VERSION_SUFFIX = "/{version}"
_NOT_MODIFIED = "HTTP/1.1 304 Not Modified\r\n"
_OK = "HTTP/1.1 200 OK\r\n"


@dataclass(frozen=True, slots=True)
class Target:
    """What a request target asks for: a packument, a tarball (``filename``)
    or one version's manifest (``spec``: a version or a dist-tag), and the
    canonical route aiohttp would match (the metrics label)."""

    name: str
    route: str
    filename: str | None = None
    spec: str | None = None


def parse_target(target: bytes) -> Target | None:
    """The :class:`Target` of a request for a packument (``/name``,
    ``/@scope%2fname``, ``/@scope%2Fname``, ``/@scope/name``), a tarball (any
    of those plus ``/-/<file>.tgz``) or a manifest (plus ``/<spec>``); None
    for anything else, a query string included. Nothing is validated
    further: only what was served is in the LRU."""
    if not target.startswith(b"/") or b"?" in target or b"#" in target:
        return None
    try:
        rest = target[1:].decode("ascii")
    except UnicodeDecodeError:
        return None
    rest, tarball, filename = rest.partition("/-/")
    if tarball and ("/" in filename or "%" in filename or filename.startswith(".") or not filename.endswith(".tgz")):
        return None
    if rest.startswith("@"):
        # The first separator decides the route: "/" (aiohttp's scoped
        # route) or "%2f" (the "/{name}" route, which decodes it).
        slash, encoded = rest.find("/"), rest.replace("%2F", "%2f").find("%2f")
        if slash != -1 and (encoded == -1 or slash < encoded):
            at, width, route = slash, 1, _SCOPED_ROUTE
        elif encoded != -1:
            at, width, route = encoded, 3, _NAME_ROUTE
        else:
            return None
        scope, (base, *tail) = rest[:at], rest[at + width :].split("/")
        name = f"{scope}/{base}"
        if len(scope) < 2 or not base:
            return None
    else:
        (name, *tail), route = rest.split("/"), _NAME_ROUTE
        if not name or name.startswith(("-", ".")):
            return None
    if "%" in name or any("%" in part for part in tail):
        return None
    if len(tail) > 1 or (tail and (tarball or not tail[0])):
        return None
    if tarball:
        return Target(name, route + _TARBALL_SUFFIX, filename=filename)
    if tail:
        return Target(name, route + _VERSION_SUFFIX, spec=tail[0])
    return Target(name, route)


def _etags(headers: dict[bytes, bytes]) -> set[str]:
    if_none_match = headers.get(b"if-none-match")
    return etags_of(if_none_match.decode("latin-1")) if if_none_match is not None else set()


class HitPath:
    """Answers one parsed request head from the LRU, or declines (None)."""

    def __init__(self, app: web.Application) -> None:
        config = app[CONFIG]
        self._view = app[VIEW]
        self._documents = app[DOCUMENTS]
        self._policy = app[POLICY]
        self._auth = app[AUTH]
        self._metrics = app[METRICS]
        self._public_url = config.server.public_url
        access = logging.getLogger("overlaystore.access")
        self._access_log = access if config.server.access_log and access.isEnabledFor(logging.INFO) else None
        worker = app.get(WORKER)
        self._worker_line = "" if worker is None else f"{WORKER_HEADER}: {worker}\r\n"

    def answer(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], remote: str | None, *, close: bool = False
    ) -> tuple[bytes, bytes] | None:
        """The response head and body to a GET or HEAD of a packument, a
        tarball or a manifest that the LRU holds and the requester may read;
        None to leave the request to aiohttp. ``close``: the client asked to close the
        connection after this one."""
        started = time.perf_counter()
        if method != b"GET" and method != b"HEAD":
            return None
        found = parse_target(target)
        if found is None:
            return None
        name, route = found.name, found.route
        if found.filename is not None:
            held = self._view.get(name, TARBALL, found.filename, count_miss=False)
        else:
            public_url = self._public_url or self._base_url(headers)
            if public_url is None:
                return None
            variant = Variant.FULL if found.spec is not None else variant_for(
                headers.get(b"accept", b"").decode("latin-1"))
            held = self._view.get(name, variant, public_url, count_miss=False)
        if held is None or not self._may_read(name, headers.get(b"authorization"), remote):
            return None
        if found.spec is not None:
            # A manifest cut from this very packument before (by aiohttp's handler).
            manifest = self._documents.held_manifest(name, found.spec, public_url, held.etag)
            if manifest is None:
                return None
            fields, fresh, body, outcome = manifest_headers(), False, manifest, None
        elif found.filename is not None:
            fields = memory_headers(held)
            fresh = held.etag in _etags(headers)
            body = held.body
            outcome: str | None = MEMORY
        else:
            gzipped = b"gzip" in headers.get(b"accept-encoding", b"")
            fields = packument_headers(held, gzipped, Outcome.HIT)
            fresh = is_not_modified(_etags(headers), held)
            if not fresh:
                body_headers(fields, variant, gzipped)
            body = held.gzip if gzipped else held.body
            outcome = Outcome.HIT.value
        if fresh:
            status, status_line, body = 304, _NOT_MODIFIED, b""
        else:
            status, status_line = 200, _OK
            fields["Content-Length"] = str(len(body))
            if method == b"HEAD":
                body = b""
        head = "".join([
            status_line,
            *[f"{key}: {value}\r\n" for key, value in fields.items()],
            f"Date: {rfc822_formatted_time()}\r\nServer: {SERVER_SOFTWARE}\r\n",
            self._worker_line,
            "Connection: close\r\n\r\n" if close else "\r\n",
        ]).encode("latin-1")
        method_name = method.decode("ascii")
        seconds = time.perf_counter() - started
        self._metrics.record(route, method_name, status, seconds, outcome)
        if self._access_log is not None:
            log_request(self._access_log, method_name, unquote(target.decode("ascii")), status, len(body), seconds,
                        outcome or "-")
        return head, body

    def _base_url(self, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host")
        if not host:
            return None
        forwarded_proto = headers.get(b"x-forwarded-proto")
        forwarded_host = headers.get(b"x-forwarded-host")
        return base_url(
            forwarded_proto.decode("latin-1") if forwarded_proto else None,
            forwarded_host.decode("latin-1") if forwarded_host else None,
            "http",
            host.decode("latin-1"),
        )

    def _may_read(self, name: str, authorization: bytes | None, remote: str | None) -> bool:
        """Whether the requester, anonymous or holding a valid token, may
        read ``name``. False for any other credentials: aiohttp checks those
        and gives the right challenge."""
        who = None
        if authorization is not None:
            who = self._auth.valid_token(authorization.decode("latin-1"), remote=remote)
            if who is None:
                return False
        return self._auth.can_access(who, self._policy.rule_for(name).access)


class HitPathProtocol(asyncio.Protocol):
    """One connection: hits answered here until a request is not one."""

    def __init__(
        self,
        hit_path: HitPath,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[HitPathProtocol],
        keepalive_timeout_s: float,
    ) -> None:
        self._hit_path = hit_path
        self._fallback = fallback
        self._connections = connections
        self._keepalive_timeout_s = keepalive_timeout_s
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = b""
        self._paused = False
        # The part of a large body not written yet (sent a slice at a time
        # as the socket drains, like :func:`server.bodies.send_body`).
        self._outgoing: memoryview | None = None
        self._last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None
        # What the parser reports of the request head being read.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._complete = False
        self._closing = False

    # --- httptools callbacks

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.setdefault(name.lower(), value)  # the first one, as aiohttp's headers.get

    def on_headers_complete(self) -> None:
        # Asked here: once the message is complete, llhttp has reset its flags.
        self._closing = not self._parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._complete = True

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        tcp_keepalive(self._transport)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._connections.add(self)
        self._last_active = self._loop.time()
        if self._keepalive_timeout_s > 0:
            self._idle = self._loop.call_at(self._last_active + self._keepalive_timeout_s, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data, self._buffer = self._buffer + data, b""
        self._serve(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def pause_writing(self) -> None:
        assert self._transport is not None
        self._paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._paused = False
        self._transport.resume_reading()
        self._write_outgoing()
        if self._buffer and self._outgoing is None and not self._transport.is_closing():
            data, self._buffer = self._buffer, b""
            self._serve(data)

    def close(self) -> None:
        """Close the connection once the answer being sent, if any, is out
        (shutdown); no further request is read."""
        self._closing = True
        if self._transport is not None and self._outgoing is None:
            self._transport.close()

    def abort(self) -> None:
        """Close the connection now, whatever is still to be sent."""
        if self._transport is not None:
            self._transport.abort()

    # --- the work

    def _serve(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        start = 0
        while not self._paused and self._outgoing is None:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                if len(data) - start > MAX_HEAD_BYTES:
                    self._hand_over(data[start:])
                    return
                break
            answer = self._answer(data[start : end + 4])
            if answer is None:
                self._hand_over(data[start:])
                return
            head, body = answer
            if len(body) <= SLICE_BYTES:
                # One writev, no copy: a concatenated 500 KB body would cost
                # an mmap and its page faults (see server.allocator).
                transport.writelines((head, body))
            else:
                transport.write(head)
                self._outgoing = memoryview(body)
                self._write_outgoing()
            if self._closing:
                if self._outgoing is None:
                    transport.close()  # once what is written has gone out
                return  # else after the last slice (_write_outgoing)
            start = end + 4
        if start:
            self._last_active = self._loop.time()
        # What is left: part of a head, or requests read while writing was paused.
        self._buffer = data[start:]

    def _write_outgoing(self) -> None:
        assert self._transport is not None
        while self._outgoing is not None and not self._paused:
            chunk, rest = self._outgoing[:SLICE_BYTES], self._outgoing[SLICE_BYTES:]
            self._outgoing = rest if rest else None
            self._transport.write(chunk)
        if self._outgoing is None and self._closing:
            self._transport.close()

    def _answer(self, head: bytes) -> tuple[bytes, bytes] | None:
        self._url = b""
        self._headers = {}
        self._complete = self._closing = False
        parser = self._parser
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        if not self._complete or parser.get_http_version() != "1.1":
            return None  # a body follows, or an old protocol
        return self._hit_path.answer(parser.get_method(), self._url, self._headers, self._remote,
                                     close=self._closing)

    def _hand_over(self, data: bytes) -> None:
        """aiohttp's protocol takes the connection, starting with ``data``."""
        transport = self._transport
        assert transport is not None
        self._forget()
        protocol = self._fallback()
        # Never while writing is paused: nothing is parsed then (_serve).
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)

    def _forget(self) -> None:
        self._connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _check_idle(self) -> None:
        # A connection with no request answered for the keep-alive timeout is
        # closed, as aiohttp does: an idle client, or one trickling a head.
        assert self._transport is not None
        deadline = self._last_active + self._keepalive_timeout_s
        if self._loop.time() >= deadline and not self._paused:
            self._transport.close()
            self._idle = None
        else:
            self._idle = self._loop.call_at(max(deadline, self._loop.time() + 1.0), self._check_idle)


def protocol_factory(
    app: web.Application, fallback: Callable[[], asyncio.Protocol], connections: set[HitPathProtocol]
) -> Callable[[], HitPathProtocol]:
    """What ``create_server`` calls for each connection of ``app``'s site."""
    hit_path = HitPath(app)
    keepalive_timeout_s = app[CONFIG].server.keepalive_timeout_s
    return lambda: HitPathProtocol(hit_path, fallback, connections, keepalive_timeout_s)
