"""Readiness: ``GET /-/overlaystore/ready``.

``/-/ping`` says the process answers; readiness says it can do its job:

* ``published`` / ``cache``: ``"writable"`` when the library could create and
  remove a probe file in the store (:meth:`LayeredStore.writable`), else
  ``"unwritable"`` (the reason goes to the log and to ``"errors"``).
* ``upstream``: ``"none"`` (no upstream configured), ``"offline"``,
  ``"down"`` (circuit breaker open, or ``GET /-/ping`` upstream got no
  answer or a 5xx), ``"unauthorized"`` (it answered 401 or 403: the
  ``[upstream]`` credentials are missing or wrong) or ``"ok"``. The probe
  is one request with a short timeout, its answer reused
  for :data:`UPSTREAM_TTL_S` seconds and shared by concurrent checks, so a
  readiness poller cannot load the upstream.

200 when both stores are writable, else 503 with the same body. A down
upstream does not make the server unready: it still serves what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from .breaker import BreakerState
from .keys import READINESS, STORE, UPSTREAM
from .upstream import UpstreamClient

log = logging.getLogger("overlaystore.server")

#: Seconds an upstream probe result is reused.
UPSTREAM_TTL_S = 5.0
#: Timeout of one upstream probe.
UPSTREAM_TIMEOUT_S = 2.0


class Readiness:
    """Caches the upstream probe; the store checks are cheap and run each time."""

    def __init__(
        self,
        *,
        ttl_s: float = UPSTREAM_TTL_S,
        timeout_s: float = UPSTREAM_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: Seconds an upstream answer is reused.
        self.ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._last: tuple[float, str] | None = None  # (when, state)
        self._probe: asyncio.Task[int | None] | None = None

    async def upstream(self, client: UpstreamClient | None) -> str:
        if client is None:
            return "none"
        if not client.enabled:
            return "offline"
        if client.breaker_state is BreakerState.OPEN:
            return "down"
        now = self._clock()
        if self._last is None or now - self._last[0] >= self.ttl_s:
            if self._probe is None:
                self._probe = asyncio.ensure_future(client.ping(self._timeout_s))
                self._probe.add_done_callback(self._probed)
            # Shielded: one impatient caller must not cancel the shared probe.
            # Its failure is recorded by _probed as "no answer".
            with contextlib.suppress(Exception):
                await asyncio.shield(self._probe)
        assert self._last is not None
        return self._last[1]

    async def close(self) -> None:
        """Cancel a probe still running (at shutdown)."""
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await probe

    def _probed(self, task: asyncio.Task[int | None]) -> None:
        self._probe = None
        status = task.result() if not task.cancelled() and task.exception() is None else None
        self._last = (self._clock(), upstream_state(status))


def upstream_state(status: int | None) -> str:
    """What the status of an upstream ``GET /-/ping`` says (None: no answer)."""
    if status in (401, 403):
        return "unauthorized"
    return "ok" if status is not None and status < 500 else "down"


async def get_ready(request: web.Request) -> web.Response:
    app = request.app
    checks = await app[STORE].layered.writable()
    body: dict[str, object] = {
        layer: "writable" if problem is None else "unwritable" for layer, problem in checks.items()
    }
    body["upstream"] = await app[READINESS].upstream(app.get(UPSTREAM))
    problems = {layer: problem for layer, problem in checks.items() if problem is not None}
    if problems:
        for layer, problem in problems.items():
            log.warning("not ready: the %s store is not writable: %s", layer, problem)
        body["errors"] = problems
    return web.json_response(body, status=503 if problems else 200, headers={"Cache-Control": "no-store"})


async def on_cleanup(app: web.Application) -> None:
    await app[READINESS].close()


def register(router: web.UrlDispatcher) -> None:
    router.add_get("/-/overlaystore/ready", get_ready)


__all__ = ["UPSTREAM_TIMEOUT_S", "UPSTREAM_TTL_S", "Readiness", "get_ready", "on_cleanup", "register", "upstream_state"]
