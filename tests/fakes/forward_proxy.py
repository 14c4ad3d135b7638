"""A forward HTTP proxy on 127.0.0.1 for tests: it takes absolute-form
requests (``GET http://host:port/path``), records them and passes them on
with their headers and body, as a corporate proxy in front of the upstream
does. Plain http only (no CONNECT).

Usage::

    async with ForwardProxy() as proxy:
        ...  # point a client at proxy.url
        assert proxy.seen == ["http://127.0.0.1:5555/left-pad"]
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from yarl import URL

#: Not passed on: they describe the hop, not the request.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te",
                         "trailer", "transfer-encoding", "upgrade", "host", "content-length"})


class ForwardProxy:
    """See the module docstring."""

    def __init__(self) -> None:
        #: The absolute URLs asked for, in order.
        self.seen: list[str] = []
        #: The ``Proxy-Authorization`` header of each request (None: none).
        self.proxy_authorizations: list[str | None] = []
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        assert self._runner is not None, "start() first"
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._client = aiohttp.ClientSession(auto_decompress=False)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> ForwardProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        target = request.raw_path
        if not target.startswith("http://"):
            return web.json_response({"error": "not a proxy request"}, status=400)
        self.seen.append(target)
        self.proxy_authorizations.append(request.headers.get("Proxy-Authorization"))
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with self._client.request(request.method, URL(target, encoded=True), headers=headers, data=body or None,
                                        allow_redirects=False) as answer:
            data = await answer.read()
            passed = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=answer.status, body=data, headers=passed)


__all__ = ["ForwardProxy"]
