"""Fixtures for handler tests: a registry app on tmp storage, wired to the
fake upstream, served as the real server serves it (hit path first) and
driven through aiohttp's test client."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import TCPConnector
from aiohttp.test_utils import TestClient

from overlaystore.policy import NamePolicy
from server import refresh
from server.app import make_app
from server.serving import new_event_loop
from server.config import AuthConfig, Config, ServerConfig, StorageConfig, UpstreamConfig, WatchConfig
from tests.helpers.hit_path_server import HitPathTestServer


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """The serving loop (server.serving.new_event_loop: uvloop), so that the
    handlers and the hit path run on the transports they meet in production."""
    return {"uvloop": new_event_loop}


def make_config(tmp_path: Path, upstream_url: str | None, **sections: Any) -> Config:
    config = Config(
        server=ServerConfig(public_url="http://registry.test"),
        storage=StorageConfig(published=tmp_path / "published", cache=tmp_path / "cache"),
        upstream=UpstreamConfig(url=upstream_url, retries=0, timeout_s=5, breaker_failures=1000),
        auth=AuthConfig(htpasswd=tmp_path / "auth" / "htpasswd", tokens=tmp_path / "auth" / "tokens.json", bcrypt_rounds=4),
        watch=WatchConfig(enabled=False),
        policy=NamePolicy(),
    )
    return replace(config, **sections)


class Registry:
    """A test client plus helpers to log in and publish."""

    def __init__(self, client: TestClient, config: Config) -> None:
        self.client = client
        self.config = config
        self.tokens: dict[str, str] = {}

    @property
    def app(self):  # type: ignore[no-untyped-def]
        return self.client.app

    async def adduser(self, name: str, password: str = "correct horse") -> str:
        resp = await self.client.put(
            f"/-/user/org.couchdb.user:{name}",
            json={"_id": f"org.couchdb.user:{name}", "name": name, "password": password,
                  "email": f"{name}@example.com", "type": "user", "roles": []},
        )
        assert resp.status == 201, await resp.text()
        token = (await resp.json())["token"]
        self.tokens[name] = token
        return str(token)

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def basic(self, user: str, password: str) -> dict[str, str]:
        raw = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {raw}"}


RegistryFactory = Callable[..., Awaitable[Registry]]


@pytest.fixture
async def registry_factory(aiohttp_client: Any, tmp_path: Path) -> RegistryFactory:
    count = 0

    async def factory(upstream_url: str | None = None, **sections: Any) -> Registry:
        nonlocal count
        count += 1
        config = make_config(tmp_path / f"r{count}", upstream_url, **sections)
        # A connection per request: each GET of a cached packument is then
        # answered by the hit path (a connection stays with aiohttp after
        # its first other request).
        client = await aiohttp_client(HitPathTestServer(make_app(config)),
                                      connector=TCPConnector(force_close=True))
        return Registry(client, config)

    return factory


@pytest.fixture
async def registry(registry_factory: RegistryFactory) -> Registry:
    """A registry with no upstream, and a logged-in user ``alice``."""
    reg = await registry_factory()
    await reg.adduser("alice")
    return reg


class ParseCount:
    """How many times :func:`server.refresh.parse_document` ran."""

    def __init__(self) -> None:
        self.calls = 0


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> ParseCount:
    """Counts upstream packument parses from here on."""
    count = ParseCount()
    real = refresh.parse_document

    async def counting(body: bytes) -> dict[str, Any]:
        count.calls += 1
        return await real(body)

    monkeypatch.setattr(refresh, "parse_document", counting)
    return count


@pytest.fixture
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean cwd and no OVERLAYSTORE_* or npm registry settings from the caller."""
    for key in list(os.environ):
        if key.startswith("OVERLAYSTORE_") or key.lower() == "npm_config_registry":
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path
