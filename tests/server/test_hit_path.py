"""The hit path (server/hit_path.py): LRU hits answered on the socket, exactly
as aiohttp's handler answers them; everything else left to aiohttp, in order."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import pytest

import server.hit_path as hit_path_module
import server.serving as serving
from overlaystore.policy import NamePolicy, PackageRule
from server.config import ServerConfig
from server.hit_path import HitPath, Target, parse_target
from server.keys import VIEW
from tests.helpers.hit_path_server import HitPathTestServer
from tests.npmdata import publish_body

from .conftest import Registry, RegistryFactory

ABBREVIATED = "application/vnd.npm.install-v1+json"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/express", Target("express", "/{name}")),
        (b"/@types%2fnode", Target("@types/node", "/{name}")),
        (b"/@types%2Fnode", Target("@types/node", "/{name}")),
        (b"/@types/node", Target("@types/node", "/@{scope}/{pkg}")),
        (b"/express/-/express-4.0.0.tgz", Target("express", "/{name}/-/{filename}", filename="express-4.0.0.tgz")),
        (b"/@types%2fnode/-/node-1.0.0.tgz",
         Target("@types/node", "/{name}/-/{filename}", filename="node-1.0.0.tgz")),
        (b"/@types/node/-/node-1.0.0.tgz",
         Target("@types/node", "/@{scope}/{pkg}/-/{filename}", filename="node-1.0.0.tgz")),
        (b"/express/4.0.0", Target("express", "/{name}/{version}", spec="4.0.0")),
        (b"/express/latest", Target("express", "/{name}/{version}", spec="latest")),
        (b"/@types/node/1.0.0", Target("@types/node", "/@{scope}/{pkg}/{version}", spec="1.0.0")),
        (b"/@types%2fnode/1.0.0", Target("@types/node", "/{name}/{version}", spec="1.0.0")),
        (b"/express?write=true", None),
        (b"/express/-/express-4.0.0.tar", None),
        (b"/express/-/.tgz", None),
        (b"/express/-/a/b.tgz", None),
        (b"/express/-/a%2fb.tgz", None),
        (b"/express/-/express-4.0.0.tgz/-rev/1", None),
        (b"/express/-rev/1", None),
        (b"/express/1.0.0/x", None),
        (b"/express/1.0.0%2b1", None),
        (b"/express/", None),
        (b"/@types/node/1.0.0/x", None),
        (b"/@types/node%2f1.0.0", None),  # aiohttp: the scoped route, package "node/1.0.0"
        (b"/@types%2fnode%2fx", None),
        (b"/@types%2f", None),
        (b"/@types/", None),
        (b"/@types", None),
        (b"/@/node", None),
        (b"/-/ping", None),
        (b"/-/v1/search", None),
        (b"/ex%70ress", None),
        (b"/", None),
        (b"express", None),
        (b"http://host/express", None),
        (b"/caf\xc3\xa9", None),
    ],
)
def test_parse_target(target: bytes, expected: Target | None) -> None:
    assert parse_target(target) == expected


class Answers:
    """Counts what the hit path answered and what it left to aiohttp."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answered = 0
        self.declined = 0
        original = HitPath.answer

        def answer(path: HitPath, *args: Any, **kwargs: Any) -> Any:
            result = original(path, *args, **kwargs)
            if result is None:
                self.declined += 1
            else:
                self.answered += 1
            return result

        monkeypatch.setattr(HitPath, "answer", answer)

    def reset(self) -> None:
        self.answered = self.declined = 0


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> Answers:
    return Answers(monkeypatch)


async def publish(registry: Registry, name: str, manifest: dict[str, Any] | None = None) -> None:
    path = "/" + name.replace("/", "%2f")
    body = json.dumps(publish_body(name, "1.0.0", manifest=manifest)).encode()
    headers = {**registry.auth("alice"), "Content-Type": "application/json"}
    resp = await registry.client.put(path, data=io.BytesIO(body), headers=headers)
    assert resp.status == 201, await resp.text()


async def cached(registry: Registry, name: str, manifest: dict[str, Any] | None = None) -> None:
    """Publish ``name`` and GET it in every variant, so the LRU holds them."""
    await publish(registry, name, manifest)
    for accept in ("application/json", ABBREVIATED):
        resp = await registry.client.get("/" + name.replace("/", "%2f"), headers={"Accept": accept})
        assert resp.status == 200


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            assert key.lower() not in headers, f"{key} sent twice"
            headers[key.lower()] = value.strip()
    body = b""
    if method != "HEAD" and status != 304:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Response(status, headers, body)


def request(target: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: registry.test"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(registry: Registry, data: bytes, count: int = 1, method: str = "GET") -> list[Response]:
    """Send ``data`` on a new connection, read ``count`` responses."""
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(data)
        return [await read_response(reader, method) for _ in range(count)]
    finally:
        writer.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("accept", ["application/json", ABBREVIATED])
@pytest.mark.parametrize("encoding", ["gzip, deflate", "identity"])
@pytest.mark.parametrize("spelling", ["/@acme%2fwidget", "/@acme%2Fwidget", "/@acme/widget"])
async def test_a_hit_is_answered_as_aiohttp_answers_it(
    registry: Registry, answers: Answers, method: str, accept: str, encoding: str, spelling: str
) -> None:
    await cached(registry, "@acme/widget")
    headers = {"Accept": accept, "Accept-Encoding": encoding}
    (fast,) = await exchange(registry, request(spelling, method=method, headers=headers), method=method)
    assert answers.answered == 1
    # A query string is left to aiohttp, which serves the same LRU entry.
    (slow,) = await exchange(registry, request(spelling + "?via=aiohttp", method=method, headers=headers),
                             method=method)
    assert answers.answered == 1
    assert fast.status == slow.status == 200
    assert fast.body == slow.body
    assert fast.headers.pop("date") and slow.headers.pop("date")
    assert fast.headers == slow.headers
    assert fast.headers["x-overlaystore-cache"] == "hit"
    if method == "GET":
        assert len(fast.body) == int(fast.headers["content-length"]) > 0
    else:
        assert fast.body == b"" and int(fast.headers["content-length"]) > 0


async def hit_after_a_miss(registry: Registry, answers: Answers, target: str, method: str) -> Response:
    """GET ``target`` (aiohttp answers, and the LRU keeps what it served),
    then ``method`` it again twice: on the hit path, and with a query string
    on aiohttp. The two answers must be identical but for the date; returns
    the hit path's."""
    (first,) = await exchange(registry, request(target))
    assert first.status == 200 and answers.answered == 0
    (fast,) = await exchange(registry, request(target, method=method), method=method)
    (slow,) = await exchange(registry, request(target + "?via=aiohttp", method=method), method=method)
    assert answers.answered == 1
    assert fast.status == slow.status == 200
    assert fast.body == slow.body == (first.body if method == "GET" else b"")
    fast.headers.pop("date"), slow.headers.pop("date")
    assert fast.headers == slow.headers
    return fast


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("spelling", ["/@acme%2fwidget", "/@acme%2Fwidget", "/@acme/widget"])
async def test_a_tarball_held_in_memory_is_answered_as_aiohttp_answers_it(
    registry: Registry, answers: Answers, method: str, spelling: str
) -> None:
    await publish(registry, "@acme/widget")
    target = spelling + "/-/widget-1.0.0.tgz"
    fast = await hit_after_a_miss(registry, answers, target, method)  # the first held it
    (fresh,) = await exchange(registry, request(target, headers={"If-None-Match": fast.headers["etag"]}))
    (stale,) = await exchange(registry, request(target, headers={"If-None-Match": '"other"'}))
    assert (fresh.status, stale.status) == (304, 200)
    assert answers.answered == 3


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("target", ["/@acme%2fwidget/1.0.0", "/@acme/widget/1.0.0", "/@acme%2Fwidget/latest"])
async def test_a_manifest_is_answered_as_aiohttp_answers_it(
    registry: Registry, answers: Answers, method: str, target: str
) -> None:
    await publish(registry, "@acme/widget")
    fast = await hit_after_a_miss(registry, answers, target, method)  # the first cut and kept it
    assert fast.headers["content-type"] == "application/json" and int(fast.headers["content-length"]) > 0


async def test_a_manifest_follows_a_publish(registry: Registry, answers: Answers) -> None:
    await publish(registry, "widget")
    for _ in range(2):  # aiohttp, then the hit path
        (answer,) = await exchange(registry, request("/widget/latest"))
        assert json.loads(answer.body)["version"] == "1.0.0"
    assert answers.answered == 1
    body = json.dumps(publish_body("widget", "2.0.0")).encode()
    resp = await registry.client.put("/widget", data=io.BytesIO(body),
                                     headers={**registry.auth("alice"), "Content-Type": "application/json"})
    assert resp.status == 201
    (answer,) = await exchange(registry, request("/widget/latest"))
    assert json.loads(answer.body)["version"] == "2.0.0"
    (answer,) = await exchange(registry, request("/widget/9.9.9"))  # never cut: aiohttp's 404
    assert answer.status == 404
    assert answers.answered == 1


@pytest.mark.parametrize("gzipped", [False, True])
async def test_revalidation_is_a_304_as_from_aiohttp(registry: Registry, answers: Answers, gzipped: bool) -> None:
    await cached(registry, "widget")
    encoding = {"Accept-Encoding": "gzip"} if gzipped else {}
    (first,) = await exchange(registry, request("/widget", headers=encoding))
    etag = first.headers["etag"]
    headers = {**encoding, "If-None-Match": f'W/{etag}, "other"'}
    (fast,) = await exchange(registry, request("/widget", headers=headers))
    (slow,) = await exchange(registry, request("/widget?via=aiohttp", headers=headers))
    assert answers.answered == 2
    assert fast.status == slow.status == 304
    fast.headers.pop("date"), slow.headers.pop("date")
    assert fast.headers == slow.headers
    assert "content-length" not in fast.headers and "content-type" not in fast.headers


async def test_pipelined_requests_are_answered_in_order(registry: Registry, answers: Answers) -> None:
    await cached(registry, "widget")
    await cached(registry, "gadget")
    answers.reset()
    data = (request("/widget") + request("/gadget") + request("/nothing-here") + request("/widget")
            + request("/gadget"))
    responses = await exchange(registry, data, count=5)
    assert [r.status for r in responses] == [200, 200, 404, 200, 200]
    assert [r.headers.get("content-type") for r in responses][:2] == ["application/json"] * 2
    names = [r.body and json.loads(r.body).get("name") for r in responses]
    assert names[:2] == ["widget", "gadget"] and names[3:] == ["widget", "gadget"]
    # The first two here; the miss and all after it on aiohttp's protocol.
    assert answers.answered == 2 and answers.declined == 1


async def test_a_connection_handed_over_serves_writes_and_reads(registry: Registry, answers: Answers) -> None:
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget"))
        assert (await read_response(reader)).status == 200
        body = json.dumps(publish_body("widget", "2.0.0")).encode()
        auth = registry.auth("alice")["Authorization"]
        writer.write(request("/widget", method="PUT", headers={
            "Authorization": auth, "Content-Type": "application/json", "Content-Length": str(len(body))}) + body)
        assert (await read_response(reader)).status == 201
        writer.write(request("/widget"))
        latest = await read_response(reader)
        assert json.loads(latest.body)["dist-tags"]["latest"] == "2.0.0"
    finally:
        writer.close()
    assert answers.answered == 1


async def test_a_request_split_across_packets_is_answered(registry: Registry, answers: Answers) -> None:
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        data = request("/widget")
        for i in range(0, len(data), 7):
            writer.write(data[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.001)
        assert (await read_response(reader)).status == 200
    finally:
        writer.close()
    assert answers.answered == 1


async def test_private_packages_need_a_valid_token(registry_factory: RegistryFactory, answers: Answers) -> None:
    policy = NamePolicy(rules=(PackageRule("@private/*", access=("$authenticated",)),))
    registry = await registry_factory(policy=policy)
    await registry.adduser("alice")
    await publish(registry, "@private/thing")
    resp = await registry.client.get("/@private%2fthing", headers=registry.auth("alice"))
    assert resp.status == 200  # now in the LRU
    token = registry.auth("alice")
    (anonymous,) = await exchange(registry, request("/@private%2fthing"))
    (forged,) = await exchange(registry, request("/@private%2fthing", headers={"Authorization": "Bearer forged"}))
    (basic,) = await exchange(registry, request("/@private%2fthing", headers=registry.basic("alice", "wrong")))
    (member,) = await exchange(registry, request("/@private%2fthing", headers=token))
    assert (anonymous.status, forged.status, basic.status, member.status) == (401, 401, 401, 200)
    assert answers.answered == 1  # only the valid token; aiohttp said no to the others


async def test_a_large_body_goes_out_in_slices(
    registry: Registry, answers: Answers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hit_path_module, "SLICE_BYTES", 100)
    await cached(registry, "widget")
    (fast,) = await exchange(registry, request("/widget"))
    (slow,) = await exchange(registry, request("/widget?via=aiohttp"))
    assert answers.answered == 1
    assert len(fast.body) > 500 and fast.body == slow.body


async def test_a_large_body_is_sent_whole_before_a_requested_close(
    registry: Registry, answers: Answers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hit_path_module, "SLICE_BYTES", 4096)
    await cached(registry, "widget", manifest={"description": "x" * 8_000_000})
    answers.reset()
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget", headers={"Connection": "close"}))
        response = await read_response(reader)
        assert await reader.read() == b""  # then closed
    finally:
        writer.close()
    assert answers.answered == 1
    assert response.status == 200 and len(response.body) > 8_000_000
    assert json.loads(response.body)["name"] == "widget"


async def test_a_client_that_does_not_read_is_not_buffered_without_bound(
    registry: Registry, answers: Answers
) -> None:
    await cached(registry, "widget", manifest={"description": "x" * 100_000})
    answers.reset()
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port, limit=2**16)
    try:
        writer.write(request("/widget") * 500)  # 50 MB of answers
        await asyncio.sleep(0.5)  # the socket buffers fill up; the server stops reading
        assert answers.answered < 200
        responses = [await read_response(reader) for _ in range(500)]
    finally:
        writer.close()
    assert {r.status for r in responses} == {200}
    assert len({r.body for r in responses}) == 1 and len(responses[0].body) > 100_000
    assert answers.answered == 500


async def test_other_requests_go_to_aiohttp(registry: Registry, answers: Answers) -> None:
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(b"GET /widget HTTP/1.0\r\nHost: registry.test\r\n\r\n")
        old = await read_response(reader)
        assert old.status == 200 and len(old.body) > 0
    finally:
        writer.close()
    (garbage,) = await exchange(registry, b"NOT HTTP AT ALL\r\n\r\n")
    assert garbage.status == 400
    (post,) = await exchange(registry, request("/widget", method="POST", headers={"Content-Length": "0"}))
    assert post.status == 405
    (manifest,) = await exchange(registry, request("/widget/1.0.0"))
    assert manifest.status == 200
    (upgrade,) = await exchange(registry, request("/widget", headers={"Connection": "Upgrade", "Upgrade": "h2c"}))
    assert upgrade.status == 200
    assert answers.answered == 0


async def test_connection_close_is_honoured(registry: Registry, answers: Answers) -> None:
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget", headers={"Connection": "close"}) + request("/widget"))
        response = await read_response(reader)
        assert response.status == 200 and response.headers["connection"] == "close"
        assert await reader.read() == b""  # closed, the second request unanswered
    finally:
        writer.close()
    assert answers.answered == 1


async def test_idle_connections_and_slow_heads_are_closed(registry_factory: RegistryFactory) -> None:
    registry = await registry_factory(server=ServerConfig(public_url="http://registry.test", keepalive_timeout_s=0.3))
    await registry.adduser("alice")
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget"))
        assert (await read_response(reader)).status == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # idle: closed
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        for byte in b"GET /widget HTTP/1.1\r\nHost: x":
            writer.write(bytes([byte]))
            await asyncio.sleep(0.05)
            if reader.at_eof():
                break
        assert await asyncio.wait_for(reader.read(), 5) == b""  # trickling a head: closed
    finally:
        writer.close()


async def test_stopping_the_site_closes_hit_path_connections(registry: Registry) -> None:
    await cached(registry, "widget")
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget"))
        assert (await read_response(reader)).status == 200
        server = registry.client.server
        assert isinstance(server, HitPathTestServer) and server.site is not None
        await server.site.stop()
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_stopping_lets_a_body_being_sent_finish(
    registry: Registry, answers: Answers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hit_path_module, "SLICE_BYTES", 4096)
    await cached(registry, "widget", manifest={"description": "x" * 8_000_000})
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget"))
        head = await reader.readuntil(b"\r\n\r\n")  # the body is on its way
        server = registry.client.server
        assert isinstance(server, HitPathTestServer) and server.site is not None
        await asyncio.wait_for(server.site.stop(), 5)
        rest = await reader.read()  # all of it, then closed
        await asyncio.wait_for(server.site.wait_closed(), 5)
    finally:
        writer.close()
    length = int(head.decode().lower().split("content-length: ")[1].split("\r\n")[0])
    assert len(rest) == length and json.loads(rest)["name"] == "widget"


async def test_stopping_cuts_off_a_client_that_stopped_reading(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hit_path_module, "SLICE_BYTES", 4096)
    monkeypatch.setattr(serving, "SHUTDOWN_TIMEOUT_S", 0.3)
    await cached(registry, "widget", manifest={"description": "x" * 8_000_000})
    reader, writer = await asyncio.open_connection(registry.client.host, registry.client.port)
    try:
        writer.write(request("/widget"))
        await reader.readuntil(b"\r\n\r\n")
        server = registry.client.server
        assert isinstance(server, HitPathTestServer) and server.site is not None
        await asyncio.wait_for(server.site.stop(), 5)
        assert server.site._connections, "stop() leaves the draining to wait_closed()"
        await asyncio.wait_for(server.site.wait_closed(), 5)  # not waiting for the reader
        assert server.site._connections == set()
    finally:
        writer.close()


async def test_hits_are_counted_and_logged(
    registry_factory: RegistryFactory, answers: Answers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="overlaystore.access")
    registry = await registry_factory()
    await registry.adduser("alice")
    await cached(registry, "widget")
    misses = registry.app[VIEW].stats.misses
    await exchange(registry, request("/widget") * 3, count=3)
    await exchange(registry, request("/@acme/nothing"))  # a miss, looked up by both paths
    assert answers.answered == 3
    assert registry.app[VIEW].stats.misses == misses + 1
    metrics = await (await registry.client.get("/-/metrics")).text()
    assert 'overlaystore_http_requests_total{method="GET",route="/{name}",status="200"} 5.0' in metrics
    assert 'overlaystore_served_total{kind="packument",outcome="hit"} 3.0' in metrics
    lines = [r.getMessage() for r in caplog.records if r.name == "overlaystore.access"]
    assert sum(line.startswith("GET /widget 200 ") and line.endswith(" hit") for line in lines) == 3
