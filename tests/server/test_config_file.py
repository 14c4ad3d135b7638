"""Config loading: defaults < TOML < environment < overrides, validation
messages that name the key, path resolution, the npm-configured upstream,
and the TOML printer round trip."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from overlaystore.errors import InvalidInput
from overlaystore.policy import ALL, ANONYMOUS, AUTHENTICATED, NamePolicy, PackageRule, ProxyMode
from server.config import Config
from server.config_file import ConfigError, config_to_toml, load_config

MIRROR = "http://127.0.0.1:5999/mirror"


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(path: Path | None = None, env: dict[str, str] | None = None, **overrides: object) -> Config:
    return load_config(path, env=env or {}, overrides=overrides, discover_upstream=False)


def error_of(path: Path | None = None, env: dict[str, str] | None = None, **overrides: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path, env, **overrides)
    return info.value


# ------------------------------------------------------------------ defaults


def test_defaults_without_a_file_live_under_the_current_directory(cwd: Path) -> None:
    config = load()
    assert config.server.host == "127.0.0.1" and config.server.port == 4873
    assert config.server.public_url == ""
    assert config.storage.published == cwd / "storage" / "published"
    assert config.storage.cache == cwd / "storage" / "cache"
    # Auth data sits beside the published store: it is backed up with it.
    assert config.auth.htpasswd == cwd / "storage" / "auth" / "htpasswd"
    assert config.auth.tokens == cwd / "storage" / "auth" / "tokens.json"
    assert config.upstream.url is None
    assert config.policy == NamePolicy()


def test_config_error_is_invalid_input() -> None:
    err = ConfigError("[upstream].timeout", "expected a number, got 'abc'")
    assert isinstance(err, InvalidInput)
    assert str(err) == "config error: [upstream].timeout: expected a number, got 'abc'"
    assert err.key == "[upstream].timeout"


# ------------------------------------------------------------------ the file

FULL = """
listen = "[::1]:8080"
public_url = "https://npm.example.com/registry/"
log_level = "DEBUG"
access_log = false
max_body = "50MiB"
workers = 4

[storage]
published = "data/published"
cache = "/var/cache/ovs"

[upstream]
url = "http://127.0.0.1:5999/"
max_age = "5m"
timeout = 12.5
connect_timeout = "250ms"
retries = 0
breaker_failures = 3
breaker_reset = "1h"
offline = true

[cache]
max_bytes = "2GiB"
max_age = "7d"
gc_interval = 60
view_max_bytes = "64M"

[auth]
htpasswd = "secrets/htpasswd"
tokens = "/etc/ovs/tokens.json"
registration = false
admins = ["alice", "bob"]
credential_cache = "30s"
login_attempts_per_minute = 5
bcrypt_rounds = 10

[watch]
enabled = false
polling = true

[[packages]]
pattern = "@acme/*"
access = "$authenticated"
publish = ["alice"]
proxy = "never"

[[packages]]
pattern = "lodash"
proxy = "overlay"

[[packages]]
pattern = "**"
access = ["$all"]
"""


def test_every_key_of_the_file(cwd: Path, tmp_path: Path) -> None:
    home = tmp_path / "etc" / "ovs"
    config = load(write(home / "overlaystore.toml", FULL))
    s = config.server
    assert (s.host, s.port, s.public_url, s.log_level) == ("::1", 8080, "https://npm.example.com/registry", "debug")
    assert (s.access_log, s.max_body_bytes, s.workers) == (False, 50 * 2**20, 4)
    # Relative paths in the file resolve against the file's directory, not the cwd.
    assert config.storage.published == home / "data" / "published"
    assert config.storage.cache == Path("/var/cache/ovs")
    u = config.upstream
    assert u.url == "http://127.0.0.1:5999"
    assert (u.max_age_s, u.timeout_s, u.connect_timeout_s) == (300.0, 12.5, 0.25)
    assert (u.retries, u.breaker_failures, u.breaker_reset_s, u.offline) == (0, 3, 3600.0, True)
    c = config.cache
    assert (c.max_bytes, c.max_age_s, c.gc_interval_s, c.view_max_bytes) == (2 * 2**30, 7 * 86400.0, 60.0, 64 * 2**20)
    a = config.auth
    assert a.htpasswd == home / "secrets" / "htpasswd"
    assert a.tokens == Path("/etc/ovs/tokens.json")
    assert (a.registration, a.admins, a.credential_cache_s) == (False, ("alice", "bob"), 30.0)
    assert (a.login_attempts_per_minute, a.bcrypt_rounds) == (5, 10)
    assert (config.watch.enabled, config.watch.polling) == (False, True)
    assert config.policy.rules == (
        PackageRule("@acme/*", access=(AUTHENTICATED,), publish=("alice",), proxy=ProxyMode.NEVER),
        PackageRule("lodash", proxy=ProxyMode.OVERLAY),
        PackageRule("**", access=(ALL,)),
    )


def test_default_storage_lives_beside_the_config_file(cwd: Path, tmp_path: Path) -> None:
    config = load(write(tmp_path / "inst" / "ovs.toml", "workers = 2\n"))
    assert config.storage.published == tmp_path / "inst" / "storage" / "published"
    assert config.auth.htpasswd == tmp_path / "inst" / "storage" / "auth" / "htpasswd"


def test_auth_files_follow_the_published_store(cwd: Path, tmp_path: Path) -> None:
    config = load(published_storage=str(tmp_path / "data" / "pub"))
    assert config.auth.htpasswd == tmp_path / "data" / "auth" / "htpasswd"
    assert config.auth.tokens == tmp_path / "data" / "auth" / "tokens.json"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1024, 1024), ("1024", 1024), ("512KiB", 512 * 1024), ("10M", 10 * 2**20), ("10MiB", 10 * 2**20),
     ("10MB", 10_000_000), ("1.5GiB", 3 * 2**29), ("2k", 2048), ("7b", 7), ("0", 0)],
)
def test_sizes(cwd: Path, raw: object, expected: int) -> None:
    value = f'"{raw}"' if isinstance(raw, str) else raw
    assert load(write(cwd / "c.toml", f"max_body = {value}\n")).server.max_body_bytes == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("30", 30.0), ("2.5", 2.5), ('"250ms"', 0.25), ('"45s"', 45.0), ('"5m"', 300.0), ('"2h"', 7200.0),
     ('"1d"', 86400.0)],
)
def test_durations(cwd: Path, raw: str, expected: float) -> None:
    assert load(write(cwd / "c.toml", f"[upstream]\ntimeout = {raw}\n")).upstream.timeout_s == expected


def test_none_spells_unbounded(cwd: Path) -> None:
    config = load(write(cwd / "c.toml", '[cache]\nmax_bytes = "none"\nmax_age = "none"\n'))
    assert config.cache.max_bytes is None and config.cache.max_age_s is None


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [("0.0.0.0:80", "0.0.0.0", 80), ("localhost:4874", "localhost", 4874), ("[::]:0", "::", 0), ("9000", "127.0.0.1", 9000)],
)
def test_listen_forms(cwd: Path, listen: str, host: str, port: int) -> None:
    config = load(listen=listen)
    assert (config.server.host, config.server.port) == (host, port)


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("toml", "key", "fragment"),
    [
        ('[upstream]\ntimeout = "abc"\n', "[upstream].timeout", "expected a number"),
        ("[upstream]\ntimeout = true\n", "[upstream].timeout", "expected a number, got true"),
        ("[upstream]\ntimeout = 0\n", "[upstream].timeout", "positive"),
        ("[upstream]\nretries = -1\n", "[upstream].retries", "at least 0"),
        ("[upstream]\ntimout = 3\n", "[upstream].timout", "did you mean 'timeout'"),
        ('[upstream]\nurl = "ftp://x"\n', "[upstream].url", "http://"),
        ("lissen = 3\n", "lissen", "did you mean 'listen'"),
        ('listen = "nope"\n', "listen", "HOST:PORT"),
        ('listen = "1.2.3.4:70000"\n', "listen", "out of range"),
        ('access_log = "yes"\n', "access_log", "expected true or false"),
        ('max_body = "10 parsecs"\n', "max_body", "size"),
        ("workers = 0\n", "workers", "at least 1"),
        ('log_level = "loud"\n', "log_level", "expected one of"),
        ('public_url = "npm.example.com"\n', "public_url", "http://"),
        ('storage = "x"\n', "storage", "expected a table"),
        ("[auth]\nadmins = \"alice\"\n", "[auth].admins", "list of user names"),
        ("[auth]\nbcrypt_rounds = 40\n", "[auth].bcrypt_rounds", "between 4 and 31"),
        ('[[packages]]\npattern = "a"\nproxy = "sometimes"\n', "[[packages]][0] ('a').proxy", "'overlay'"),
        ('[[packages]]\naccess = "$all"\n', "[[packages]][0].pattern", "needs a pattern"),
        ('[[packages]]\npattern = "a"\naccess = "$admins"\n', "[[packages]][0] ('a').access", "unknown principal"),
        ('[[packages]]\npattern = "a"\nowner = "x"\n', "[[packages]][0] ('a').owner", "unknown key"),
        ('[packages]\npattern = "a"\n', "packages", "array of tables"),
    ],
)
def test_bad_values_name_their_key(cwd: Path, toml: str, key: str, fragment: str) -> None:
    err = error_of(write(cwd / "c.toml", toml))
    assert err.key == key
    assert fragment in str(err)
    assert str(err).startswith(f"config error: {key}: ")


def test_the_brief_example_message(cwd: Path) -> None:
    err = error_of(write(cwd / "c.toml", '[upstream]\ntimeout = "abc"\n'))
    assert str(err).startswith("config error: [upstream].timeout: expected a number")
    assert str(err).endswith("got 'abc'")


def test_missing_file_and_bad_toml(cwd: Path) -> None:
    assert "not found" in str(error_of(cwd / "absent.toml"))
    err = error_of(write(cwd / "bad.toml", "listen = \n"))
    assert err.key == str(cwd / "bad.toml") and "not valid TOML" in str(err)


def test_environment_and_override_errors_use_their_own_names(cwd: Path) -> None:
    assert error_of(env={"OVERLAYSTORE_LISTEN": "x"}).key == "OVERLAYSTORE_LISTEN"
    assert error_of(env={"OVERLAYSTORE_OFFLINE": "maybe"}).key == "OVERLAYSTORE_OFFLINE"
    assert error_of(listen="x").key == "--listen"
    assert error_of(public_url="ftp://x").key == "--public-url"
    assert "unknown key" in str(error_of(bogus=1))


def test_overlapping_stores_are_refused(cwd: Path, tmp_path: Path) -> None:
    # The cache is wiped wholesale: the published store (or the auth files) inside it would go too.
    err = error_of(published_storage=str(tmp_path / "s" / "pub"), cache_storage=str(tmp_path / "s"))
    assert err.key == "[storage]"
    assert error_of(published_storage=str(tmp_path / "a"), cache_storage=str(tmp_path / "a")).key == "[storage]"
    err = error_of(published_storage=str(tmp_path / "s" / "pub"), cache_storage=str(tmp_path / "s" / "auth"))
    assert err.key == "[auth].htpasswd"


# ------------------------------------------------------------------ precedence


def test_file_then_environment_then_overrides(cwd: Path, tmp_path: Path) -> None:
    file = write(cwd / "c.toml", 'listen = "1.1.1.1:1"\nlog_level = "error"\n[upstream]\nurl = "http://127.0.0.1:1"\n')
    env = {"OVERLAYSTORE_LISTEN": "2.2.2.2:2", "OVERLAYSTORE_UPSTREAM": "http://127.0.0.1:2",
           "OVERLAYSTORE_OFFLINE": "yes", "OVERLAYSTORE_PUBLISHED_STORAGE": "rel/pub",
           "OVERLAYSTORE_LOG_LEVEL": ""}  # empty: unset
    config = load(file, env)
    assert (config.server.host, config.server.port) == ("2.2.2.2", 2)
    assert config.upstream.url == "http://127.0.0.1:2" and config.upstream.offline is True
    assert config.server.log_level == "error"
    # Relative paths from the environment resolve against the current directory.
    assert config.storage.published == cwd / "rel" / "pub"
    config = load(file, env, listen="3.3.3.3:3", upstream="none", offline=None, log_level="warning",
                  cache_storage=tmp_path / "c")
    assert (config.server.host, config.upstream.url, config.upstream.offline) == ("3.3.3.3", None, True)
    assert config.server.log_level == "warning" and config.storage.cache == tmp_path / "c"


def test_config_file_from_the_environment(cwd: Path) -> None:
    write(cwd / "from-env.toml", "workers = 3\n")
    assert load(env={"OVERLAYSTORE_CONFIG": "from-env.toml"}).server.workers == 3
    # An explicit path wins over the variable.
    write(cwd / "explicit.toml", "workers = 5\n")
    assert load(cwd / "explicit.toml", {"OVERLAYSTORE_CONFIG": "from-env.toml"}).server.workers == 5


@pytest.mark.parametrize("spelling", ['upstream = "none"', 'upstream = ""', '[upstream]\nurl = ""', '[upstream]\nurl = "NONE"'])
def test_upstream_can_be_disabled_explicitly(cwd: Path, spelling: str) -> None:
    file = write(cwd / "c.toml", spelling + "\n")
    env = {"npm_config_registry": MIRROR}
    assert load_config(file, env=env, overrides={}).upstream.url is None


def test_upstream_shorthand(cwd: Path) -> None:
    assert load(write(cwd / "c.toml", f'upstream = "{MIRROR}/"\n')).upstream.url == MIRROR


# ------------------------------------------------- the npm-configured upstream


def discover(env: dict[str, str], **overrides: object) -> str | None:
    return load_config(None, env=env, overrides=overrides).upstream.url


def test_upstream_from_npm_environment_variables(cwd: Path) -> None:
    assert discover({"npm_config_registry": MIRROR + "/"}) == MIRROR
    assert discover({"NPM_CONFIG_REGISTRY": "http://127.0.0.1:6000"}) == "http://127.0.0.1:6000"


def test_upstream_from_npmrc_files_in_npm_order(cwd: Path, tmp_path: Path) -> None:
    home, prefix = tmp_path / "home", tmp_path / "prefix"
    env = {"HOME": str(home), "PREFIX": str(prefix), "MIRROR_HOST": "127.0.0.1"}
    write(prefix / "etc" / "npmrc", "registry=http://127.0.0.1:3/\n")
    assert discover(env) == "http://127.0.0.1:3"
    write(home / ".npmrc", "; user config\n//127.0.0.1:2/:_authToken=abc\nregistry = \"http://${MIRROR_HOST}:2/\"\n")
    assert discover(env) == "http://127.0.0.1:2"
    write(cwd / ".npmrc", "registry=http://127.0.0.1:1/\n")
    assert discover(env) == "http://127.0.0.1:1"


def test_upstream_from_npm_itself(cwd: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    npm = write(bin_dir / "npm", '#!/bin/sh\n[ "$*" = "config get registry" ] && echo http://127.0.0.1:4/\n')
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    assert discover({"PATH": str(bin_dir)}) == "http://127.0.0.1:4"


def test_no_npm_means_no_upstream_and_a_warning(cwd: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="overlaystore.config"):
        assert discover({"PATH": str(tmp_path / "empty"), "HOME": str(tmp_path)}) is None
    assert "npm is not installed" in caplog.text


def test_npm_naming_this_server_is_not_used(cwd: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A developer whose npm points at this very registry must not get a proxy loop.
    with caplog.at_level(logging.WARNING, logger="overlaystore.config"):
        assert discover({"npm_config_registry": "http://localhost:4873/"}) is None
        assert discover({"npm_config_registry": "http://127.0.0.1:9000/"}, listen="0.0.0.0:9000") is None
    assert "this server itself" in caplog.text
    assert discover({"npm_config_registry": "http://127.0.0.1:9001/"}, listen="0.0.0.0:9000") == "http://127.0.0.1:9001"


def test_configured_upstream_skips_discovery(cwd: Path) -> None:
    env = {"npm_config_registry": MIRROR, "OVERLAYSTORE_UPSTREAM": "http://127.0.0.1:7"}
    assert discover(env) == "http://127.0.0.1:7"
    assert load(env={"npm_config_registry": MIRROR}).upstream.url is None  # discovery off


# ------------------------------------------------------------- upstream credentials


def test_upstream_token_and_basic_auth_become_one_authorization(cwd: Path, tmp_path: Path) -> None:
    token = load(write(tmp_path / "t.toml", '[upstream]\nurl = "https://mirror.test"\ntoken = "abc.def-123"\n'))
    assert token.upstream.authorization == "Bearer abc.def-123"
    basic = load(write(tmp_path / "b.toml", '[upstream]\nurl = "https://mirror.test"\nbasic_auth = "ci:p@ss:w0rd"\n'))
    assert basic.upstream.authorization == "Basic Y2k6cEBzczp3MHJk"  # base64("ci:p@ss:w0rd")
    # The environment overrides the file, as everywhere else.
    env = load(write(tmp_path / "t2.toml", '[upstream]\ntoken = "from-file"\n'), {"OVERLAYSTORE_UPSTREAM_TOKEN": "from-env"})
    assert env.upstream.authorization == "Bearer from-env"
    assert load(env={"OVERLAYSTORE_UPSTREAM_BASIC_AUTH": "u:p"}).upstream.authorization == "Basic dTpw"
    assert load().upstream.authorization is None


@pytest.mark.parametrize(("text", "env", "key", "fragment"), [
    ('[upstream]\ntoken = "a"\nbasic_auth = "u:p"\n', {}, "[upstream]", "not both"),
    ("", {"OVERLAYSTORE_UPSTREAM_TOKEN": "a", "OVERLAYSTORE_UPSTREAM_BASIC_AUTH": "u:p"}, "environment", "not both"),
    ('[upstream]\ntoken = "has space"\n', {}, "[upstream].token", "without spaces"),
    ('[upstream]\ntoken = "line\\nbreak"\n', {}, "[upstream].token", "without spaces"),
    ('[upstream]\nbasic_auth = "no-colon"\n', {}, "[upstream].basic_auth", "USER:PASSWORD"),
    ('[upstream]\nbasic_auth = ":nouser"\n', {}, "[upstream].basic_auth", "USER:PASSWORD"),
    ("", {"OVERLAYSTORE_UPSTREAM_TOKEN": "bad token"}, "OVERLAYSTORE_UPSTREAM_TOKEN", "without spaces"),
])
def test_bad_upstream_credentials_are_config_errors(cwd: Path, tmp_path: Path, text: str, env: dict[str, str],
                                                     key: str, fragment: str) -> None:
    error = error_of(write(tmp_path / "c.toml", text), env)
    assert error.key == key and fragment in error.problem


def test_credentials_in_a_url_are_refused_without_echoing_them(cwd: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    error = error_of(env={"OVERLAYSTORE_UPSTREAM": "https://ci:s3cret@mirror.test/npm"})
    assert error.key == "OVERLAYSTORE_UPSTREAM" and "[upstream].token" in error.problem
    assert "s3cret" not in str(error)
    assert "s3cret" not in str(error_of(public_url="https://u:s3cret@npm.example"))
    # An npm configuration naming such a registry is ignored, with a warning that does not show it.
    with caplog.at_level(logging.WARNING, logger="overlaystore.config"):
        assert discover({"npm_config_registry": "https://ci:s3cret@mirror.test/"}) is None
    assert "must not contain credentials" in caplog.text and "s3cret" not in caplog.text


def test_upstream_credentials_are_never_printed_or_shown(cwd: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="overlaystore.config"):
        config = load(write(tmp_path / "c.toml", '[upstream]\nurl = "http://mirror.test"\ntoken = "s3cret-tok"\n'))
    assert "plain http" in caplog.text and "s3cret" not in caplog.text
    assert "s3cret" not in repr(config)
    printed = config_to_toml(config)
    assert "s3cret" not in printed and "credentials are set" in printed
    assert load(write(tmp_path / "again.toml", printed)).upstream.authorization is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="overlaystore.config"):
        load(write(tmp_path / "https.toml", '[upstream]\nurl = "https://mirror.test"\ntoken = "t"\n'))
        load(write(tmp_path / "local.toml", '[upstream]\nurl = "http://127.0.0.1:9"\ntoken = "t"\n'))
    assert "plain http" not in caplog.text


# ------------------------------------------------------------------ upstream proxy


def proxy_for(url: str, env: dict[str, str], text: str = "") -> str | None:
    path = write(Path.cwd() / "proxy.toml", f'[upstream]\nurl = "{url}"\n{text}')
    return load(path, env).upstream.proxy


@pytest.mark.parametrize(("url", "env", "expected"), [
    ("https://mirror.test", {"https_proxy": "http://p:3128"}, "http://p:3128"),
    ("https://mirror.test", {"HTTPS_PROXY": "http://P:3128/"}, "http://P:3128"),
    ("https://mirror.test", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "http://lower:1"),
    ("http://mirror.test", {"https_proxy": "http://p:3128"}, None),  # the scheme picks the variable
    ("http://mirror.test", {"http_proxy": "http://p:3128"}, "http://p:3128"),
    ("https://mirror.test", {"https_proxy": "http://p:3128", "no_proxy": ".test"}, None),
    ("https://mirror.test", {"https_proxy": "http://p:3128", "NO_PROXY": "other.example,mirror.test"}, None),
    ("https://mirror.test", {"https_proxy": "http://p:3128", "no_proxy": "other.example"}, "http://p:3128"),
    ("http://127.0.0.1:5999", {"http_proxy": "http://p:3128"}, None),  # loopback: always direct
    ("http://localhost:5999", {"http_proxy": "http://p:3128"}, None),
    ("https://mirror.test", {"https_proxy": "not a url"}, None),  # ignored, with a warning
    ("https://mirror.test", {}, None),
])
def test_the_proxy_comes_from_the_usual_variables(cwd: Path, url: str, env: dict[str, str],
                                                   expected: str | None) -> None:
    assert proxy_for(url, env) == expected


def test_an_explicit_proxy_wins_and_none_means_direct(cwd: Path) -> None:
    env = {"https_proxy": "http://from-env:1"}
    assert proxy_for("https://mirror.test", env, 'proxy = "http://from-file:2"\n') == "http://from-file:2"
    assert proxy_for("https://mirror.test", env, 'proxy = "none"\n') is None
    assert proxy_for("https://mirror.test", {**env, "OVERLAYSTORE_UPSTREAM_PROXY": "http://ovs:3"}) == "http://ovs:3"
    error = error_of(write(cwd / "bad.toml", '[upstream]\nproxy = "ftp://p:21"\n'))
    assert error.key == "[upstream].proxy" and "proxy URL" in error.problem


def test_a_proxy_with_credentials_is_not_printed(cwd: Path) -> None:
    config = load(write(cwd / "p.toml", '[upstream]\nurl = "https://m.test"\nproxy = "http://u:s3cret@p:3128"\n'))
    assert config.upstream.proxy == "http://u:s3cret@p:3128"
    assert "s3cret" not in repr(config) and "s3cret" not in config_to_toml(config)
    plain = load(write(cwd / "q.toml", '[upstream]\nurl = "https://m.test"\nproxy = "http://p:3128"\n'))
    assert load(write(cwd / "again.toml", config_to_toml(plain))) == plain


# ------------------------------------------------------------------ printing


def test_printed_config_reads_back_equal(cwd: Path, tmp_path: Path) -> None:
    for config in (load(), load(write(tmp_path / "etc" / "ovs.toml", FULL))):
        text = config_to_toml(config)
        again = load(write(tmp_path / "printed.toml", text))
        assert again == config, text


def test_printed_config_escapes_strings(cwd: Path, tmp_path: Path) -> None:
    weird = tmp_path / 'we"ird\\dir ü'
    config = load(published_storage=str(weird / "pub"))
    assert load(write(tmp_path / "p.toml", config_to_toml(config))).storage.published == weird / "pub"


def test_printed_default_policy_keeps_its_principals(cwd: Path) -> None:
    text = config_to_toml(load())
    assert '[[packages]]\npattern = "**"' in text
    assert f'access = ["{ALL}"]' in text and f'publish = ["{AUTHENTICATED}"]' in text
    assert ANONYMOUS not in text
