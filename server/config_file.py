"""Building the frozen :class:`~server.config.Config` from its sources.

Precedence, lowest first: the embedded defaults (the dataclass defaults), a
TOML file, the environment (``OVERLAYSTORE_*``), command-line overrides. The
result is built once, at start-up, and passed explicitly from there on.

Invariants:

* Every value is checked where it is read, and a bad one is a
  :class:`ConfigError` that names the key the way the user wrote it
  (``[upstream].timeout``, ``OVERLAYSTORE_LISTEN``, ``--listen``).
  An unknown key is an error too, never silently ignored.
* Paths in the returned config are absolute. Relative paths in the file
  resolve against the file's directory (the default ``storage/...`` paths
  too, so an instance lives beside its config file); relative paths from the
  environment or the command line, and the defaults when there is no file,
  resolve against the current directory.
* The auth files default to ``<published>/../auth/``: they are data that must
  be backed up together with the published store, not with the cache.
* When no upstream is configured anywhere, the registry the local npm
  configuration names is used (``npm_config_registry``, then ``./.npmrc``,
  ``~/.npmrc``, the global npmrc, and last ``npm config get registry``).
  ``"none"`` (or ``""`` in the file) disables the upstream explicitly.
* Upstream credentials (``[upstream].token`` / ``basic_auth``) are only ever
  set explicitly, never read from an ``.npmrc``; they are kept out of reprs,
  logs and the printed configuration.
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import math
import os
import re
import tomllib
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from overlaystore.errors import InvalidInput
from overlaystore.policy import ALL, ANONYMOUS, AUTHENTICATED, NamePolicy, PackageRule, ProxyMode

from .config import (
    AuthConfig,
    CacheConfig,
    Config,
    ServerConfig,
    StorageConfig,
    UpstreamConfig,
    WatchConfig,
)
from .log_setup import LOG_FORMATS
from .npmrc import npm_registry

log = logging.getLogger("overlaystore.config")


class ConfigError(InvalidInput):
    """A configuration value is missing, unknown or malformed.

    ``key`` names the setting as the user wrote it (``[upstream].timeout``,
    ``OVERLAYSTORE_LISTEN``, ``--listen``, or the config file's path).
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_PRINCIPALS = (ALL, AUTHENTICATED, ANONYMOUS)

# A setter turns one raw value into canonical settings ("section.field" -> value).
Settings = dict[str, Any]
Setter = Callable[[object, str, Path], Settings]


# --------------------------------------------------------------------- values


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str) else json.dumps(value, default=str)


def _text(value: object, key: str, _base: Path | None = None) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_show(value)}")
    return value


def _strict_bool(value: object, key: str, _base: Path | None = None) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_show(value)}")
    return value


def _lenient_bool(value: object, key: str, _base: Path | None = None) -> bool:
    """Environment and command-line spelling of a flag: 1/0, true/false, yes/no, on/off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected true or false (1/0, yes/no, on/off), got {_show(value)}")


def _int(minimum: int, maximum: int | None = None) -> Callable[[object, str, Path], int]:
    def parse(value: object, key: str, _base: Path) -> int:
        if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_show(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise ConfigError(key, f"must be {bounds}, got {value}")
        return value

    return parse


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(*, positive: bool, optional: bool = False) -> Callable[[object, str, Path], float | None]:
    """Seconds: a number, or a string like ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``."""

    def parse(value: object, key: str, _base: Path) -> float | None:
        if optional and isinstance(value, str) and value.strip().lower() == "none":
            return None
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match is None:
                raise ConfigError(key, f"expected a number (seconds) or a duration like '30s', '5m', '1h', got {value!r}")
            seconds = float(match[1]) * _DURATION_UNITS[(match[2] or "s").lower()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            raise ConfigError(key, f"expected a number, got {_show(value)}")
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            raise ConfigError(key, f"must be a {'positive' if positive else 'non-negative'} number of seconds, got {_show(value)}")
        return seconds

    return parse


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def _size(*, optional: bool = False) -> Callable[[object, str, Path], int | None]:
    """Bytes: an integer, or a string like ``"10MiB"`` / ``"10M"`` (binary) or ``"10MB"`` (decimal)."""

    def parse(value: object, key: str, _base: Path) -> int | None:
        if optional and isinstance(value, str) and value.strip().lower() == "none":
            return None
        if isinstance(value, str):
            match = _SIZE.fullmatch(value.strip())
            if match is None or (match[3] and not match[2]):
                raise ConfigError(key, f"expected a size in bytes or like '512KiB', '10MiB', '2GB', got {value!r}")
            number, prefix, binary, suffix_b = match[1], match[2].lower(), match[3], match[4]
            # "10M" and "10MiB" are binary (as in nginx); "10MB" is decimal (SI).
            base = 1000 if (suffix_b and not binary and prefix) else 1024
            return int(float(number) * base ** _SIZE_POWERS[prefix])
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected a size in bytes, got {_show(value)}")
        if value < 0:
            raise ConfigError(key, f"must not be negative, got {value}")
        return value

    return parse


def _path(value: object, key: str, base: Path) -> Path:
    if isinstance(value, Path):
        value = str(value)
    text = _text(value, key)
    if not text.strip():
        raise ConfigError(key, "expected a path, got an empty string")
    path = Path(text).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def _http_url(value: object, key: str) -> str:
    text = _text(value, key).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"expected an http:// or https:// URL, got {text!r}")
    if parts.username is not None or parts.password is not None:
        # Not echoed: it holds a secret. In a URL it would be logged and printed.
        raise ConfigError(key, "the URL must not contain credentials; for the upstream, set "
                               "[upstream].token or basic_auth (or OVERLAYSTORE_UPSTREAM_TOKEN / _BASIC_AUTH)")
    if parts.query or parts.fragment:
        raise ConfigError(key, f"the URL must not have a query or fragment, got {text!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(key, f"the URL has an invalid port: {text!r}") from None
    return text.rstrip("/")


def _public_url(value: object, key: str, _base: Path) -> str:
    if isinstance(value, str) and not value.strip():
        return ""
    return _http_url(value, key)


def _upstream_url(value: object, key: str, _base: Path) -> str | None:
    """None means "explicitly no upstream"; a missing key means "ask npm"."""
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    return _http_url(value, key)


# Header-safe: printable ASCII without spaces (no header injection, no
# credentials that a proxy would mangle).
_CREDENTIAL = re.compile(r"[\x21-\x7e]+")


def _upstream_token(value: object, key: str, _base: Path) -> str:
    token = _text(value, key).strip()
    if not _CREDENTIAL.fullmatch(token):
        raise ConfigError(key, "expected a token: printable characters without spaces")
    return f"Bearer {token}"


def _upstream_basic_auth(value: object, key: str, _base: Path) -> str:
    text = _text(value, key).strip()
    user, colon, password = text.partition(":")
    if not colon or not user or not password or not _CREDENTIAL.fullmatch(text):
        raise ConfigError(key, "expected USER:PASSWORD (printable characters without spaces)")
    return "Basic " + base64.b64encode(text.encode("ascii")).decode("ascii")


def _proxy_url(value: object, key: str, _base: Path) -> str | None:
    """None: no proxy, whatever the environment says."""
    if isinstance(value, str) and value.strip().lower() in ("", "none"):
        return None
    text = _text(value, key).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(key, "expected a proxy URL like http://proxy.example:3128")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(key, "the proxy URL has an invalid port") from None
    return text.rstrip("/")


def _log_level(value: object, key: str, _base: Path) -> str:
    level = _text(value, key).strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(key, f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def _log_format(value: object, key: str, _base: Path) -> str:
    shape = _text(value, key).strip().lower()
    if shape not in LOG_FORMATS:
        raise ConfigError(key, f"expected one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return shape


def _user_list(value: object, key: str, _base: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(key, f"expected a list of user names, got {_show(value)}")
    return tuple(value)


_LISTEN = re.compile(r"\[(?P<v6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\s\[\]]+):(?P<port>\d+)|(?P<only>\d+)")


def parse_listen(value: object, key: str, _base: Path | None = None) -> Settings:
    """``HOST:PORT``, ``[IPV6]:PORT`` or a bare ``PORT`` (default host)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text(value, key).strip()
    match = _LISTEN.fullmatch(text)
    if match is None:
        raise ConfigError(key, f"expected HOST:PORT (e.g. 127.0.0.1:4873 or [::1]:4873), got {text!r}")
    port = int(match["port6"] or match["port"] or match["only"])
    if port > 65535:
        raise ConfigError(key, f"port {port} is out of range (0-65535)")
    host = match["v6"] or match["host"]
    return {"server.port": port} | ({"server.host": host} if host else {})


def format_listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _field(name: str, parse: Callable[[object, str, Path], Any]) -> Setter:
    def setter(value: object, key: str, base: Path) -> Settings:
        return {name: parse(value, key, base)}

    return setter


# --------------------------------------------------------------- the schema

_TOP: dict[str, Setter] = {
    "listen": parse_listen,
    "public_url": _field("server.public_url", _public_url),
    "log_level": _field("server.log_level", _log_level),
    "log_format": _field("server.log_format", _log_format),
    "access_log": _field("server.access_log", _strict_bool),
    "max_body": _field("server.max_body_bytes", _size()),
    "workers": _field("server.workers", _int(1)),
    "keepalive_timeout": _field("server.keepalive_timeout_s", _duration(positive=True)),
    "body_timeout": _field("server.body_timeout_s", _duration(positive=True)),
}

_TABLES: dict[str, dict[str, Setter]] = {
    "storage": {
        "published": _field("storage.published", _path),
        "cache": _field("storage.cache", _path),
    },
    "upstream": {
        "url": _field("upstream.url", _upstream_url),
        "max_age": _field("upstream.max_age_s", _duration(positive=False)),
        "timeout": _field("upstream.timeout_s", _duration(positive=True)),
        "connect_timeout": _field("upstream.connect_timeout_s", _duration(positive=True)),
        "retries": _field("upstream.retries", _int(0)),
        "breaker_failures": _field("upstream.breaker_failures", _int(1)),
        "breaker_reset": _field("upstream.breaker_reset_s", _duration(positive=True)),
        "offline": _field("upstream.offline", _strict_bool),
        "token": _field("upstream.authorization", _upstream_token),
        "basic_auth": _field("upstream.authorization", _upstream_basic_auth),
        "proxy": _field("upstream.proxy", _proxy_url),
    },
    "cache": {
        "max_bytes": _field("cache.max_bytes", _size(optional=True)),
        "max_age": _field("cache.max_age_s", _duration(positive=True, optional=True)),
        "gc_interval": _field("cache.gc_interval_s", _duration(positive=True)),
        "view_max_bytes": _field("cache.view_max_bytes", _size()),
        "view_tarball_max_bytes": _field("cache.view_tarball_max_bytes", _size()),
        "parsed_max_bytes": _field("cache.parsed_max_bytes", _size()),
    },
    "auth": {
        "htpasswd": _field("auth.htpasswd", _path),
        "tokens": _field("auth.tokens", _path),
        "registration": _field("auth.registration", _strict_bool),
        "admins": _field("auth.admins", _user_list),
        "credential_cache": _field("auth.credential_cache_s", _duration(positive=False)),
        "login_attempts_per_minute": _field("auth.login_attempts_per_minute", _int(1)),
        "bcrypt_rounds": _field("auth.bcrypt_rounds", _int(4, 31)),
    },
    "watch": {
        "enabled": _field("watch.enabled", _strict_bool),
        "polling": _field("watch.polling", _strict_bool),
    },
}

_RULE_KEYS = ("pattern", "access", "publish", "proxy")

_ENV: dict[str, Setter] = {
    "OVERLAYSTORE_LISTEN": parse_listen,
    "OVERLAYSTORE_PUBLIC_URL": _field("server.public_url", _public_url),
    "OVERLAYSTORE_PUBLISHED_STORAGE": _field("storage.published", _path),
    "OVERLAYSTORE_CACHE_STORAGE": _field("storage.cache", _path),
    "OVERLAYSTORE_UPSTREAM": _field("upstream.url", _upstream_url),
    "OVERLAYSTORE_OFFLINE": _field("upstream.offline", _lenient_bool),
    "OVERLAYSTORE_UPSTREAM_TOKEN": _field("upstream.authorization", _upstream_token),
    "OVERLAYSTORE_UPSTREAM_BASIC_AUTH": _field("upstream.authorization", _upstream_basic_auth),
    "OVERLAYSTORE_UPSTREAM_PROXY": _field("upstream.proxy", _proxy_url),
    "OVERLAYSTORE_LOG_LEVEL": _field("server.log_level", _log_level),
    "OVERLAYSTORE_LOG_FORMAT": _field("server.log_format", _log_format),
}

_OVERRIDES: dict[str, Setter] = {
    "listen": parse_listen,
    "public_url": _field("server.public_url", _public_url),
    "published_storage": _field("storage.published", _path),
    "cache_storage": _field("storage.cache", _path),
    "upstream": _field("upstream.url", _upstream_url),
    "offline": _field("upstream.offline", _lenient_bool),
    "log_level": _field("server.log_level", _log_level),
    "log_format": _field("server.log_format", _log_format),
    "workers": _field("server.workers", _int(1)),
}
#: Command-line override names (argparse ``dest``s) accepted by :func:`load_config`.
OVERRIDE_KEYS = tuple(_OVERRIDES)


def _unknown(key: str, known: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1].split("]")[-1], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(key, f"unknown key{hint}")


# ------------------------------------------------------------- the sources


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the config file: {exc.strerror or exc}") from None


def _file_settings(doc: Mapping[str, Any], base: Path) -> tuple[Settings, NamePolicy | None]:
    settings: Settings = {}
    policy: NamePolicy | None = None
    for key, value in doc.items():
        if key in _TOP:
            settings.update(_TOP[key](value, key, base))
        elif key == "upstream" and not isinstance(value, dict):
            # Shorthand: `upstream = "https://…"` / `upstream = "none"`.
            settings["upstream.url"] = _upstream_url(value, key, base)
        elif key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a table [{key}], got {_show(value)}")
            if key == "upstream":
                _one_credential(value, "[upstream]", "token", "basic_auth")
            schema = _TABLES[key]
            for sub, subvalue in value.items():
                label = f"[{key}].{sub}"
                if sub not in schema:
                    raise _unknown(label, tuple(schema))
                settings.update(schema[sub](subvalue, label, base))
        elif key == "packages":
            policy = _policy(value)
        else:
            raise _unknown(key, (*_TOP, *_TABLES, "packages"))
    return settings, policy


def _one_credential(values: Mapping[str, object], where: str, token: str, basic_auth: str) -> None:
    if all(str(values.get(k) or "").strip() for k in (token, basic_auth)):
        raise ConfigError(where, f"set {token} or {basic_auth}, not both: the upstream gets one Authorization header")


def _principals(value: object, key: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(key, f"expected a user name, a principal or a list of them, got {_show(value)}")
    for item in items:
        if item.startswith("$") and item not in _PRINCIPALS:
            raise ConfigError(key, f"unknown principal {item!r}; expected user names or one of {', '.join(_PRINCIPALS)}")
    return tuple(items)


def _policy(value: object) -> NamePolicy:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError("packages", "expected an array of tables ([[packages]] pattern = ...)")
    rules: list[PackageRule] = []
    for index, raw in enumerate(value):
        pattern = raw.get("pattern")
        where = f"[[packages]][{index}]" + (f" ({pattern!r})" if isinstance(pattern, str) else "")
        for key in raw:
            if key not in _RULE_KEYS:
                raise _unknown(f"{where}.{key}", _RULE_KEYS)
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}.pattern", "every [[packages]] rule needs a pattern (a glob such as '@acme/*')")
        rule = PackageRule(pattern=pattern)
        access = _principals(raw["access"], f"{where}.access") if "access" in raw else rule.access
        publish = _principals(raw["publish"], f"{where}.publish") if "publish" in raw else rule.publish
        proxy = rule.proxy
        if "proxy" in raw:
            modes = [m.value for m in ProxyMode]
            if raw["proxy"] not in modes:
                raise ConfigError(f"{where}.proxy", f"expected one of {', '.join(map(repr, modes))}, got {_show(raw['proxy'])}")
            proxy = ProxyMode(raw["proxy"])
        rules.append(PackageRule(pattern=pattern, access=access, publish=publish, proxy=proxy))
    return NamePolicy(rules=tuple(rules))


def _layer_settings(values: Mapping[str, object], schema: Mapping[str, Setter], label: Callable[[str], str],
                    base: Path, *, skip: Callable[[object], bool]) -> Settings:
    settings: Settings = {}
    for key, value in values.items():
        if key not in schema or skip(value):
            continue
        settings.update(schema[key](value, label(key), base))
    return settings


def load_config(
    path: Path | None,
    *,
    env: Mapping[str, str],
    overrides: Mapping[str, object],
    discover_upstream: bool = True,
) -> Config:
    """The effective configuration: defaults < ``path`` (or ``$OVERLAYSTORE_CONFIG``)
    < ``env`` < ``overrides`` (keys: :data:`OVERRIDE_KEYS`; ``None`` values are
    ignored, so an argparse namespace can be passed as is).

    With ``discover_upstream=False`` an unconfigured upstream stays ``None``
    instead of asking the npm configuration (commands that never contact it).
    Raises :class:`ConfigError` naming the offending key.
    """
    cwd = Path.cwd()
    if path is None and env.get("OVERLAYSTORE_CONFIG", "").strip():
        path = Path(env["OVERLAYSTORE_CONFIG"].strip())
    settings: Settings = {}
    policy = NamePolicy()
    base = cwd
    if path is not None:
        path = Path(os.path.normpath(cwd / path.expanduser()))
        base = path.parent
        file_settings, file_policy = _file_settings(_read_file(path), base)
        settings.update(file_settings)
        policy = file_policy or policy
    # An empty environment variable counts as unset (the shell convention).
    _one_credential(env, "environment", "OVERLAYSTORE_UPSTREAM_TOKEN", "OVERLAYSTORE_UPSTREAM_BASIC_AUTH")
    settings.update(_layer_settings(env, _ENV, str, cwd, skip=lambda v: not str(v).strip()))
    unknown = [k for k in overrides if k not in _OVERRIDES]
    if unknown:
        raise _unknown(unknown[0], OVERRIDE_KEYS)
    settings.update(
        _layer_settings(overrides, _OVERRIDES, lambda k: "--" + k.replace("_", "-"), cwd, skip=lambda v: v is None)
    )

    # Defaults that depend on other settings.
    storage_defaults, auth_defaults = StorageConfig(), AuthConfig()
    settings.setdefault("storage.published", Path(os.path.normpath(base / storage_defaults.published)))
    settings.setdefault("storage.cache", Path(os.path.normpath(base / storage_defaults.cache)))
    auth_dir = settings["storage.published"].parent / "auth"
    settings.setdefault("auth.htpasswd", auth_dir / auth_defaults.htpasswd.name)
    settings.setdefault("auth.tokens", auth_dir / auth_defaults.tokens.name)
    _check_separate(settings)
    if "upstream.url" not in settings and discover_upstream:
        settings["upstream.url"] = _discovered_upstream(env, cwd, settings)
    if "upstream.proxy" not in settings:
        settings["upstream.proxy"] = _environment_proxy(env, settings.get("upstream.url"))
    _warn_about_plain_credentials(settings)

    return Config(
        server=_build(ServerConfig, "server", settings),
        storage=_build(StorageConfig, "storage", settings),
        upstream=_build(UpstreamConfig, "upstream", settings),
        cache=_build(CacheConfig, "cache", settings),
        auth=_build(AuthConfig, "auth", settings),
        watch=_build(WatchConfig, "watch", settings),
        policy=policy,
    )


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_separate(settings: Settings) -> None:
    """The cache is wiped wholesale: nothing that must survive may live in it."""
    published, cache = settings["storage.published"], settings["storage.cache"]
    if _inside(published, cache) or _inside(cache, published):
        raise ConfigError("[storage]", f"published ({published}) and cache ({cache}) must be separate "
                                       "directories, neither inside the other: clearing the cache would "
                                       "delete published packages")
    for key in ("auth.htpasswd", "auth.tokens"):
        if _inside(settings[key], cache):
            raise ConfigError(f"[auth].{key.split('.')[1]}", f"{settings[key]} is inside the cache directory "
                                                            f"({cache}); clearing the cache would delete it")


def _build(cls: Any, section: str, settings: Settings) -> Any:
    """``cls`` with the settings of ``section``; the others keep their defaults."""
    names = {f.name for f in fields(cls)}
    values = {}
    for key, value in settings.items():
        head, _, name = key.partition(".")
        if head == section and name in names:
            values[name] = value
    return cls(**values)


# ------------------------------------------------- the npm-configured upstream


_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _discovered_upstream(env: Mapping[str, str], cwd: Path, settings: Settings) -> str | None:
    found = npm_registry(env, cwd=cwd)
    if found is None:
        return None
    url, source = found
    try:
        url = _http_url(url, source)
    except ConfigError as exc:
        log.warning("ignoring the npm registry setting: %s; running without an upstream", exc.problem)
        return None
    if _points_at_self(url, settings):
        log.warning(
            "the npm configuration (%s) names this server itself as the registry; running without an "
            "upstream (set [upstream].url to the registry to proxy)", source)
        return None
    log.info("upstream registry %s (from %s)", url, source)
    return url


def _points_at_self(url: str, settings: Settings) -> bool:
    """Whether ``url`` is this server: proxying to ourselves would loop forever."""
    target = urlsplit(url)
    public = settings.get("server.public_url") or ""
    if public and urlsplit(public).netloc.lower() == target.netloc.lower():
        return True
    port = target.port or (443 if target.scheme == "https" else 80)
    if port != settings.get("server.port", ServerConfig().port):
        return False
    ours = str(settings.get("server.host", ServerConfig().host)).lower()
    theirs = (target.hostname or "").lower()
    if ours in ("0.0.0.0", "::") or ours in _LOOPBACK:
        return theirs in _LOOPBACK or theirs == ours
    return theirs == ours


def _environment_proxy(env: Mapping[str, str], url: str | None) -> str | None:
    """The proxy the usual variables name for ``url`` (``https_proxy`` or
    ``http_proxy`` by its scheme, lowercase first as curl reads them, unless
    ``no_proxy`` covers its host). A loopback upstream is always reached
    directly. A malformed variable is ignored with a warning: it was set for
    other programs as much as for this one."""
    parts = urlsplit(url or "")
    host = parts.hostname or ""
    if not host or host in _LOOPBACK or host.startswith("127."):
        return None

    def variable(name: str) -> tuple[str, str] | None:
        for spelling in (name, name.upper()):
            if env.get(spelling, "").strip():
                return spelling, env[spelling].strip()
        return None

    found = variable(f"{parts.scheme}_proxy")
    if found is None:
        return None
    no_proxy = variable("no_proxy")
    if no_proxy is not None and urllib.request.proxy_bypass_environment(host, {"no": no_proxy[1]}):
        return None
    try:
        return _proxy_url(found[1], found[0], Path.cwd())
    except ConfigError as exc:
        log.warning("ignoring %s: %s; reaching the upstream directly", found[0], exc.problem)
        return None


def _warn_about_plain_credentials(settings: Settings) -> None:
    url = settings.get("upstream.url")
    if not settings.get("upstream.authorization") or not url:
        return
    parts = urlsplit(url)
    if parts.scheme == "http" and (parts.hostname or "") not in _LOOPBACK:
        log.warning("the upstream credentials go to %s over plain http: anyone on the way can read them", url)


# ------------------------------------------------------------- printing


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(config: Config) -> str:
    """The effective configuration as a TOML file that :func:`load_config` reads
    back to an equal :class:`Config` (``"none"`` spells an unset optional)."""
    s, u, c, a, w = config.server, config.upstream, config.cache, config.auth, config.watch

    def opt(value: object) -> object:
        return "none" if value is None else value

    sections: list[tuple[str | None, list[tuple[str, object]]]] = [
        (None, [("listen", format_listen(s.host, s.port)), ("public_url", s.public_url), ("log_level", s.log_level),
                ("log_format", s.log_format),
                ("access_log", s.access_log), ("max_body", s.max_body_bytes), ("workers", s.workers),
                ("keepalive_timeout", s.keepalive_timeout_s), ("body_timeout", s.body_timeout_s)]),
        ("storage", [("published", config.storage.published), ("cache", config.storage.cache)]),
        ("upstream", [("url", opt(u.url)), ("max_age", u.max_age_s), ("timeout", u.timeout_s),
                      ("connect_timeout", u.connect_timeout_s), ("retries", u.retries),
                      ("breaker_failures", u.breaker_failures), ("breaker_reset", u.breaker_reset_s),
                      ("offline", u.offline)]),
        ("cache", [("max_bytes", opt(c.max_bytes)), ("max_age", opt(c.max_age_s)),
                   ("gc_interval", c.gc_interval_s), ("view_max_bytes", c.view_max_bytes),
                   ("view_tarball_max_bytes", c.view_tarball_max_bytes), ("parsed_max_bytes", c.parsed_max_bytes)]),
        ("auth", [("htpasswd", a.htpasswd), ("tokens", a.tokens), ("registration", a.registration),
                  ("admins", a.admins), ("credential_cache", a.credential_cache_s),
                  ("login_attempts_per_minute", a.login_attempts_per_minute), ("bcrypt_rounds", a.bcrypt_rounds)]),
        ("watch", [("enabled", w.enabled), ("polling", w.polling)]),
    ]
    lines = ["# overlaystore: effective configuration"]
    for title, items in sections:
        if title is not None:
            lines += ["", f"[{title}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in items]
        if title == "upstream":
            if u.proxy is None or urlsplit(u.proxy).password is None:
                lines.append(f"proxy = {_toml_value(opt(u.proxy))}")
            else:
                lines.append("# a proxy with credentials is set; it is not printed")
            if u.authorization is not None:
                lines.append("# credentials are set ([upstream].token or basic_auth, or the environment); "
                             "they are not printed")
    for rule in config.policy.rules:
        lines += ["", "[[packages]]", f"pattern = {_toml_value(rule.pattern)}", f"access = {_toml_value(rule.access)}",
                  f"publish = {_toml_value(rule.publish)}", f"proxy = {_toml_value(rule.proxy.value)}"]
    return "\n".join(lines) + "\n"


__all__ = ["OVERRIDE_KEYS", "ConfigError", "config_to_toml", "load_config", "parse_listen"]
