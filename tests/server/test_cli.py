"""The ``overlaystore`` command line, in-process (``main([...])``) and as
``python -m server`` subprocesses."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import server.app
from overlaystore.store_marker import MARKER, claim
from server.__main__ import main
from server.auth import Authenticator
from server.config import Config
from server.config_file import load_config
from tests.fakes.upstream import FakeUpstream

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("hermetic")


def run_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAYSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "server", *args], capture_output=True, text=True, input=stdin,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=60, check=False,
    )


def users(tmp_path: Path) -> Authenticator:
    return Authenticator(load_config(None, env={}, overrides={}, discover_upstream=False).auth)


# ------------------------------------------------------------------ help


def test_help_in_a_subprocess() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for command in ("serve", "user", "config", "cache"):
        assert command in done.stdout
    done = run_cli("serve", "--help")
    assert done.returncode == 0
    for flag in ("--config", "--listen", "--published-storage", "--cache-storage", "--upstream",
                 "--public-url", "--offline", "--log-level"):
        assert flag in done.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["user"])
    assert info.value.code == 2


# ------------------------------------------------------------------ serve


def test_serve_passes_the_effective_config_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Config] = []
    monkeypatch.setattr(server.app, "run", seen.append)
    (tmp_path / "ovs.toml").write_text('listen = "127.0.0.1:1"\n[upstream]\nurl = "http://127.0.0.1:2"\n')
    monkeypatch.setenv("OVERLAYSTORE_PUBLIC_URL", "http://127.0.0.1:3/")
    status = main(["serve", "--config", "ovs.toml", "--listen", "0.0.0.0:5000", "--published-storage", "pub",
                   "--cache-storage", "/tmp/ovs-cache", "--offline", "--log-level", "DEBUG"])
    assert status == 0
    (config,) = seen
    assert (config.server.host, config.server.port) == ("0.0.0.0", 5000)
    assert config.server.public_url == "http://127.0.0.1:3" and config.server.log_level == "debug"
    assert config.storage.published == tmp_path / "pub" and config.storage.cache == Path("/tmp/ovs-cache")
    assert config.upstream.url == "http://127.0.0.1:2" and config.upstream.offline is True


def test_serve_with_a_bad_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "nowhere"]) == 1
    assert "config error: --listen" in capsys.readouterr().err


# ------------------------------------------------------------------ config check


def test_config_check_ok_and_print(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ovs.toml").write_text('workers = 3\n[cache]\nmax_bytes = "1GiB"\n')
    assert main(["config", "check", "--config", "ovs.toml", "--upstream", "none"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "upstream   none" in out
    assert main(["config", "check", "--config", "ovs.toml", "--upstream", "none", "--print"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.toml").write_text(printed)
    again = load_config(tmp_path / "printed.toml", env={}, overrides={})
    assert again == load_config(tmp_path / "ovs.toml", env={}, overrides={"upstream": "none"})
    assert again.server.workers == 3 and again.cache.max_bytes == 2**30


def test_config_check_says_credentials_are_set_without_showing_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERLAYSTORE_UPSTREAM_TOKEN", "s3cret-tok")
    assert main(["config", "check", "--upstream", "https://mirror.test", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "upstream   https://mirror.test (offline, with credentials)" in out and "s3cret" not in out


async def test_config_check_probe_says_what_the_upstream_answers(
    fake_upstream: FakeUpstream, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def check(*env: tuple[str, str]) -> tuple[int, str]:
        for key, value in env:
            monkeypatch.setenv(key, value)
        status = main(["config", "check", "--upstream", fake_upstream.url, "--probe"])
        return status, capsys.readouterr().out

    # main() runs its own event loop: in a thread, as the fake upstream needs this one.
    status, out = await asyncio.to_thread(check)
    assert status == 0 and f"probe      GET {fake_upstream.url}/-/ping: ok" in out
    fake_upstream.required_authorization = "Bearer right"
    status, out = await asyncio.to_thread(check, ("OVERLAYSTORE_UPSTREAM_TOKEN", "wrong"))
    assert status == 1 and "/-/ping: unauthorized" in out
    status, out = await asyncio.to_thread(check, ("OVERLAYSTORE_UPSTREAM_TOKEN", "right"))
    assert status == 0 and "/-/ping: ok" in out
    await fake_upstream.stop()
    status, out = await asyncio.to_thread(check)
    assert status == 1 and "/-/ping: down" in out


def test_config_check_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ovs.toml").write_text('[upstream]\ntimeout = "abc"\n')
    assert main(["config", "check", "--config", "ovs.toml"]) == 1
    assert "config error: [upstream].timeout: expected a number" in capsys.readouterr().err


def test_config_check_in_a_subprocess(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[auth]\nregistraton = false\n")
    done = run_cli("config", "check", "--config", str(tmp_path / "bad.toml"))
    assert done.returncode == 1
    assert "config error: [auth].registraton: unknown key (did you mean 'registration'?)" in done.stderr
    done = run_cli("config", "check", "--print", env={"OVERLAYSTORE_UPSTREAM": "none",
                                                      "OVERLAYSTORE_LISTEN": "127.0.0.1:4999"})
    assert done.returncode == 0, done.stderr
    assert 'listen = "127.0.0.1:4999"' in done.stdout and 'url = "none"' in done.stdout


# ------------------------------------------------------------------ users


FAST_BCRYPT = "[auth]\nbcrypt_rounds = 4\n"


def test_user_add_passwd_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ovs.toml").write_text(FAST_BCRYPT)
    monkeypatch.setenv("OVERLAYSTORE_CONFIG", str(tmp_path / "ovs.toml"))
    monkeypatch.setenv("OVERLAYSTORE_PUBLISHED_STORAGE", str(tmp_path / "data" / "pub"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("first password\n"))
    assert main(["user", "add", "alice", "--password-stdin", "--email", "a@example.com"]) == 0
    assert "user alice added" in capsys.readouterr().out
    htpasswd = tmp_path / "data" / "auth" / "htpasswd"  # beside the published store
    assert htpasswd.read_text().startswith("alice:$2b$04$")

    monkeypatch.setattr(sys, "stdin", io.StringIO("again\n"))
    assert main(["user", "add", "alice", "--password-stdin"]) == 1
    assert "already exists" in capsys.readouterr().err

    answers = iter(["second password", "second password"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["user", "passwd", "alice"]) == 0
    assert main(["user", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "alice"

    answers = iter(["one", "two"])
    assert main(["user", "add", "bob"]) == 1
    assert "do not match" in capsys.readouterr().err
    assert main(["user", "passwd", "nobody"]) == 1
    assert "no user named nobody" in capsys.readouterr().err

    assert main(["user", "remove", "alice"]) == 0
    assert main(["user", "remove", "alice"]) == 1
    assert "alice" not in htpasswd.read_text()


def test_concurrent_user_adds_from_several_processes(tmp_path: Path) -> None:
    # The htpasswd file is shared by processes: the flock + re-read loses no user.
    (tmp_path / "ovs.toml").write_text(FAST_BCRYPT)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "server", "user", "add", f"user{i}", "--password-stdin", "--config", "ovs.toml"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("OVERLAYSTORE_")},
                 "PYTHONPATH": str(ROOT)},
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate("pw\n", timeout=60)
        assert proc.returncode == 0, err
    assert users(tmp_path).user_names() == [f"user{i}" for i in range(4)]


# ------------------------------------------------------------------ cache clear


def test_cache_clear_empties_the_cache_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published, cache = tmp_path / "storage" / "published", tmp_path / "storage" / "cache"
    (published / "mine").mkdir(parents=True)
    (published / "mine" / "package-meta.json").write_text("{}")
    for name in ("lodash", "@types/node"):
        (cache / name).mkdir(parents=True)
        (cache / name / "packument.json").write_text("x" * 1000)
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "cleared the proxy cache" in out and "2 files" in out
    assert [p.name for p in cache.rglob("*") if p.is_file()] == [MARKER]  # which store this is stays
    assert (published / "mine" / "package-meta.json").read_text() == "{}"


def test_cache_clear_refuses_a_published_store_given_as_the_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    published = tmp_path / "old-storage" / "published"
    (published / "mine" / "versions").mkdir(parents=True)
    (published / "mine" / "versions" / "1.0.0.json").write_text("{}")
    # A configuration pointing the cache at an older published store.
    assert main(["cache", "clear", "--cache-storage", str(published)]) == 1
    assert "holds the published store, not the cache store" in capsys.readouterr().err
    assert (published / "mine" / "versions" / "1.0.0.json").read_text() == "{}"
    assert not (published / MARKER).exists()  # nothing written either


def test_serve_refuses_swapped_stores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claim(tmp_path / "was-cache", "cache")
    argv = ["serve", "--published-storage", str(tmp_path / "was-cache"), "--cache-storage", str(tmp_path / "new"),
            "--upstream", "none", "--listen", "127.0.0.1:0"]
    assert main(argv) == 1
    assert "holds the cache store, not the published store" in capsys.readouterr().err


def test_cache_clear_of_a_missing_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "clear", "--cache-storage", str(tmp_path / "nothing")]) == 0
    assert "already empty" in capsys.readouterr().out
    assert not (tmp_path / "nothing").exists()
