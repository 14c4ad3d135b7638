"""Credentials at rest, in comparisons, under brute force, and in the logs.

* passwords are stored as bcrypt hashes (the htpasswd file as written by an
  HTTP adduser), never in clear;
* token secrets are stored only as hashes: no file under the storage root
  contains a secret or any long piece of one, and listings redact them;
* secrets are compared in constant time (a source scan: no ``==``/``!=`` on
  secret material in the auth modules; ``hmac.compare_digest`` in use);
* failed logins are rate-limited per user and per client address (429 with
  Retry-After), on every way in: couch login, Basic auth on any request,
  the password re-check of ``npm token create``; a spoofed X-Forwarded-For
  does not buy a fresh address;
* no password, token or Authorization header value appears in any log line
  over a whole session (all loggers at DEBUG, the server's AccessLogger on),
  error paths and a storage failure included.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest

from server.config import AuthConfig
from server.htpasswd import Htpasswd
from tests.npmdata import publish_body
from tests.server.conftest import Registry

from .conftest import PASSWORD, Results

ROOT = Path(__file__).resolve().parents[2]
AUTH_MODULES = ["server/auth.py", "server/tokens.py", "server/htpasswd.py", "server/accounts.py",
                "server/authfiles.py", "server/access.py"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _couch(name: str, password: str) -> dict[str, Any]:
    return {"_id": f"org.couchdb.user:{name}", "name": name, "password": password, "email": f"{name}@example.com",
            "type": "user", "roles": []}


# ------------------------------------------------------------------ at rest


async def test_passwords_are_stored_as_bcrypt(registry_with: Any) -> None:
    reg: Registry = await registry_with()
    secret = "pw-Xq8#long-enough"
    await reg.adduser("alice", secret)
    text = reg.config.auth.htpasswd.read_text()
    assert secret not in text
    entry = Htpasswd.parse(text).users["alice"]
    assert re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", entry.hash), entry.hash
    assert int(entry.hash.split("$")[2]) == reg.config.auth.bcrypt_rounds
    assert bcrypt.checkpw(secret.encode(), entry.hash.encode())
    # A login and a token neither rehash nor rewrite the password.
    await reg.client.put("/-/user/org.couchdb.user:alice", json=_couch("alice", secret))
    assert Htpasswd.parse(reg.config.auth.htpasswd.read_text()).users["alice"].hash == entry.hash
    # The shipped cost is bcrypt's recommended order of magnitude, not the tests' 4.
    assert AuthConfig().bcrypt_rounds >= 10


async def test_tokens_are_stored_only_hashed(registry_with: Any) -> None:
    reg: Registry = await registry_with()
    login = await reg.adduser("alice", PASSWORD)
    resp = await reg.client.post("/-/npm/v1/tokens", json={"password": PASSWORD, "name": "ci"}, headers=_bearer(login))
    created = (await resp.json())["token"]
    assert (await reg.client.get("/-/whoami", headers=_bearer(created))).status == 200
    listed = await (await reg.client.get("/-/npm/v1/tokens", headers=_bearer(login))).json()
    stored = reg.config.auth.tokens.read_text()
    for secret in (login, created):
        assert secret.startswith("ovs_") and len(secret) >= 40
        assert hashlib.sha256(secret.encode()).hexdigest() in stored
        # Not the secret, nor any 10-character piece of it beyond what a listing shows ("ovs_Ab").
        pieces = [secret[i : i + 10] for i in range(6, len(secret) - 9)]
        for path in reg.config.storage.published.parent.rglob("*"):
            if path.is_file():
                data = path.read_bytes().decode("utf-8", "replace")
                assert not any(p in data for p in pieces), f"{path} holds part of a token"
        for obj in listed["objects"]:
            assert not any(p in obj["token"] for p in pieces)
    assert all(o["token"].endswith("…") for o in listed["objects"])


def _secret_comparisons(path: Path) -> list[str]:
    secretish = re.compile(r"secret|password|passwd|digest|hash|token|credential", re.I)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            continue
        sides = [node.left, *node.comparators]
        if any(isinstance(s, ast.Constant) for s in sides):
            continue  # against a literal (None, "", a scheme name): not secret material
        ids = [n.id if isinstance(n, ast.Name) else n.attr
               for s in sides for n in ast.walk(s) if isinstance(n, (ast.Name, ast.Attribute))]
        if any(secretish.search(i) for i in ids):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


#: Comparisons the scan flags that are not of a secret against a guess.
ALLOWED = {
    # _upgrade_hash: "is the stored hash still the one we verified?" (two
    # values read from our own file, nothing an attacker supplies)
    "current.hash != entry.hash",
}


def test_secrets_are_compared_in_constant_time() -> None:
    flagged = [f for path in AUTH_MODULES for f in _secret_comparisons(ROOT / path)]
    unexpected = [f for f in flagged if f.split(": ", 1)[1] not in ALLOWED]
    assert unexpected == [], "compare secrets with hmac.compare_digest:\n" + "\n".join(unexpected)
    auth = (ROOT / "server/auth.py").read_text()
    # token hashes and the verified-credential cache
    assert auth.count("hmac.compare_digest(") >= 2
    assert "hmac.compare_digest(" in (ROOT / "server/htpasswd.py").read_text()  # legacy {SHA} hashes
    assert "bcrypt.checkpw(" in (ROOT / "server/htpasswd.py").read_text()  # constant time itself


# ------------------------------------------------------------------ rate limits


async def _from(address: str, reg: Registry, method: str, path: str, **kw: Any) -> aiohttp.ClientResponse:
    """A request from a given loopback source address (127.0.0.x)."""
    server = reg.client.server
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.request(method, f"http://{server.host}:{server.port}{path}", **kw) as resp:
            await resp.read()
            return resp


LIMIT = 3


async def test_failed_logins_are_limited_per_user(registry_with: Any, security_results: Results) -> None:
    reg: Registry = await registry_with(auth={"login_attempts_per_minute": LIMIT})
    await reg.adduser("alice", PASSWORD)
    await reg.adduser("bob", PASSWORD)
    # Alice uses her password: it is in the verified-credential cache now.
    assert (await _from("127.0.0.5", reg, "GET", "/-/whoami", headers=_basic("alice", PASSWORD))).status == 200
    # Wrong passwords for alice from several addresses, on each way in.
    attempts = [
        ("127.0.0.2", "PUT", "/-/user/org.couchdb.user:alice", {"json": _couch("alice", "wrong-1")}),
        ("127.0.0.3", "GET", "/-/whoami", {"headers": _basic("alice", "wrong-2")}),
        ("127.0.0.4", "PUT", "/foo", {"headers": _basic("alice", "wrong-3"), "json": publish_body("foo", "1.0.0")}),
    ]
    for address, method, path, kw in attempts:
        resp = await _from(address, reg, method, path, **kw)
        assert resp.status == 401, (address, path, resp.status)
    # Now even the right password is refused for alice, from a fresh address ...
    resp = await _from("127.0.0.5", reg, "PUT", "/-/user/org.couchdb.user:alice", json=_couch("alice", PASSWORD))
    assert resp.status == 429
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= 60
    security_results.tally.add("login rate limit (per user)", resp.status)
    # ... and through Basic auth, although that password is cached (else a
    # guesser could tell the right guess by its 200); a token issued
    # earlier still works (it is not a password guess) ...
    assert (await _from("127.0.0.5", reg, "GET", "/-/whoami", headers=_basic("alice", PASSWORD))).status == 429
    assert (await _from("127.0.0.5", reg, "GET", "/-/whoami", headers=reg.auth("alice"))).status == 200
    # ... and the re-check of npm token create is limited too.
    resp = await _from("127.0.0.5", reg, "POST", "/-/npm/v1/tokens", headers=reg.auth("alice"), json={"password": PASSWORD})
    assert resp.status == 429
    # Bob is not affected.
    assert (await _from("127.0.0.5", reg, "PUT", "/-/user/org.couchdb.user:bob", json=_couch("bob", PASSWORD))).status == 201


async def test_failed_logins_are_limited_per_address(registry_with: Any, security_results: Results) -> None:
    reg: Registry = await registry_with(auth={"login_attempts_per_minute": LIMIT})
    for user in ("alice", "bob", "carol"):
        await reg.adduser(user, PASSWORD)
    # One guess each at three users (one unknown) from one address ...
    for user in ("alice", "bob", "nobody"):
        resp = await _from("127.0.0.6", reg, "GET", "/-/whoami", headers=_basic(user, "guess"))
        assert resp.status == 401
    # ... and that address is locked out, whatever it claims to forward for ...
    for headers in ({}, {"X-Forwarded-For": "10.9.8.7"}, {"X-Real-IP": "10.9.8.7", "Forwarded": "for=10.9.8.7"}):
        resp = await _from("127.0.0.6", reg, "PUT", "/-/user/org.couchdb.user:carol",
                           json=_couch("carol", PASSWORD), headers=headers)
        assert resp.status == 429, headers
        assert int(resp.headers["Retry-After"]) >= 1
        security_results.tally.add("login rate limit (per address)", resp.status)
    # ... while carol logs in from elsewhere.
    resp = await _from("127.0.0.7", reg, "PUT", "/-/user/org.couchdb.user:carol", json=_couch("carol", PASSWORD))
    assert resp.status == 201


# ------------------------------------------------------------------ logs


async def test_no_secret_in_any_log_line(
    registry_with: Any, caplog: pytest.LogCaptureFixture, security_results: Results
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.client", "aiohttp.internal",
                 "overlaystore", "overlaystore.access", "overlaystore.auth", "overlaystore.server", "asyncio"):
        caplog.set_level(logging.DEBUG, logger=name)
    reg: Registry = await registry_with(access_log=True, auth={"login_attempts_per_minute": 6})
    c = reg.client
    password, wrong = "pw-Alice-7f3c9e", "pw-Wrong-0b1d2a"
    secrets: list[str] = [password, wrong]

    t1 = await reg.adduser("alice", password)
    resp = await c.put("/-/user/org.couchdb.user:alice", json=_couch("alice", wrong))
    assert resp.status == 401
    resp = await c.put("/-/user/org.couchdb.user:alice", json=_couch("alice", password), headers=_bearer(t1))
    t2 = (await resp.json())["token"]
    assert (await c.get("/-/whoami", headers=_basic("alice", password))).status == 200
    assert (await c.get("/-/whoami", headers=_basic("alice", wrong))).status == 401
    resp = await c.post("/-/npm/v1/tokens", json={"password": password, "readonly": True}, headers=_bearer(t1))
    t3, key3 = (await resp.json())["token"], (await resp.json())["key"]
    assert (await c.post("/-/npm/v1/tokens", json={"password": wrong}, headers=_bearer(t1))).status == 401
    assert (await c.get("/-/npm/v1/tokens", headers=_bearer(t3))).status == 200
    assert (await c.delete(f"/-/npm/v1/tokens/token/{key3}", headers=_bearer(t1))).status == 204
    assert (await c.get("/-/whoami", headers=_bearer(t3))).status == 401  # revoked
    assert (await c.put("/foo", json=publish_body("foo", "1.0.0"), headers=_bearer(t1))).status == 201
    assert (await c.put("/foo", json=publish_body("foo", "1.0.1"), headers=_basic("alice", password))).status == 201
    assert (await c.put("/-/package/foo/dist-tags/beta", json="1.0.1", headers=_basic("alice", password))).status == 201
    resp = await c.put("/-/user/org.couchdb.user:alice/-rev/1-x", json=_couch("alice", password),
                       headers=_basic("alice", password))
    t4 = (await resp.json())["token"]
    assert (await c.delete(f"/-/user/token/{t2}", headers=_bearer(t2))).status == 200  # npm logout
    assert (await c.get("/-/whoami", headers=_bearer(t2))).status == 401
    forged = "ovs_" + "Zk9yZ2VkLXRva2VuLXZhbHVl" * 2
    assert (await c.get("/-/whoami", headers=_bearer(forged))).status == 401
    assert (await c.get("/-/whoami", headers={"Authorization": f"Token {forged}"})).status == 401
    assert (await c.get("/-/whoami", headers=_basic("nobody", wrong))).status == 401
    # A storage failure while the secret is in the path: the error is logged, the secret is not.
    tokens_file = reg.config.auth.tokens
    good = tokens_file.read_bytes()
    tokens_file.write_bytes(b"{ damaged")
    resp = await c.delete(f"/-/user/token/{t4}", headers=_bearer(t4))
    assert resp.status >= 500
    tokens_file.write_bytes(good)
    # Locked out after repeated failures: still nothing secret in the warning.
    for _ in range(6):
        await c.get("/-/whoami", headers=_basic("alice", wrong))
    assert (await c.get("/-/whoami", headers=_basic("alice", password))).status == 429
    metrics = await c.get("/-/metrics")
    metrics_text = (await metrics.text()) if metrics.status == 200 else ""

    secrets += [t1, t2, t3, t4, forged]
    secrets += [t[4:] for t in (t1, t2, t3, t4)]
    secrets += [_basic("alice", p)["Authorization"].split()[1] for p in (password, wrong)]
    secrets += [_basic("nobody", wrong)["Authorization"].split()[1]]
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]
    text = "\n".join(lines)
    # The check is not vacuous: the session was logged, access lines and errors included.
    assert "DELETE /-/user/token/<redacted>" in text
    assert "failed password check" in text
    assert any(r.levelno >= logging.ERROR for r in caplog.records), "the storage failure was logged"
    assert len(lines) > 30
    for secret in secrets:
        for line in lines:
            assert secret not in line, f"a secret in the log: {line[:300]}"
        assert secret not in metrics_text
    security_results.detail("log lines checked for secrets", len(lines), f"{len(secrets)} secrets, none found")
