"""Who is asking: users, passwords, tokens, and the identity of a request.

:class:`Authenticator` turns an ``Authorization`` header into an
:class:`Identity` (or None: anonymous) and manages accounts. Users and their
bcrypt hashes live in an htpasswd file (:mod:`server.htpasswd`), tokens as
SHA-256 hashes in a JSON file (:mod:`server.tokens`); both are shared by all
worker processes through :class:`~server.authfiles.SharedFile`.

Invariants:

* No password, token secret or ``Authorization`` header is ever logged,
  stored in clear or put in an exception message.
* A revoked token, a removed user or a changed password stops working at once
  in this process (the in-memory tables are replaced before the call returns)
  and in other processes on their next request (the files' stat signature
  changed; they re-read, and re-read anyway every few seconds).
* bcrypt never runs on the event loop (``asyncio.to_thread``), and not on every
  request: a verified user/password pair is remembered for
  ``credential_cache_s``, keyed by an HMAC under a per-process random key and
  valid only while the user's stored hash is still the one it was checked
  against.
* Failed password checks are rate-limited per user and per client address;
  an unknown user costs the same bcrypt run as a known one.
* Secrets are compared in constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from overlaystore.errors import Conflict, InvalidInput, NotFound, OverlayStoreError
from overlaystore.policy import ALL, ANONYMOUS, AUTHENTICATED

from .authfiles import SharedFile
from .config import AuthConfig
from .errors import TooManyRequests, Unauthenticated
from .htpasswd import (
    Htpasswd,
    UserEntry,
    hash_password,
    is_bcrypt,
    validate_email,
    validate_password,
    validate_user_name,
    verify_password,
)
from .keys import AUTH
from .tokens import TokenRecord, TokenTable, iso, new_secret, parse_cidrs, redact, secret_hash

log = logging.getLogger("overlaystore.auth")

T = TypeVar("T")

#: Files are re-read at least this often even when their stat signature looks
#: unchanged (an inode number reused within one mtime tick would hide a write).
_FORCED_RELOAD_S = 5.0
_LIMIT_WINDOW_S = 60.0
_MAX_TRACKED = 10_000
_BAD_PASSWORD = "incorrect username or password"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user, as far as one request is concerned."""

    name: str
    email: str | None = None
    #: The key of the token the request used; None for a password (Basic) login.
    token_key: str | None = None
    readonly: bool = False
    is_admin: bool = False


def can_access(identity: Identity | None, principals: Sequence[str]) -> bool:
    """Whether ``identity`` (None: anonymous) is one of ``principals``:
    ``$all``, ``$authenticated``, ``$anonymous`` (not logged in) or user names."""
    for principal in principals:
        if principal == ALL:
            return True
        if principal == AUTHENTICATED and identity is not None:
            return True
        if principal == ANONYMOUS and identity is None:
            return True
        if identity is not None and principal == identity.name:
            return True
    return False


class _FailureLimiter:
    """Failed attempts per key in a sliding one-minute window."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        while times and times[0] <= now - _LIMIT_WINDOW_S:
            times.popleft()
        return times

    def check(self, keys: Sequence[str]) -> None:
        now = self._clock()
        for key in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= self._limit:
                wait = max(1, math.ceil(times[0] + _LIMIT_WINDOW_S - now))
                raise TooManyRequests(f"too many failed logins; try again in {wait} seconds", retry_after=wait)

    def record(self, keys: Sequence[str]) -> None:
        now = self._clock()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self._limit)).append(now)
        if len(self._failures) > _MAX_TRACKED:
            for key in list(self._failures):
                if not self._recent(key, now):
                    del self._failures[key]


@dataclass(frozen=True, slots=True)
class _Verified:
    user: str
    hash: str
    until: float


class Authenticator:
    """Accounts and credentials backed by ``config.htpasswd`` and ``config.tokens``.

    ``clock`` gives epoch seconds (token expiry, caches, rate limits).
    """

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._rounds = config.bcrypt_rounds
        self._clock = clock
        self._users_file = SharedFile(config.htpasswd)
        self._tokens_file = SharedFile(config.tokens)
        # Held while a table is re-read or written in this process; readers on
        # the event loop never wait for it (they keep the current table).
        self._state_lock = threading.Lock()
        self._users = Htpasswd.parse("")
        self._tokens = TokenTable.of(())
        self._users_read_at = self._tokens_read_at = -math.inf
        self._verified: dict[bytes, _Verified] = {}
        self._cache_key = secrets.token_bytes(32)
        self._limiter = _FailureLimiter(config.login_attempts_per_minute, clock)
        self._dummy_hash: str | None = None
        self._current_users()
        self._current_tokens()

    @property
    def registration(self) -> bool:
        """Whether ``npm adduser`` may create users."""
        return self._config.registration

    # ------------------------------------------------------------ the tables

    def _current_users(self) -> Htpasswd:
        now = self._clock()
        if (self._users_file.changed() or now - self._users_read_at > _FORCED_RELOAD_S) and \
                self._state_lock.acquire(blocking=False):
            try:
                data = self._users_file.read()
                self._users = Htpasswd.parse(data.decode("utf-8", errors="replace") if data else "")
                self._users_read_at = now
            finally:
                self._state_lock.release()
        return self._users

    def _current_tokens(self) -> TokenTable:
        now = self._clock()
        if (self._tokens_file.changed() or now - self._tokens_read_at > _FORCED_RELOAD_S) and \
                self._state_lock.acquire(blocking=False):
            try:
                self._tokens = TokenTable.parse(self._tokens_file.read(), source=str(self._tokens_file.path))
                self._tokens_read_at = now
            finally:
                self._state_lock.release()
        return self._tokens

    def _update_users(self, change: Callable[[Htpasswd], tuple[Htpasswd, T]]) -> T:
        """Apply ``change`` to the freshly read file, under the cross-process lock."""
        with self._users_file.locked(), self._state_lock:
            data = self._users_file.read()
            fresh = Htpasswd.parse(data.decode("utf-8", errors="replace") if data else "")
            updated, result = change(fresh)
            if updated is not fresh:
                self._users_file.replace(updated.render())
            self._users, self._users_read_at = updated, self._clock()
            return result

    def _update_tokens(self, change: Callable[[TokenTable], tuple[TokenTable, T]]) -> T:
        with self._tokens_file.locked(), self._state_lock:
            fresh = TokenTable.parse(self._tokens_file.read(), source=str(self._tokens_file.path))
            updated, result = change(fresh)
            if updated is not fresh:
                self._tokens_file.replace(updated.render())
            self._tokens, self._tokens_read_at = updated, self._clock()
            return result

    def _identity(self, entry: UserEntry, token: TokenRecord | None = None) -> Identity:
        return Identity(
            name=entry.name,
            email=entry.email,
            token_key=token.key if token else None,
            readonly=token.readonly if token else False,
            is_admin=entry.name in self._config.admins,
        )

    # ------------------------------------------------------- authentication

    async def authenticate(self, authorization: str | None, *, remote: str | None) -> Identity | None:
        """The identity an ``Authorization`` header proves; None without one.

        Raises :class:`Unauthenticated` (``scheme="Bearer"``) for an unknown,
        expired or revoked token, (``"Basic"``) for a wrong password, and
        :class:`TooManyRequests` while password attempts are rate-limited.
        """
        if authorization is None or not authorization.strip():
            return None
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer":
            return self._token_identity(credentials, remote)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                raise Unauthenticated("malformed Basic credentials", scheme="Basic") from None
            name, sep, password = decoded.partition(":")
            if not sep or not name:
                raise Unauthenticated("malformed Basic credentials", scheme="Basic")
            return await self._password_identity(name, password, remote)
        raise Unauthenticated("unsupported authorization scheme; use a token (npm login)", scheme="Bearer")

    def valid_token(self, authorization: str, *, remote: str | None) -> Identity | None:
        """The identity a valid ``Bearer`` token proves, found without
        waiting; None for any other header and for a token that does not
        hold (:meth:`authenticate` says why, with the right challenge)."""
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            return self._token_identity(credentials.strip(), remote)
        except Unauthenticated:
            return None

    def _token_identity(self, secret: str, remote: str | None) -> Identity:
        digest = secret_hash(secret)
        record = self._current_tokens().by_hash.get(digest)
        if record is None or not hmac.compare_digest(record.hash, digest):
            raise Unauthenticated("invalid or revoked token; log in again (npm login)", scheme="Bearer")
        if record.expired(self._clock()):
            raise Unauthenticated("the token has expired; log in again (npm login)", scheme="Bearer")
        if not record.allows(remote):
            # npm reports EAUTHIP for this challenge.
            raise Unauthenticated("this token may not be used from your address", scheme="ipaddress")
        entry = self._current_users().users.get(record.user)
        if entry is None:
            raise Unauthenticated("the token's user no longer exists", scheme="Bearer")
        return self._identity(entry, record)

    def _cache_slot(self, name: str, password: str) -> bytes:
        return hmac.new(self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()

    async def _password_identity(self, name: str, password: str, remote: str | None) -> Identity:
        entry = self._current_users().users.get(name)
        keys = [f"user:{name}"] + ([f"addr:{remote}"] if remote else [])
        # The limit comes before the cache: otherwise, while the owner's
        # password sits in the cache, a locked-out guesser would still learn
        # which guess is right (200 instead of 429) at full speed.
        self._limiter.check(keys)
        slot = self._cache_slot(name, password)
        hit = self._verified.get(slot)
        if entry is not None and hit is not None and hit.until > self._clock() and \
                hmac.compare_digest(hit.hash, entry.hash):
            return self._identity(entry)
        ok = await asyncio.to_thread(verify_password, password, entry.hash if entry else await self._dummy())
        if not ok or entry is None:
            self._limiter.record(keys)
            log.warning("failed password check for user %r from %s", name, remote or "?")
            raise Unauthenticated(_BAD_PASSWORD, scheme="Basic")
        if self._config.credential_cache_s > 0:
            self._remember(slot, _Verified(name, entry.hash, self._clock() + self._config.credential_cache_s))
        if not is_bcrypt(entry.hash):
            await self._upgrade_hash(entry, password)
        return self._identity(entry)

    def _remember(self, slot: bytes, verified: _Verified) -> None:
        if len(self._verified) >= _MAX_TRACKED:
            now = self._clock()
            self._verified = {k: v for k, v in self._verified.items() if v.until > now}
            while len(self._verified) >= _MAX_TRACKED:
                del self._verified[next(iter(self._verified))]
        self._verified[slot] = verified

    async def _dummy(self) -> str:
        """A hash to check unknown users against, so they cost the same time."""
        if self._dummy_hash is None:
            self._dummy_hash = await asyncio.to_thread(hash_password, secrets.token_urlsafe(16), rounds=self._rounds)
        return self._dummy_hash

    async def _upgrade_hash(self, entry: UserEntry, password: str) -> None:
        """Replace a legacy ({SHA}) hash by bcrypt after a successful login."""
        new_hash = await asyncio.to_thread(hash_password, password, rounds=self._rounds)

        def change(users: Htpasswd) -> tuple[Htpasswd, None]:
            current = users.users.get(entry.name)
            if current is None or current.hash != entry.hash:
                return users, None
            return users.with_user(UserEntry(entry.name, new_hash, entry.comment, entry.email)), None

        try:
            await asyncio.to_thread(self._update_users, change)
        except OverlayStoreError as exc:
            log.warning("could not upgrade the password hash of %r: %s", entry.name, exc)

    async def login(self, name: str, password: str, *, remote: str | None) -> Identity:
        """Check a user's password. Raises :class:`Unauthenticated` (Basic) for
        an unknown user or a wrong password, :class:`TooManyRequests`."""
        return await self._password_identity(name, password, remote)

    # ------------------------------------------------------------- accounts

    def user_exists(self, name: str) -> bool:
        return name in self._current_users().users

    def user_email(self, name: str) -> str | None:
        entry = self.user(name)
        return entry.email if entry else None

    def user_names(self) -> list[str]:
        return sorted(self._current_users().users)

    def user(self, name: str) -> UserEntry | None:
        return self._current_users().users.get(name)

    async def add_user(self, name: str, password: str, email: str | None) -> Identity:
        """Create a user. Raises :class:`InvalidInput` for a bad name, email or
        password and :class:`Conflict` if the user exists."""
        validate_user_name(name)
        email = validate_email(email)
        validate_password(password)
        hashed = await asyncio.to_thread(hash_password, password, rounds=self._rounds)
        entry = UserEntry(name=name, hash=hashed, comment=f"autocreated {iso(self._clock())}", email=email)

        def change(users: Htpasswd) -> tuple[Htpasswd, None]:
            if name in users.users:
                raise Conflict(f"user {name} already exists")
            return users.with_user(entry), None

        await asyncio.to_thread(self._update_users, change)
        log.info("user %r created", name)
        return self._identity(entry)

    def set_password(self, name: str, password: str) -> None:
        """Replace a user's password (blocking: bcrypt). Raises :class:`NotFound`.
        The user's tokens stay valid; revoke them separately if needed."""
        hashed = hash_password(password, rounds=self._rounds)

        def change(users: Htpasswd) -> tuple[Htpasswd, None]:
            entry = users.users.get(name)
            if entry is None:
                raise NotFound(f"no user named {name}")
            return users.with_user(UserEntry(name, hashed, entry.comment, entry.email)), None

        self._update_users(change)
        log.info("password of user %r changed", name)

    async def change_password(self, name: str, old: str, new: str, *, remote: str | None) -> None:
        """A user's own password change. ``old`` is checked as a login is
        (rate limit included: :class:`Unauthenticated`, :class:`TooManyRequests`);
        :class:`InvalidInput` for a ``new`` one that cannot be a password.
        Tokens stay valid, as with :meth:`set_password`."""
        validate_password(new)
        await self._password_identity(name, old, remote)
        await asyncio.to_thread(self.set_password, name, new)

    async def set_email(self, name: str, email: str | None) -> None:
        """Replace a user's email (None or "": none). Raises :class:`InvalidInput`
        for a malformed one and :class:`NotFound`."""
        email = validate_email(email)

        def change(users: Htpasswd) -> tuple[Htpasswd, None]:
            entry = users.users.get(name)
            if entry is None:
                raise NotFound(f"no user named {name}")
            if entry.email == email:
                return users, None
            return users.with_user(UserEntry(name, entry.hash, entry.comment, email)), None

        await asyncio.to_thread(self._update_users, change)

    def remove_user(self, name: str) -> None:
        """Delete a user and revoke all of their tokens. Raises :class:`NotFound`."""

        def change(users: Htpasswd) -> tuple[Htpasswd, None]:
            if name not in users.users:
                raise NotFound(f"no user named {name}")
            return users.without([name]), None

        self._update_users(change)
        self._update_tokens(lambda table: (table.removing(r.key for r in table.of_user(name)), None))
        log.info("user %r removed", name)

    # --------------------------------------------------------------- tokens

    async def create_token(
        self,
        identity: Identity,
        *,
        name: str = "",
        readonly: bool = False,
        cidr_whitelist: object = None,
        expires_days: int | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token for ``identity``'s user: the stored record and the
        secret (shown once, never stored). ``cidr_whitelist`` is a list of
        networks (as npm sends it) or None. Raises :class:`InvalidInput`."""
        if not isinstance(name, str) or len(name) > 200:
            raise InvalidInput("the token name must be a string of at most 200 characters")
        cidrs = parse_cidrs(cidr_whitelist)
        if expires_days is not None and (isinstance(expires_days, bool) or not isinstance(expires_days, int)
                                         or not 1 <= expires_days <= 36500):
            raise InvalidInput("expires must be a whole number of days (1 or more)")
        secret = new_secret()
        now = self._clock()

        def change(table: TokenTable) -> tuple[TokenTable, TokenRecord]:
            record = TokenRecord(
                key=table.new_key(),
                hash=secret_hash(secret),
                user=identity.name,
                name=name,
                display=redact(secret),
                created=iso(now),
                updated=iso(now),
                readonly=readonly,
                cidr_whitelist=cidrs,
                expires=iso(now + expires_days * 86400) if expires_days else None,
            )
            return table.adding(record), record

        if not self.user_exists(identity.name):
            raise NotFound(f"no user named {identity.name}")
        record = await asyncio.to_thread(self._update_tokens, change)
        log.info("token %s created for user %r", record.key, identity.name)
        return record, secret

    def list_tokens(self, user: str) -> list[TokenRecord]:
        """The user's tokens, oldest first."""
        return self._current_tokens().of_user(user)

    async def revoke_token(self, user: str, key_prefix: str) -> TokenRecord:
        """Revoke the user's token whose key is (or starts with) ``key_prefix``.
        Raises :class:`NotFound`, or :class:`InvalidInput` if ambiguous."""
        if not key_prefix:
            raise InvalidInput("a token key is required")

        def change(table: TokenTable) -> tuple[TokenTable, TokenRecord]:
            mine = table.of_user(user)
            matches = [r for r in mine if r.key == key_prefix] or [r for r in mine if r.key.startswith(key_prefix)]
            if not matches:
                raise NotFound(f"no token with key {key_prefix}")
            if len(matches) > 1:
                raise InvalidInput(f"the key prefix {key_prefix} matches {len(matches)} tokens; give more of it")
            return table.removing([matches[0].key]), matches[0]

        record = await asyncio.to_thread(self._update_tokens, change)
        log.info("token %s of user %r revoked", record.key, user)
        return record

    async def revoke_secret(self, secret: str) -> TokenRecord | None:
        """Revoke the token with this secret (logout); None if it was unknown."""
        digest = secret_hash(secret)

        def change(table: TokenTable) -> tuple[TokenTable, TokenRecord | None]:
            record = table.by_hash.get(digest)
            if record is None:
                return table, None
            return table.removing([record.key]), record

        record = await asyncio.to_thread(self._update_tokens, change)
        if record is not None:
            log.info("token %s of user %r revoked (logout)", record.key, record.user)
        return record

    def can_access(self, identity: Identity | None, principals: Sequence[str]) -> bool:
        """See :func:`can_access`."""
        return can_access(identity, principals)


_IDENTITY: web.RequestKey[tuple[Identity | None, OverlayStoreError | None]] = web.RequestKey("identity")


async def identity(request: web.Request) -> Identity | None:
    """The requester's identity, authenticated once per request (the result,
    or the error, is memoized on the request)."""
    memo = request.get(_IDENTITY)
    if memo is None:
        try:
            who = await request.app[AUTH].authenticate(request.headers.get("Authorization"), remote=request.remote)
            memo = (who, None)
        except (Unauthenticated, TooManyRequests) as exc:
            memo = (None, exc)
        request[_IDENTITY] = memo
    if memo[1] is not None:
        raise memo[1]
    return memo[0]


__all__ = ["Authenticator", "Identity", "TokenRecord", "can_access", "identity"]
