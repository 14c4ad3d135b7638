"""Access tokens: what is stored about them, and the file they live in.

A token's secret (``ovs_`` + 43 url-safe characters, 256 random bits) is shown
to its owner once and never stored: the file keeps its SHA-256, which is
enough to recognise it (the secret has full entropy, so a slow hash would add
nothing) and useless to anyone who reads the file. Besides the hash a record
has a ``key``: 16 hex digits, unique, public; npm lists and revokes tokens by
it (``npm token revoke`` matches a prefix of it).

File format (JSON, replaced atomically, see :mod:`server.authfiles`)::

    {"version": 1, "tokens": [{"key": "1f0c...", "hash": "<sha256 hex>",
      "user": "alice", "name": "login", "display": "ovs_Ab…",
      "created": "2026-11-25T17:02:17.439Z", "updated": "...",
      "readonly": false, "cidr_whitelist": null, "expires": null}]}
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from overlaystore.errors import InvalidInput, StorageError

PREFIX = "ovs_"
FORMAT_VERSION = 1


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def redact(secret: str) -> str:
    """What listings show of a secret: the prefix and two characters."""
    return secret[: len(PREFIX) + 2] + "…"


def iso(ts: float) -> str:
    """npm's timestamp form: ``2026-11-25T17:02:17.439Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_cidrs(value: object) -> tuple[str, ...] | None:
    """A ``cidr_whitelist`` as given by npm (a list of networks, or null)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("cidr_whitelist must be a list of networks such as '192.168.1.0/24'")
    if not value:
        return None
    try:
        return tuple(str(ipaddress.ip_network(v.strip(), strict=False)) for v in value)
    except ValueError as exc:
        raise InvalidInput(f"cidr_whitelist: {exc}") from None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    key: str
    hash: str
    user: str
    name: str
    display: str
    created: str
    updated: str
    readonly: bool = False
    cidr_whitelist: tuple[str, ...] | None = None
    expires: str | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and parse_iso(self.expires) <= now

    def allows(self, remote: str | None) -> bool:
        """Whether a request from ``remote`` may use the token."""
        if self.cidr_whitelist is None:
            return True
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net) for net in self.cidr_whitelist)

    def public(self) -> dict[str, Any]:
        """The object npm's token commands read; the secret redacted."""
        out: dict[str, Any] = {
            "key": self.key,
            "token": self.display,
            "name": self.name,
            "created": self.created,
            "updated": self.updated,
            "readonly": self.readonly,
            "cidr_whitelist": list(self.cidr_whitelist) if self.cidr_whitelist is not None else None,
        }
        if self.expires is not None:
            out["expires"] = self.expires
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "hash": self.hash,
            "user": self.user,
            "name": self.name,
            "display": self.display,
            "created": self.created,
            "updated": self.updated,
            "readonly": self.readonly,
            "cidr_whitelist": list(self.cidr_whitelist) if self.cidr_whitelist is not None else None,
            "expires": self.expires,
        }

    @classmethod
    def from_json(cls, raw: Any) -> TokenRecord:
        cidrs = raw.get("cidr_whitelist")
        return cls(
            key=str(raw["key"]),
            hash=str(raw["hash"]),
            user=str(raw["user"]),
            name=str(raw.get("name", "")),
            display=str(raw.get("display", PREFIX + "…")),
            created=str(raw["created"]),
            updated=str(raw.get("updated", raw["created"])),
            readonly=bool(raw.get("readonly", False)),
            cidr_whitelist=tuple(cidrs) if cidrs else None,
            expires=raw.get("expires"),
        )


@dataclass(frozen=True, slots=True)
class TokenTable:
    """An immutable snapshot of the token file, indexed by hash and by key."""

    by_hash: dict[str, TokenRecord]
    by_key: dict[str, TokenRecord]

    @classmethod
    def of(cls, records: Iterable[TokenRecord]) -> TokenTable:
        records = list(records)
        return cls(by_hash={r.hash: r for r in records}, by_key={r.key: r for r in records})

    @classmethod
    def parse(cls, data: bytes | None, *, source: str) -> TokenTable:
        if not data:
            return cls.of(())
        try:
            doc = orjson.loads(data)
            return cls.of(TokenRecord.from_json(raw) for raw in doc["tokens"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
            # Fail closed: a damaged token file authenticates nobody until repaired.
            raise StorageError(f"the token file {source} is damaged ({type(exc).__name__}); restore it from backup") from exc

    def render(self) -> bytes:
        records = sorted(self.by_key.values(), key=lambda r: (r.created, r.key))
        doc = {"version": FORMAT_VERSION, "tokens": [r.to_json() for r in records]}
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"

    def new_key(self) -> str:
        while True:
            key = secrets.token_hex(8)
            if key not in self.by_key:
                return key

    def adding(self, record: TokenRecord) -> TokenTable:
        return TokenTable.of([*self.by_key.values(), record])

    def removing(self, keys: Iterable[str]) -> TokenTable:
        drop = set(keys)
        return TokenTable.of(r for r in self.by_key.values() if r.key not in drop)

    def of_user(self, user: str) -> list[TokenRecord]:
        return sorted((r for r in self.by_key.values() if r.user == user), key=lambda r: (r.created, r.key))


__all__ = [
    "PREFIX",
    "TokenRecord",
    "TokenTable",
    "iso",
    "new_secret",
    "parse_cidrs",
    "redact",
    "secret_hash",
]
