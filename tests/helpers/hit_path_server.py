"""aiohttp's TestServer, serving through the hit path as the real server does
(:class:`server.serving.HitPathSite`), so that every handler test that GETs a
cached packument twice also checks that the hit path answers as aiohttp would."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp.test_utils import TestServer
from yarl import URL

from server.serving import HitPathSite


class HitPathTestServer(TestServer):
    site: HitPathSite | None = None

    async def start_server(self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any) -> None:
        if self.runner:
            return
        self._loop = loop
        # Handlers run on when their client goes away, as in server.serving.serve.
        self.runner = await self._make_runner(**kwargs)
        await self.runner.setup()
        sock = self.socket_factory(self.host, self.port or 0, socket.AF_INET)
        self.host, self.port = sock.getsockname()[:2]
        self.site = HitPathSite(self.runner, sock=sock, backlog=128)
        await self.site.start()
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        await super().close()
        if self.site is not None:
            await self.site.wait_closed()
