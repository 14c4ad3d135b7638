"""send_body: large in-memory bodies go out in slices, byte-identical, with
their Content-Length; small ones and HEAD answers in one piece."""

from __future__ import annotations

import os
from typing import Any

import pytest
from aiohttp import web

from server.bodies import LARGE_BODY, SLICE, send_body

SIZES = [0, 1, LARGE_BODY, LARGE_BODY + 1, 3 * SLICE + 12345]


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    bodies = {size: os.urandom(size) for size in SIZES}

    async def handler(request: web.Request) -> web.StreamResponse:
        body = bodies[int(request.match_info["size"])]
        return await send_body(request, body, {"Content-Type": "application/octet-stream", "X-Size": str(len(body))})

    app = web.Application()
    app.router.add_route("*", "/{size}", handler)
    client = await aiohttp_client(app)
    client.bodies = bodies
    return client


@pytest.mark.parametrize("size", SIZES)
async def test_body_arrives_whole(client: Any, size: int) -> None:
    resp = await client.get(f"/{size}", headers={"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    assert "Transfer-Encoding" not in resp.headers
    assert resp.headers["X-Size"] == str(size)
    assert await resp.read() == client.bodies[size]


async def test_head_sends_headers_only(client: Any) -> None:
    size = 3 * SLICE + 12345
    resp = await client.head(f"/{size}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    assert await resp.read() == b""


async def test_keep_alive_survives_sliced_bodies(client: Any) -> None:
    size = 3 * SLICE + 12345
    for _ in range(3):  # one connection: each answer must end exactly where it says
        resp = await client.get(f"/{size}")
        assert await resp.read() == client.bodies[size]
