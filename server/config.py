"""The server's configuration: frozen values, built once at start-up.

:mod:`server.config_file` builds a :class:`Config` from the embedded defaults,
a TOML file, the environment and command-line flags (in that order of
precedence, lowest first); everything else receives it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from overlaystore.policy import NamePolicy

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 4873
    #: Externally visible base URL without a trailing slash; tarball URLs are
    #: built from it at serve time. Empty: derived from the request.
    public_url: str = ""
    log_level: str = "info"
    #: "text" (one line a record) or "json" (one object a line; server.log_setup)
    log_format: str = "text"
    access_log: bool = True
    max_body_bytes: int = 10 * MiB
    workers: int = 1
    #: Seconds an idle keep-alive connection stays open; also all a client
    #: gets to send a request's headers (aiohttp's keep-alive timer runs from
    #: the connection's start or its last response), which bounds slow-loris
    #: clients. Above common proxies' upstream idle timeouts (nginx 60 s).
    keepalive_timeout_s: float = 75.0
    #: Seconds a request body may stall between two chunks before the request
    #: is answered 408 (a slow upload keeps going; a stalled one does not).
    body_timeout_s: float = 60.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    published: Path = Path("storage/published")
    cache: Path = Path("storage/cache")


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    #: Base URL of the upstream registry; None means no upstream at all.
    url: str | None = None
    #: Seconds a cached packument counts as fresh.
    max_age_s: float = 300.0
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    #: Extra attempts for idempotent GETs after a connection error or 5xx.
    retries: int = 2
    #: Consecutive failures that open the circuit breaker ...
    breaker_failures: int = 5
    #: ... and seconds it stays open before one trial request is let through.
    breaker_reset_s: float = 30.0
    #: Never contact the upstream; serve what the cache has.
    offline: bool = False
    #: The ``Authorization`` header value ("Bearer …" / "Basic …") sent with
    #: requests under ``url`` and nowhere else; None: none. Out of reprs, so
    #: that no log line or traceback shows it.
    authorization: str | None = field(default=None, repr=False)
    #: The HTTP proxy the upstream is reached through (``http://[user:pass@]host:port``);
    #: None: directly. Out of reprs: it may carry the proxy's credentials.
    proxy: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    #: Size cap of the proxy cache in bytes (None: unbounded).
    max_bytes: int | None = None
    #: Cached tarballs idle longer than this are collected (None: never).
    max_age_s: float | None = None
    #: Seconds between background GC runs.
    gc_interval_s: float = 600.0
    #: Size cap of the composed-packument LRU in bytes.
    view_max_bytes: int = 256 * MiB
    #: Tarballs up to this size are held in that LRU once read (larger ones
    #: are sent from their file on every request).
    view_tarball_max_bytes: int = 16 * MiB
    #: Size cap (estimated memory) of the parsed upstream packuments kept so
    #: that a composed-LRU miss does not re-parse an unchanged body; 0: none.
    parsed_max_bytes: int = 64 * MiB


@dataclass(frozen=True, slots=True)
class AuthConfig:
    htpasswd: Path = Path("storage/auth/htpasswd")
    tokens: Path = Path("storage/auth/tokens.json")
    #: Whether `npm adduser` may create new users.
    registration: bool = True
    admins: tuple[str, ...] = ()
    #: Seconds a verified credential is remembered, so bcrypt does not run per request.
    credential_cache_s: float = 60.0
    #: Failed logins allowed per user and per client address per minute.
    login_attempts_per_minute: int = 10
    #: bcrypt cost of new password hashes (2**rounds iterations; 12 is about 0.3 s).
    bcrypt_rounds: int = 12


@dataclass(frozen=True, slots=True)
class WatchConfig:
    enabled: bool = True
    polling: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    policy: NamePolicy = field(default_factory=NamePolicy)
