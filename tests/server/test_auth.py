"""The Authenticator: htpasswd users, hashed tokens, caching, rate limits,
several processes sharing the files, and secrets hygiene."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from pathlib import Path

import bcrypt
import orjson
import pytest

from server import htpasswd
from overlaystore.errors import Conflict, InvalidInput, NotFound, StorageError
from overlaystore.policy import ALL, ANONYMOUS, AUTHENTICATED
from server.auth import Authenticator, Identity, can_access
from server.config import AuthConfig
from server.errors import TooManyRequests, Unauthenticated

PASSWORD = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(tmp_path: Path) -> AuthConfig:
    return AuthConfig(
        htpasswd=tmp_path / "auth" / "htpasswd",
        tokens=tmp_path / "auth" / "tokens.json",
        admins=("root",),
        bcrypt_rounds=4,
        login_attempts_per_minute=3,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(config: AuthConfig, clock: Clock) -> Authenticator:
    return Authenticator(config, clock=clock)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def unauthenticated(auth: Authenticator, header: str, remote: str | None = "10.0.0.1") -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(header, remote=remote)
    return info.value


# ------------------------------------------------------------------ users


async def test_anonymous_without_a_header(auth: Authenticator) -> None:
    assert await auth.authenticate(None, remote="10.0.0.1") is None
    assert await auth.authenticate("  ", remote="10.0.0.1") is None


async def test_add_user_and_basic_auth(auth: Authenticator, config: AuthConfig) -> None:
    created = await auth.add_user("alice", PASSWORD, "alice@example.com")
    assert created == Identity(name="alice", email="alice@example.com")
    who = await auth.authenticate(basic("alice", PASSWORD), remote="10.0.0.1")
    assert who == Identity(name="alice", email="alice@example.com", token_key=None, readonly=False, is_admin=False)
    assert auth.user_exists("alice") and auth.user_email("alice") == "alice@example.com"
    line = config.htpasswd.read_text()
    assert line.startswith("alice:$2b$04$") and "autocreated " in line and "email=alice@example.com" in line
    assert stat.S_IMODE(os.stat(config.htpasswd).st_mode) == 0o600


async def test_admins_are_flagged(auth: Authenticator) -> None:
    await auth.add_user("root", PASSWORD, None)
    assert (await auth.login("root", PASSWORD, remote=None)).is_admin


async def test_wrong_password_unknown_user_and_garbage_are_basic_challenges(auth: Authenticator) -> None:
    await auth.add_user("alice", PASSWORD, None)
    for header in (basic("alice", "nope"), basic("nobody", PASSWORD), "Basic %%%", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert (await unauthenticated(auth, header)).scheme == "Basic"
    assert (await unauthenticated(auth, "Digest abc")).scheme == "Bearer"


async def test_add_user_validation(auth: Authenticator) -> None:
    await auth.add_user("alice", PASSWORD, None)
    with pytest.raises(Conflict):
        await auth.add_user("alice", "other", None)
    for name in ("", "$all", "a:b", "a b", "../x", "x" * 101):
        with pytest.raises(InvalidInput):
            await auth.add_user(name, PASSWORD, None)
    with pytest.raises(InvalidInput):
        await auth.add_user("bob", "", None)
    with pytest.raises(InvalidInput, match="too long"):
        await auth.add_user("bob", "é" * 40, None)  # 80 bytes: bcrypt would ignore the tail
    with pytest.raises(InvalidInput):
        await auth.add_user("bob", PASSWORD, "not an email")


async def test_set_password_and_remove_user(auth: Authenticator) -> None:
    await auth.add_user("alice", PASSWORD, "a@example.com")
    auth.set_password("alice", "new password")
    await auth.login("alice", "new password", remote=None)
    with pytest.raises(Unauthenticated):
        await auth.login("alice", PASSWORD, remote=None)
    assert auth.user_email("alice") == "a@example.com"  # kept across the change
    _, secret = await auth.create_token(Identity("alice"))
    auth.remove_user("alice")
    assert not auth.user_exists("alice") and auth.list_tokens("alice") == []
    await unauthenticated(auth, f"Bearer {secret}")
    with pytest.raises(NotFound):
        auth.set_password("alice", "x")
    with pytest.raises(NotFound):
        auth.remove_user("alice")


async def test_verdaccio_htpasswd_is_read_and_kept(auth: Authenticator, config: AuthConfig) -> None:
    y_hash = "$2y$" + bcrypt.hashpw(b"pw-y", bcrypt.gensalt(4)).decode()[4:]
    sha = "{SHA}" + base64.b64encode(hashlib.sha1(b"pw-sha").digest()).decode()
    config.htpasswd.parent.mkdir(parents=True)
    config.htpasswd.write_text(
        f"# operators' notes\nvera:{y_hash}:autocreated Mon Jan 01 2024\nold:{sha}\nbroken line\ncrypt:abCDefGHijKL\n"
    )
    assert (await auth.login("vera", "pw-y", remote=None)).name == "vera"
    # A legacy hash logs in once more and is upgraded to bcrypt.
    await auth.login("old", "pw-sha", remote=None)
    text = config.htpasswd.read_text()
    assert "{SHA}" not in text and "old:$2b$04$" in text
    # Unknown lines and formats survive the rewrite; unsupported hashes never verify.
    assert "# operators' notes" in text and "broken line" in text and "crypt:abCDefGHijKL" in text
    assert f"vera:{y_hash}:autocreated Mon Jan 01 2024" in text
    with pytest.raises(Unauthenticated):
        await auth.login("crypt", "abCDefGHijKL", remote=None)


# ------------------------------------------------------------------ tokens


async def test_tokens_are_stored_hashed(auth: Authenticator, config: AuthConfig) -> None:
    await auth.add_user("alice", PASSWORD, None)
    record, secret = await auth.create_token(Identity("alice"), name="ci")
    assert secret.startswith("ovs_") and len(secret) > 40
    assert len(record.key) == 16 and int(record.key, 16) >= 0
    assert record.display == secret[:6] + "…"
    raw = config.tokens.read_bytes()
    assert secret.encode() not in raw and secret[6:].encode() not in raw
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    assert stat.S_IMODE(os.stat(config.tokens).st_mode) == 0o600
    stored = orjson.loads(raw)["tokens"][0]
    assert {"key", "user", "name", "created", "updated", "readonly", "cidr_whitelist", "expires"} <= stored.keys()
    who = await auth.authenticate(f"Bearer {secret}", remote="10.0.0.1")
    assert who == Identity(name="alice", token_key=record.key)
    assert auth.list_tokens("alice") == [record] and auth.list_tokens("bob") == []


async def test_unknown_token_is_a_bearer_challenge(auth: Authenticator) -> None:
    assert (await unauthenticated(auth, "Bearer ovs_nope")).scheme == "Bearer"
    assert (await unauthenticated(auth, "Bearer")).scheme == "Bearer"


async def test_readonly_expiry_and_cidr(auth: Authenticator, clock: Clock) -> None:
    await auth.add_user("alice", PASSWORD, None)
    _, ro = await auth.create_token(Identity("alice"), readonly=True)
    assert (await auth.authenticate(f"Bearer {ro}", remote=None)).readonly  # type: ignore[union-attr]
    _, short = await auth.create_token(Identity("alice"), expires_days=1)
    await auth.authenticate(f"Bearer {short}", remote=None)
    clock.now += 86401
    assert "expired" in str(await unauthenticated(auth, f"Bearer {short}"))
    _, net = await auth.create_token(Identity("alice"), cidr_whitelist=["192.168.1.0/24", "::1"])
    await auth.authenticate(f"Bearer {net}", remote="192.168.1.77")
    await auth.authenticate(f"Bearer {net}", remote="::1")
    assert (await unauthenticated(auth, f"Bearer {net}", remote="10.0.0.1")).scheme == "ipaddress"
    await unauthenticated(auth, f"Bearer {net}", remote=None)
    with pytest.raises(InvalidInput):
        await auth.create_token(Identity("alice"), cidr_whitelist=["300.1.1.1/8"])
    with pytest.raises(InvalidInput):
        await auth.create_token(Identity("alice"), expires_days=0)


async def test_revoke_by_key_prefix_and_by_secret(auth: Authenticator) -> None:
    await auth.add_user("alice", PASSWORD, None)
    await auth.add_user("bob", PASSWORD, None)
    first, s1 = await auth.create_token(Identity("alice"))
    second, s2 = await auth.create_token(Identity("alice"))
    _, s3 = await auth.create_token(Identity("bob"))
    with pytest.raises(NotFound):
        await auth.revoke_token("bob", first.key)  # not bob's
    common = os.path.commonprefix([first.key, second.key])
    if common:
        with pytest.raises(InvalidInput, match="matches 2"):
            await auth.revoke_token("alice", common)
    assert await auth.revoke_token("alice", first.key[:8]) == first
    await unauthenticated(auth, f"Bearer {s1}")  # at once: no cache to outlive it
    await auth.authenticate(f"Bearer {s2}", remote=None)
    assert await auth.revoke_secret(s3) is not None
    assert await auth.revoke_secret(s3) is None
    await unauthenticated(auth, f"Bearer {s3}")


async def test_damaged_token_file_fails_closed(config: AuthConfig, clock: Clock) -> None:
    config.tokens.parent.mkdir(parents=True)
    config.tokens.write_text("{not json")
    with pytest.raises(StorageError, match="damaged"):
        Authenticator(config, clock=clock)


# --------------------------------------------------- several processes, one store


async def test_instances_sharing_files_see_each_others_writes(config: AuthConfig, clock: Clock) -> None:
    # Two Authenticators on the same files stand for two worker processes.
    a, b = Authenticator(config, clock=clock), Authenticator(config, clock=clock)
    await a.add_user("alice", PASSWORD, None)
    assert b.user_exists("alice")
    record, secret = await a.create_token(Identity("alice"))
    assert (await b.authenticate(f"Bearer {secret}", remote=None)).token_key == record.key  # type: ignore[union-attr]
    await a.revoke_token("alice", record.key)
    await unauthenticated(b, f"Bearer {secret}")
    # Concurrent writers through different instances lose nothing (the flock + re-read).
    import asyncio

    await asyncio.gather(*(inst.add_user(f"u{i}", PASSWORD, None) for i, inst in enumerate([a, b] * 4)))
    await asyncio.gather(*(inst.create_token(Identity("alice")) for inst in [a, b] * 4))
    assert a.user_names() == sorted(["alice"] + [f"u{i}" for i in range(8)])
    assert len(b.list_tokens("alice")) == 8


async def test_password_change_elsewhere_invalidates_cached_credentials(config: AuthConfig, clock: Clock) -> None:
    a, b = Authenticator(config, clock=clock), Authenticator(config, clock=clock)
    await a.add_user("alice", PASSWORD, None)
    await a.authenticate(basic("alice", PASSWORD), remote=None)  # now cached in a
    b.set_password("alice", "changed")
    await unauthenticated(a, basic("alice", PASSWORD))
    await a.authenticate(basic("alice", "changed"), remote=None)


# ------------------------------------------------------------ cache and limits


async def test_verified_passwords_are_cached_briefly(
    auth: Authenticator, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await auth.add_user("alice", PASSWORD, None)
    calls = []
    real = htpasswd.verify_password

    def counting(password: str, hashed: str) -> bool:
        calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr("server.auth.verify_password", counting)
    for _ in range(5):
        await auth.authenticate(basic("alice", PASSWORD), remote=None)
    assert len(calls) == 1
    clock.now += 61  # credential_cache_s = 60
    await auth.authenticate(basic("alice", PASSWORD), remote=None)
    assert len(calls) == 2
    # A wrong password is never served from the cache.
    await unauthenticated(auth, basic("alice", PASSWORD + "x"))
    assert len(calls) == 3


async def test_failed_logins_are_rate_limited_per_user_and_address(auth: Authenticator, clock: Clock) -> None:
    await auth.add_user("alice", PASSWORD, None)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await auth.login("alice", "wrong", remote="10.0.0.1")
    with pytest.raises(TooManyRequests) as info:
        await auth.login("alice", PASSWORD, remote="10.0.0.2")  # the user is locked, from anywhere
    assert 1 <= info.value.retry_after <= 60
    with pytest.raises(TooManyRequests):
        await auth.authenticate(basic("bob", "x"), remote="10.0.0.1")  # and so is the address
    clock.now += 61
    assert (await auth.login("alice", PASSWORD, remote="10.0.0.1")).name == "alice"


# ------------------------------------------------------------------ principals


@pytest.mark.parametrize(
    ("who", "principals", "allowed"),
    [
        (None, (ALL,), True),
        (None, (AUTHENTICATED,), False),
        (None, (ANONYMOUS,), True),
        (Identity("alice"), (ANONYMOUS,), False),
        (Identity("alice"), (AUTHENTICATED,), True),
        (Identity("alice"), ("bob", "alice"), True),
        (Identity("alice"), ("bob",), False),
        (Identity("alice"), (), False),
    ],
)
def test_can_access(auth: Authenticator, who: Identity | None, principals: tuple[str, ...], allowed: bool) -> None:
    assert can_access(who, principals) is allowed
    assert auth.can_access(who, principals) is allowed


# ------------------------------------------------------------------ hygiene


async def test_no_secret_reaches_the_log(auth: Authenticator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await auth.add_user("alice", PASSWORD, None)
    header = basic("alice", PASSWORD)
    await auth.authenticate(header, remote="10.0.0.1")
    record, secret = await auth.create_token(Identity("alice"))
    await auth.authenticate(f"Bearer {secret}", remote=None)
    wrong = basic("alice", "wrong-" + PASSWORD)
    await unauthenticated(auth, wrong)
    await auth.revoke_secret(secret)
    err = await unauthenticated(auth, f"Bearer {secret}")
    assert caplog.records  # something was logged: the check below is not vacuous
    for value in (PASSWORD, secret, secret[6:], header.split()[1], wrong.split()[1]):
        assert value not in caplog.text
        assert value not in str(err)
