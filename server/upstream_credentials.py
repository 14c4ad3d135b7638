"""The upstream's credentials, sent where they belong and nowhere else.

A mirror that needs a login (a corporate registry, a hosted one) gets
``[upstream].token`` or ``basic_auth`` as an ``Authorization`` header on
every request under the upstream's URL: packuments, search, audit, ping,
and tarballs whose URL is on the same origin under the same path. A tarball
a packument places elsewhere (another host, another port, another path on
the host) never sees them. The rule is npm's own, which sends a registry's
token only to URLs under that registry's address. It is applied as a
session middleware, so it holds for each hop of a redirect too.

Credentials are never taken from an ``.npmrc``: whatever the proxy may read
upstream, its own readers can read through it, and that has to be the
operator's explicit choice.
"""

from __future__ import annotations

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
from yarl import URL


def _origin(url: URL) -> tuple[str, str, int | None]:
    return url.scheme.lower(), (url.host or "").lower(), url.port


class UpstreamCredentials:
    """A client middleware adding ``authorization`` to requests under ``base_url``."""

    def __init__(self, base_url: str, authorization: str) -> None:
        base = URL(base_url)
        self._origin = _origin(base)
        self._prefix = base.raw_path.rstrip("/") + "/"
        self._authorization = authorization

    def covers(self, url: URL) -> bool:
        return _origin(url) == self._origin and (url.raw_path.rstrip("/") + "/").startswith(self._prefix)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if self.covers(request.url):
            request.headers[hdrs.AUTHORIZATION] = self._authorization
        return await handler(request)


__all__ = ["UpstreamCredentials"]
