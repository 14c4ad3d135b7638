"""Serving an application on its port: the event loop, the listening site
whose connections start on the hit path (:mod:`server.hit_path`), graceful
shutdown. Used by the single-process server and by every worker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .access_log import AccessLogger
from .config import Config
from .hit_path import HitPathProtocol, protocol_factory

#: Seconds in-flight requests get to finish on shutdown.
SHUTDOWN_TIMEOUT_S = 30.0
#: Pending connections the kernel queues for accept() (aiohttp's default is
#: 128, which a burst of connections overflows: the excess then waits for SYN
#: retransmits, seconds). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


def run_options(config: Config) -> dict[str, Any]:
    """The settings every serving process shares: address, access log,
    graceful-shutdown time, and connection limits. The keep-alive timer
    doubles as the deadline for a request's headers, which is what bounds
    slow-loris clients (a stalled body is bounded per request, see
    :func:`server.request_info.read_body`)."""
    return {
        "host": config.server.host,
        "port": config.server.port,
        "access_log": logging.getLogger("overlaystore.access") if config.server.access_log else None,
        "access_log_class": AccessLogger,
        "shutdown_timeout": SHUTDOWN_TIMEOUT_S,
        "keepalive_timeout": config.server.keepalive_timeout_s,
        "backlog": LISTEN_BACKLOG,
    }


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The serving loop: uvloop where it is installed, which answers about a
    fifth more small requests a second than asyncio's own loop here
    (benchmarks/README.md). Without it, the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class HitPathSite(web.BaseSite):
    """A TCP site (an address, or a bound socket) whose connections start on
    :class:`HitPathProtocol` and move to the runner's aiohttp protocol when
    a request is not a hit."""

    def __init__(self, runner: web.AppRunner, host: str | None = None, port: int = 0, *,
                 sock: socket.socket | None = None, backlog: int = LISTEN_BACKLOG,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=backlog)
        self._app_runner = runner  # BaseSite keeps it as a BaseRunner, which has no ``app``
        self._host = host
        self._port = port
        self._sock = sock
        self._reuse_port = reuse_port
        self._connections: set[HitPathProtocol] = set()
        self._closed: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        host, port = self._address()
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for until started)."""
        return self._address()[1]

    def _address(self) -> tuple[str | None, int]:
        if self._server is not None and self._server.sockets:
            host, port = self._server.sockets[0].getsockname()[:2]
            return str(host), int(port)
        return self._host, self._port

    async def start(self) -> None:
        await super().start()
        fallback = self._app_runner.server
        assert fallback is not None
        factory = protocol_factory(self._app_runner.app, fallback, self._connections)
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(factory, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(
                factory, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port or None
            )

    async def stop(self) -> None:
        """Stop listening and close the hit-path connections: idle ones at
        once, one sending a body after its last slice. Returns without
        waiting for those (see :meth:`wait_closed`): aiohttp's runner stops
        its sites before it drains its own requests, and the two drains must
        share one shutdown window, or a worker could take twice as long as
        its supervisor allows (``server.workers.KILL_MARGIN_S``)."""
        await super().stop()
        for connection in list(self._connections):
            connection.close()
        if self._closed is None:
            deadline = asyncio.get_running_loop().time() + SHUTDOWN_TIMEOUT_S
            self._closed = asyncio.ensure_future(self._drain(deadline))

    async def wait_closed(self) -> None:
        """Once :meth:`stop` was called: until every hit-path connection has
        closed (each leaves the set as it does), a client that stopped
        reading being cut off at the shutdown deadline."""
        if self._closed is not None:
            await self._closed

    async def _drain(self, deadline: float) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                while self._connections:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            for connection in list(self._connections):
                connection.abort()


async def _serve(app: web.Application, config: Config, reuse_port: bool, handle_signals: bool,
                 on_listening: Callable[[], None] | None) -> None:
    options = run_options(config)
    runner = web.AppRunner(
        app,
        handle_signals=handle_signals,
        access_log_class=options["access_log_class"],
        access_log=options["access_log"],
        keepalive_timeout=options["keepalive_timeout"],
        shutdown_timeout=options["shutdown_timeout"],
    )
    await runner.setup()
    site = HitPathSite(runner, options["host"], options["port"], backlog=options["backlog"], reuse_port=reuse_port)
    try:
        await site.start()
        if on_listening is not None:
            on_listening()
        await asyncio.Event().wait()  # until GracefulExit (a signal) ends the loop
    finally:
        await runner.cleanup()  # stops the site, then drains aiohttp's requests
        await site.wait_closed()


def serve(app: web.Application, config: Config, *, loop: asyncio.AbstractEventLoop | None = None,
          reuse_port: bool = False, handle_signals: bool = True,
          on_listening: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``config``'s address until SIGINT/SIGTERM (or, with
    ``handle_signals=False``, until something raises ``web.GracefulExit`` on
    the loop), then let in-flight requests finish and clean up.
    ``on_listening`` is called once the socket is bound. The loop (by default
    :func:`new_event_loop`) is closed on return."""
    loop = loop or new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(app, config, reuse_port, handle_signals, on_listening))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
