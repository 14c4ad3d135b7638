"""error_middleware: a client that goes away mid-answer is not a server error."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket

import pytest

from tests.npmdata import publish_body

from .conftest import Registry


async def test_a_client_gone_mid_body_is_recorded_not_logged_as_an_error(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(publish_body("big", "1.0.0", manifest={"description": "x" * 6_000_000})).encode()
    headers = {**registry.auth("alice"), "Content-Type": "application/json"}
    assert (await registry.client.put("/big", data=io.BytesIO(body), headers=headers)).status == 201
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (registry.client.host, registry.client.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    # A query string: aiohttp's handler, which sends large bodies in slices.
    writer.write(b"GET /big?x=1 HTTP/1.1\r\nHost: registry.test\r\nAccept-Encoding: identity\r\n\r\n")
    assert (await reader.readexactly(100)).startswith(b"HTTP/1.1 200")
    writer.transport.abort()  # gone, with megabytes still to come
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    metrics = await (await registry.client.get("/-/metrics")).text()
    assert 'overlaystore_http_requests_total{method="GET",route="/{name}",status="499"} 1.0' in metrics
