"""Path traversal and odd bytes in every path segment of every route.

The routes are read from the application's router, so a route added later
is fuzzed too. Each example takes one route and method, puts a hostile
token in one of its path parameters (the others get ordinary values) and
sends the request byte-exact over a socket: ``..``, ``%2e%2e``, ``%2f``,
backslashes, ``%00``, overlong UTF-8, double encoding and Unicode
look-alikes reach the server as written, not as a client library would
normalise them.

The caller is anonymous or a logged-in user without rights, so nothing may
change. Properties: no 5xx; errors are npm-shaped; no file under the test's
directory changes; the server keeps answering.

Requests that are not HTTP at all (a raw NUL, a space or non-ASCII bytes in
the request line) never reach the application: aiohttp's parser answers
them with its own plain-text 400 (see test_unparseable_request_lines).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.app import make_app
from tests.server.conftest import Registry, make_config

from .conftest import Actors, Results, make_actors
from .helpers import Tree, assert_responsive, check_error_body, raw_request
from .strategies import TRAVERSAL, url_segment

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_SLOW = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))

_PARAM = re.compile(r"\{(\w+)\}")
#: Ordinary values for the parameters not under attack (foo@1.0.0 is published).
ORDINARY = {"name": "foo", "scope": "acme", "pkg": "foo", "version": "1.0.0", "filename": "foo-1.0.0.tgz",
            "rev": "1-abc", "tag": "beta", "user": "alice", "token": "ovs_x", "key": "0123456789abcdef"}


def _routes() -> list[tuple[str, str]]:
    app = make_app(make_config(Path("/nonexistent"), None))
    out = sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"})
    return [(m, t) for m, t in out if _PARAM.search(t)]


ROUTES = _routes()

hostile_tokens = st.one_of(
    st.sampled_from(TRAVERSAL).map(url_segment),
    st.lists(st.one_of(st.sampled_from(TRAVERSAL), st.sampled_from(["foo", "1.0.0", ".tgz", "-", "@acme"]),
                       st.text(min_size=1, max_size=5)), min_size=2, max_size=4).map("".join).map(url_segment),
)


@pytest.fixture
async def actors(fuzz_registry: Registry) -> Actors:
    return await make_actors(fuzz_registry, publish=("foo", "@acme/foo"))


async def _case(actors: Actors, results: Results, route: tuple[str, str], data: Any, token: str, who: str) -> None:
    method, template = route
    params = _PARAM.findall(template)
    target = data.draw(st.sampled_from(params), label="param")
    path = _PARAM.sub(lambda m: token if m.group(1) == target else ORDINARY[m.group(1)], template)
    root = Tree.of(actors.config.storage.published.parent.parent)
    server = actors.client.server
    body = b'{"name": "x", "password": "not-the-password", "versions": {}}' if method in ("PUT", "POST") else b""
    resp = await raw_request(server.host, server.port, method, path, body=body,
                             headers={**actors.auth(who), "Content-Type": "application/json"})
    assert resp.status < 500, (method, path, who, resp.status, resp.body[:300])
    if resp.status >= 400:
        check_error_body(resp.status, resp.content_type, resp.body)
    results.tally.add(f"{method} {template} (path segments)", resp.status)
    root.assert_unchanged((method, path, who))
    await assert_responsive(actors.client)


@FUZZ
@given(route=st.sampled_from(ROUTES), data=st.data(), token=hostile_tokens, who=st.sampled_from(["anonymous", "bob"]))
async def test_hostile_path_segments_on_every_route(
    actors: Actors, security_results: Results, route: tuple[str, str], data: Any, token: str, who: str
) -> None:
    await _case(actors, security_results, route, data, token, who)


@pytest.mark.slow
@FUZZ_SLOW
@given(route=st.sampled_from(ROUTES), data=st.data(), token=hostile_tokens, who=st.sampled_from(["anonymous", "bob"]))
async def test_hostile_path_segments_on_every_route_slow(
    actors: Actors, security_results: Results, route: tuple[str, str], data: Any, token: str, who: str
) -> None:
    await _case(actors, security_results, route, data, token, who)


TRAVERSAL_FILENAMES = ["..", "%2e%2e", "..%2f..%2f..%2fetc%2fpasswd", "..%5c..%5cwindows", "%2e%2e%2f", "..%00.tgz",
                       "%c0%ae%c0%ae", "%252e%252e%252f", "\u2024\u2024", "\uff0e\uff0e%2f", ".hidden.tgz", "..tgz",
                       "..%2f..%2fpublished%2ffoo%2f.meta.json", "foo-1.0.0.tgz%00.json", "foo-1.0.0.tgz%2f.."]


async def test_tarball_filenames_never_escape_the_store(actors: Actors, security_results: Results) -> None:
    """Not even for the maintainer, asking for a published package's tarball."""
    server = actors.client.server
    for token in TRAVERSAL_FILENAMES:
        for who in ("anonymous", "alice"):
            for template in ("/foo/-/{t}", "/@acme/foo/-/{t}", "/@acme%2ffoo/-/{t}", "/foo/-/{t}/-rev/1-a"):
                method = "DELETE" if template.endswith("-rev/1-a") else "GET"
                path = template.format(t=url_segment(token))
                root = Tree.of(actors.config.storage.published.parent.parent)
                resp = await raw_request(server.host, server.port, method, path, headers=actors.auth(who))
                assert resp.status < 500, (path, resp.status)
                if method == "GET":
                    assert 400 <= resp.status < 500, (path, resp.status, resp.body[:200])
                if resp.status >= 400:
                    check_error_body(resp.status, resp.content_type, resp.body)
                assert b"root:" not in resp.body and b'"versions"' not in resp.body
                security_results.tally.add(f"{method} /{{name}}/-/{{filename}} (traversal)", resp.status)
                root.assert_unchanged(path)


UNPARSEABLE = [
    b"GET /\x00 HTTP/1.1", b"GET /foo bar HTTP/1.1", b"GET /\xc3\xa9 HTTP/1.1", b"GET /foo\tbar HTTP/1.1",
    b"GET /foo\r HTTP/1.1", b"\x00\x01\x02", b"GET / HTTP/9.9", b"G\x00T /-/ping HTTP/1.1",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1",
]


async def test_unparseable_request_lines(actors: Actors, security_results: Results) -> None:
    """Not HTTP: aiohttp's parser answers 400 (plain text, not npm-shaped:
    the application never sees the request) without a stack trace, and the
    server carries on."""
    server = actors.client.server
    for line in UNPARSEABLE:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
        assert status in (400, 414, 431, 0), raw[:200]
        assert b"Traceback" not in raw and b'File "' not in raw
        security_results.tally.add("(request line, not HTTP)", status or "closed")
        await assert_responsive(actors.client)
