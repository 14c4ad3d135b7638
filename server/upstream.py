"""The HTTP client for the upstream registry.

One pooled :class:`aiohttp.ClientSession` per :class:`UpstreamClient`, created
in :meth:`UpstreamClient.start` (inside the running loop) and closed in
:meth:`UpstreamClient.close`. Everything the registry asks the upstream goes
through here, so the policies live in one place:

* **Timeouts.** JSON requests are bounded by ``connect_timeout_s`` (TCP
  connect) and ``timeout_s`` (the whole exchange). Tarball streams are bounded
  by ``connect_timeout_s`` and by ``timeout_s`` *between two reads*, not in
  total: a large tarball that keeps arriving is allowed to finish.
* **Retries.** Idempotent GETs are retried ``retries`` more times after a
  connection error, a timeout, a 5xx, 408 or 429, with exponential backoff and
  full jitter. POSTs (audit) are never retried. A tarball is retried only until
  its headers arrive; a failure mid-body is the caller's to handle.
* **Circuit breaker.** ``breaker_failures`` consecutive failed exchanges
  (connection error, timeout, 5xx, garbage) open it; while open, requests fail
  at once with :class:`UpstreamUnavailable`. After ``breaker_reset_s`` one trial
  request is let through (half-open): success closes it, failure re-opens it.
  Each attempt counts, so a retry loop stops as soon as the breaker opens.
* **Offline / no URL.** Nothing is contacted; every call raises
  :class:`UpstreamUnavailable`.
* **Credentials and proxy.** ``authorization`` goes only to URLs under the
  upstream's (:mod:`server.upstream_credentials`); ``proxy``, when set,
  carries every request.
* **Single-flight.** Concurrent :meth:`fetch_packument` calls with the same
  name and validators share one request.

Errors: timeouts → :class:`UpstreamTimeout`; connection errors, unexpected
statuses and garbage → :class:`UpstreamError`; breaker open or offline →
:class:`UpstreamUnavailable`. Nothing else escapes (except cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
from aiohttp import hdrs
from yarl import URL

from .breaker import BreakerState, CircuitBreaker
from .config import UpstreamConfig
from .errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .flight import SingleFlight
from .upstream_credentials import UpstreamCredentials

log = logging.getLogger("overlaystore.upstream")

T = TypeVar("T")

USER_AGENT = "overlaystore/0.1"
#: Statuses worth another attempt (npm retries the same ones).
_RETRY_STATUSES = frozenset({408, 429})
_CHUNK = 64 * 1024


# ------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class UpstreamPackument:
    """An upstream packument answer. ``body`` is set iff ``status == "ok"``."""

    status: Literal["ok", "not_modified", "not_found"]
    body: bytes | None
    etag: str | None
    last_modified: str | None


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """Counters since start, for metrics."""

    requests: int  # attempts sent (retries included)
    errors: int  # attempts that failed (connection, timeout, 5xx, garbage)
    retries: int
    latency_s_sum: float  # time spent in attempts
    breaker: BreakerState
    breaker_opened: int
    in_flight: int  # shared packument fetches running now


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    errors: int = 0
    retries: int = 0
    latency_s_sum: float = 0.0


class UpstreamBody:
    """A tarball response being streamed: ``status``, ``content_length`` (None
    when unknown or content-encoded) and :meth:`chunks`."""

    def __init__(self, client: UpstreamClient, response: aiohttp.ClientResponse, url: str) -> None:
        self.status = response.status
        encoded = response.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity"
        self.content_length = None if encoded else response.content_length
        self.headers = response.headers
        self._client = client
        self._response = response
        self._url = url
        self.complete = False

    async def chunks(self, size: int = _CHUNK) -> AsyncIterator[bytes]:
        """The body, chunk by chunk. Raises UpstreamError/UpstreamTimeout if it
        breaks off (reset, truncation, stall)."""
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except TimeoutError as exc:
            self._client._record_failure()
            raise UpstreamTimeout(f"upstream stalled while sending {self._url}") from exc
        except aiohttp.ClientError as exc:
            self._client._record_failure()
            raise UpstreamError(f"upstream broke off {self._url}: {exc}") from exc
        self.complete = True


# ------------------------------------------------------------------- client


class _Failed(Exception):
    """One attempt failed. ``retry``: worth another attempt; ``breaker``:
    evidence that the upstream is unhealthy (a 403 for one package is not)."""

    def __init__(self, error: UpstreamError, *, retry: bool, breaker: bool) -> None:
        self.error = error
        self.retry = retry
        self.breaker = breaker


class UpstreamClient:
    """The upstream registry, as seen by the server. See the module docstring."""

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        backoff_s: float = 0.2,
        backoff_max_s: float = 5.0,
        max_document_bytes: int = 256 * 2**20,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._base = (config.url or "").rstrip("/")
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._max_document_bytes = max_document_bytes
        self._max_connections = max_connections
        self._rng = rng or random.Random()
        self._breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_s, clock=clock)
        self._counters = _Counters()
        self._flights: SingleFlight[tuple[str, str | None, str | None], UpstreamPackument] = SingleFlight()
        self._session: aiohttp.ClientSession | None = None
        self._json_timeout = aiohttp.ClientTimeout(total=config.timeout_s, sock_connect=config.connect_timeout_s)
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=config.connect_timeout_s, sock_read=config.timeout_s
        )

    # -- lifecycle

    async def start(self) -> None:
        """Create the pooled session (no-op when offline or without a URL)."""
        if self._session is None and self.enabled:
            credentials = self.config.authorization
            self._session = aiohttp.ClientSession(
                headers={hdrs.USER_AGENT: USER_AGENT},
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300),
                timeout=self._json_timeout,
                middlewares=(UpstreamCredentials(self._base, credentials),) if credentials else (),
                proxy=self.config.proxy,
            )

    async def close(self) -> None:
        await self._flights.cancel_all()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> UpstreamClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- introspection

    @property
    def enabled(self) -> bool:
        """False when offline or without a URL: nothing will be contacted."""
        return bool(self._base) and not self.config.offline

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    def stats(self) -> UpstreamStats:
        c = self._counters
        return UpstreamStats(
            requests=c.requests,
            errors=c.errors,
            retries=c.retries,
            latency_s_sum=c.latency_s_sum,
            breaker=self._breaker.state,
            breaker_opened=self._breaker.times_opened,
            in_flight=len(self._flights),
        )

    def packument_url(self, name: str) -> str:
        """``<base>/<name>`` with a scoped name as ``@scope%2fname``."""
        return f"{self._base}/{name.replace('/', '%2f')}"

    # -- packuments

    async def fetch_packument(
        self, name: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> UpstreamPackument:
        """The full upstream document of ``name``, conditionally if validators
        are given. 404/410 → ``not_found``; 304 → ``not_modified``."""
        return await self._flights.do(
            (name, etag, last_modified), lambda: self._fetch_packument(name, etag, last_modified)
        )

    async def _fetch_packument(self, name: str, etag: str | None, last_modified: str | None) -> UpstreamPackument:
        url = self.packument_url(name)
        headers = {hdrs.ACCEPT: "application/json"}
        if etag is not None:
            headers[hdrs.IF_NONE_MATCH] = etag
        if last_modified is not None:
            headers[hdrs.IF_MODIFIED_SINCE] = last_modified

        async def attempt(session: aiohttp.ClientSession) -> UpstreamPackument:
            async with session.get(URL(url, encoded=True), headers=headers) as resp:
                _raise_for_retry(resp, url)
                if resp.status == 200:
                    body = await self._read_document(resp, url)
                    return UpstreamPackument(
                        "ok", body, resp.headers.get(hdrs.ETAG), resp.headers.get(hdrs.LAST_MODIFIED)
                    )
                if resp.status == 304:
                    if etag is None and last_modified is None:
                        raise UpstreamError(f"upstream answered 304 to an unconditional request for {url}")
                    return UpstreamPackument(
                        "not_modified",
                        None,
                        resp.headers.get(hdrs.ETAG, etag),
                        resp.headers.get(hdrs.LAST_MODIFIED, last_modified),
                    )
                if resp.status in (404, 410):
                    return UpstreamPackument("not_found", None, None, None)
                raise _unexpected(resp.status, url)

        return await self._with_retries(attempt, url, retries=self.config.retries)

    async def _read_document(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        """A 200 JSON body, refusing HTML and anything that is not an object."""
        ctype = resp.headers.get(hdrs.CONTENT_TYPE, "").lower()
        if "html" in ctype:
            raise UpstreamError(f"upstream sent HTML instead of JSON for {url}")
        if (resp.content_length or 0) > self._max_document_bytes:
            raise UpstreamError(f"upstream document {url} exceeds {self._max_document_bytes} bytes")
        parts: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > self._max_document_bytes:
                raise UpstreamError(f"upstream document {url} exceeds {self._max_document_bytes} bytes")
            parts.append(chunk)
        body = b"".join(parts)
        # A cheap shape check; the full parse happens once, in refresh.
        if not body.lstrip(b" \t\r\n\xef\xbb\xbf").startswith(b"{"):
            raise UpstreamError(f"upstream sent a body that is not a JSON object for {url}")
        return body

    # -- tarballs

    @contextlib.asynccontextmanager
    async def open_tarball(self, url: str) -> AsyncIterator[UpstreamBody]:
        """Open ``url`` for streaming. Yields for any status below 500 (the
        caller decides what 404 means); 5xx and connection failures are retried
        until the headers arrive, then raised."""

        async def attempt(session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
            resp = await session.get(
                URL(url, encoded=True),
                headers={hdrs.ACCEPT: "*/*", hdrs.ACCEPT_ENCODING: "identity"},
                timeout=self._stream_timeout,
            )
            try:
                _raise_for_retry(resp, url)
            except BaseException:
                resp.release()
                raise
            return resp

        resp = await self._with_retries(attempt, url, retries=self.config.retries)
        body = UpstreamBody(self, resp, url)
        try:
            yield body
        finally:
            if body.complete:
                resp.release()  # fully read: the connection goes back to the pool
            else:
                resp.close()

    # -- health

    async def ping(self, timeout_s: float = 2.0) -> int | None:
        """The status of the upstream's answer to ``GET /-/ping`` within
        ``timeout_s``; None for no answer. One attempt, outside the retry
        loop, the counters and the circuit breaker: a readiness probe, not
        traffic."""
        if not self.enabled or self._session is None or self._session.closed:
            return None
        try:
            async with self._session.get(
                f"{self._base}/-/ping", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    # -- passthroughs

    async def search(self, params: Mapping[str, str]) -> dict[str, Any] | None:
        """``GET /-/v1/search`` upstream; None when the upstream has no search."""
        url = f"{self._base}/-/v1/search"

        async def attempt(session: aiohttp.ClientSession) -> dict[str, Any] | None:
            async with session.get(url, params=dict(params), headers={hdrs.ACCEPT: "application/json"}) as resp:
                _raise_for_retry(resp, url)
                if resp.status in (404, 405, 501):
                    return None
                if resp.status != 200:
                    raise _unexpected(resp.status, url)
                body = await self._read_document(resp, url)
            try:
                answer = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise UpstreamError(f"upstream search answered invalid JSON: {exc}") from exc
            if not isinstance(answer, dict):
                raise UpstreamError("upstream search answered something other than an object")
            return answer

        return await self._with_retries(attempt, url, retries=self.config.retries)

    async def audit_bulk(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """``POST /-/npm/v1/security/advisories/bulk`` upstream, not retried.

        Only ``Content-Type`` of ``headers`` is forwarded; a gzip'd ``body`` is
        recognised by its magic bytes (``request.read()`` already gunzips what
        npm sends, so a copied Content-Encoding header would lie). Returns the
        upstream status and its (decoded) body for any status below 500
        (408/429 included); 5xx and failures raise UpstreamError.
        """
        url = f"{self._base}/-/npm/v1/security/advisories/bulk"
        send = {hdrs.CONTENT_TYPE: _header(headers, hdrs.CONTENT_TYPE) or "application/json"}
        if body[:2] == b"\x1f\x8b":
            send[hdrs.CONTENT_ENCODING] = "gzip"

        async def attempt(session: aiohttp.ClientSession) -> tuple[int, bytes]:
            async with session.post(url, data=body, headers=send) as resp:
                _raise_for_retry(resp, url)  # 5xx: an error (counted by the breaker), not an answer
                return resp.status, await resp.read()

        return await self._with_retries(attempt, url, retries=0)

    # -- the attempt loop

    def _session_or_raise(self) -> aiohttp.ClientSession:
        if not self._base:
            raise UpstreamUnavailable("no upstream registry is configured")
        if self.config.offline:
            raise UpstreamUnavailable("offline mode: the upstream registry is not contacted")
        if self._session is None or self._session.closed:
            raise RuntimeError("UpstreamClient.start() was not awaited (or the client is closed)")
        return self._session

    def _record_failure(self) -> None:
        self._counters.errors += 1
        self._breaker.failure()

    async def _with_retries(
        self,
        attempt: Callable[[aiohttp.ClientSession], Awaitable[T]],
        url: str,
        *,
        retries: int,
    ) -> T:
        session = self._session_or_raise()
        last: UpstreamError | None = None
        for number in range(retries + 1):
            if number:
                self._counters.retries += 1
                await asyncio.sleep(self._backoff(number))
            try:
                self._breaker.acquire()
            except UpstreamUnavailable:
                if last is not None:
                    raise last from None  # the real failure says more than "breaker open"
                raise
            self._counters.requests += 1
            started = time.monotonic()
            try:
                result = await attempt(session)
            except _Failed as exc:
                failure = exc
            except TimeoutError as exc:
                failure = _Failed(UpstreamTimeout(f"upstream did not answer {url} in time"), retry=True, breaker=True)
                failure.error.__cause__ = exc
            except aiohttp.ClientError as exc:
                failure = _Failed(UpstreamError(f"upstream request {url} failed: {exc}"), retry=True, breaker=True)
                failure.error.__cause__ = exc
            except UpstreamError as exc:
                # The upstream answered, but with garbage: not worth repeating.
                failure = _Failed(exc, retry=False, breaker=True)
            except BaseException:
                self._breaker.release()
                raise
            else:
                self._breaker.success()
                return result
            finally:
                self._counters.latency_s_sum += time.monotonic() - started
            last = failure.error
            if failure.breaker:
                self._record_failure()
            else:
                # The upstream is alive (it answered): that ends a failure streak.
                self._breaker.success()
                self._counters.errors += 1
            log.debug("upstream attempt %d for %s failed: %s", number + 1, url, last)
            if not failure.retry:
                break
        assert last is not None
        raise last

    def _backoff(self, number: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(n-1))]."""
        ceiling = min(self._backoff_max_s, self._backoff_s * 2 ** (number - 1))
        return self._rng.uniform(0, ceiling)


def _raise_for_retry(resp: aiohttp.ClientResponse, url: str) -> None:
    if resp.status >= 500:
        raise _Failed(UpstreamError(f"upstream answered {resp.status} for {url}"), retry=True, breaker=True)
    if resp.status in _RETRY_STATUSES:
        raise _Failed(UpstreamError(f"upstream answered {resp.status} for {url}"), retry=True, breaker=False)


def _unexpected(status: int, url: str) -> _Failed:
    """An answer the upstream meant (a 401, a 403): an error, but no sign of ill health."""
    hint = " (does it need credentials? [upstream].token or basic_auth)" if status in (401, 403) else ""
    return _Failed(UpstreamError(f"upstream answered {status} for {url}{hint}"), retry=False, breaker=False)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "SingleFlight",
    "UpstreamBody",
    "UpstreamClient",
    "UpstreamPackument",
    "UpstreamStats",
]
