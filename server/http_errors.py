"""The one place where errors become HTTP responses.

Handlers raise :class:`~overlaystore.errors.OverlayStoreError` subclasses (or
aiohttp's own ``HTTPException`` for routing-level failures); this middleware
turns them into an npm-style ``{"error": "..."}`` body with the status found by
walking the exception's MRO through :data:`STATUS`. Anything unexpected becomes
a 500 with a generic message: the traceback goes to the log, never to the
client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from overlaystore import errors as lib

from . import errors as srv
from .access_log import redact  # logout and token paths carry secrets

log = logging.getLogger("overlaystore.server")

STATUS: dict[type[BaseException], int] = {
    lib.OverlayStoreError: 500,
    lib.NotFound: 404,
    lib.Conflict: 409,
    lib.AlreadyPublished: 409,
    lib.InvalidInput: 400,
    lib.PolicyRefused: 403,
    lib.StorageError: 500,
    lib.StorageFull: 507,
    srv.Unauthenticated: 401,
    srv.Forbidden: 403,
    srv.TooManyRequests: 429,
    srv.UpstreamError: 502,
    srv.UpstreamUnavailable: 503,
    srv.UpstreamTimeout: 504,
}


def status_for(exc: BaseException) -> int:
    """The HTTP status for ``exc``: the entry of its nearest class in the MRO."""
    for cls in type(exc).__mro__:
        status = STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": message}),
        content_type="application/json",
        headers=headers,
    )


def _headers_for(exc: lib.OverlayStoreError) -> dict[str, str] | None:
    if isinstance(exc, srv.Unauthenticated):
        return {"WWW-Authenticate": f'{exc.scheme} realm="overlaystore"'}
    if isinstance(exc, srv.TooManyRequests):
        return {"Retry-After": str(exc.retry_after)}
    return None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Status recorded for a request whose client went away before its answer
#: was written (nginx's convention; never sent).
CLIENT_CLOSED = 499


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except lib.OverlayStoreError as exc:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, redact(request.path), exc)
        return error_response(status, str(exc) or type(exc).__name__, _headers_for(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Routing-level failures (no route, method, body over the limit) in npm's shape.
        kept = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        response = error_response(exc.status, _ROUTING_MESSAGES.get(exc.status, exc.reason), kept)
        if exc.status in (408, 413):
            # The rest of that body is not worth waiting for (or reading).
            response.force_close()
        return response
    except Exception as exc:
        transport = request.transport
        if isinstance(exc, ConnectionError) and (transport is None or transport.is_closing()):
            # The client went away while its answer was being written: nothing
            # failed here, and nothing can be sent; the status is only what
            # the metrics and the access log record.
            log.debug("%s %s: the client closed the connection", request.method, redact(request.path))
            return web.Response(status=CLIENT_CLOSED)
        log.exception("%s %s: unexpected error", request.method, redact(request.path))
        return error_response(500, "internal server error")


_ROUTING_MESSAGES = {
    404: "not found",
    405: "method not allowed",
    408: "the request body stopped arriving; try again",
    413: "request body too large",
}
