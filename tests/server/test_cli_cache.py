"""``overlaystore cache stats | gc | clear``: summaries, dry runs, limits
from the config or the flags, progress bars, and the published store never
touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.__main__ import main
from tests.server.ops_helpers import cache_files, snapshot

ROOT = Path(__file__).resolve().parents[2]
HOUR = 3600


pytestmark = pytest.mark.usefixtures("hermetic")


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """storage/ with a published package and a cache of 5 packages: for
    package i, a 1000-byte packument.json (i hours old) and a 10000-byte
    tarball (i days old)."""
    storage = tmp_path / "storage"
    pub = storage / "published" / "mine"
    (pub / "versions").mkdir(parents=True)
    (pub / "versions" / "1.0.0.json").write_text('{"time": "2020-01-01T00:00:00.000Z", "manifest": {}}')
    (pub / "mine-1.0.0.tgz").write_bytes(b"published tarball")
    (pub / "package-meta.json").write_text("{}")
    now = time.time()
    for i in range(5):
        name = f"@scope/p{i}" if i % 2 else f"p{i}"
        d = storage / "cache" / name
        d.mkdir(parents=True)
        (d / "packument.json").write_bytes(b"p" * 1000)
        (d / f"p{i}-1.0.0.tgz").write_bytes(b"t" * 10_000)
        os.utime(d / "packument.json", (now - i * HOUR, now - i * HOUR))
        os.utime(d / f"p{i}-1.0.0.tgz", (now - i * 24 * HOUR, now - i * 24 * HOUR))
    return storage


def test_stats(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "stats"]) == 0
    out = capsys.readouterr().out
    assert "entries     10 in 5 packages" in out
    assert "bytes       53.7 KiB" in out
    assert "packuments  5 entries, 4.9 KiB" in out
    assert "tarballs    5 entries, 48.8 KiB" in out
    assert "(4 d ago)" in out  # the oldest use
    assert "gc limits   max_bytes none, tarball max_age none" in out

    assert main(["cache", "stats", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert (body["entries"], body["bytes"], body["packages"]) == (10, 55_000, 5)
    assert body["kinds"] == {"packument": {"entries": 5, "bytes": 5000}, "tarball": {"entries": 5, "bytes": 50_000}}


def test_stats_shows_the_configured_limits(storage: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ovs.toml").write_text('[cache]\nmax_bytes = "100KiB"\nmax_age = "7d"\n')
    assert main(["cache", "stats", "--config", "ovs.toml"]) == 0
    out = capsys.readouterr().out
    assert "(53.7% of the cap)" in out
    assert "max_bytes 100.0 KiB, tarball max_age 7 d" in out


def test_gc_dry_run_deletes_nothing(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(storage)
    assert main(["cache", "gc", "--dry-run", "--max-bytes", "30000"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing deleted" in out
    assert "before           10 entries, 53.7 KiB" in out
    # The three oldest tarballs (4, 3, 2 days) must go to get under 30000 bytes.
    assert "after (would be) 7 entries, 24.4 KiB" in out
    assert "would evict      3 entries, 29.3 KiB" in out
    assert "took" in out
    assert snapshot(storage) == before


def test_gc_enforces_the_cap_lru_first(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = snapshot(storage / "published")
    assert main(["cache", "gc", "--max-bytes", "30000"]) == 0
    out = capsys.readouterr().out
    assert "evicted          3 entries, 29.3 KiB" in out
    assert "after            7 entries, 24.4 KiB" in out
    assert sorted(k for k in cache_files(storage / "cache") if k.endswith(".tgz")) == [
        "@scope/p1/p1-1.0.0.tgz", "p0/p0-1.0.0.tgz"]
    assert snapshot(storage / "published") == published


def test_gc_max_age_takes_idle_tarballs_only(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "gc", "--max-age", "36h", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["evicted"], report["expired"], report["bytes_freed"]) == (3, 3, 30_000)
    assert report["max_age"] == 36 * HOUR and report["max_bytes"] is None
    left = cache_files(storage / "cache")
    assert len([k for k in left if k.endswith("packument.json")]) == 5  # packuments are not aged out
    assert sorted(k for k in left if k.endswith(".tgz")) == ["@scope/p1/p1-1.0.0.tgz", "p0/p0-1.0.0.tgz"]


def test_gc_limits_from_the_config_and_flags_override(storage: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ovs.toml").write_text('[cache]\nmax_bytes = "1MiB"\nmax_age = "84h"\n')
    assert main(["cache", "gc", "--config", "ovs.toml", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["max_bytes"], report["max_age"], report["evicted"]) == (2**20, 84 * HOUR, 1)  # the 4-day tarball
    assert main(["cache", "gc", "--config", "ovs.toml", "--max-age", "none", "--max-bytes", "0",
                 "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["max_bytes"], report["max_age"], report["evicted"], report["expired"]) == (0, None, 10, 0)


def test_gc_without_limits_says_so(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(storage)
    assert main(["cache", "gc"]) == 0
    assert "no limit set" in capsys.readouterr().out
    assert snapshot(storage) == before


def test_gc_bad_flag_values(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "gc", "--max-bytes", "lots"]) == 1
    assert "--max-bytes" in capsys.readouterr().err
    assert main(["cache", "gc", "--max-age", "-5"]) == 1
    assert "--max-age" in capsys.readouterr().err


def test_progress_bar_only_when_asked_or_on_a_tty(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "gc", "--max-bytes", "0"]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    for name in ("p5", "p6"):
        (storage / "cache" / name).mkdir()
        (storage / "cache" / name / "x.tgz").write_bytes(b"x")
    assert main(["cache", "gc", "--max-bytes", "0", "--progress"]) == 0
    err = capsys.readouterr().err
    assert "scanning" in err and "deleting" in err
    assert main(["cache", "stats", "--progress"]) == 0
    assert "scanning" in capsys.readouterr().err


def test_clear_summary_and_published_untouched(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    published = snapshot(storage / "published")
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "cleared the proxy cache" in out and "10 files, 53.7 KiB" in out
    assert "before  10 entries, 53.7 KiB" in out and "after   0 entries, 0 B" in out
    assert "published store untouched" in out
    assert cache_files(storage / "cache") == {}
    assert snapshot(storage / "published") == published
    assert main(["cache", "clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0


def test_cache_commands_in_a_subprocess(storage: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAYSTORE_")}
    done = subprocess.run(
        [sys.executable, "-m", "server", "cache", "gc", "--max-bytes", "10KB", "--progress"],
        capture_output=True, text=True, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    # LRU: the four old tarballs, the packuments hours old, then of p0's two
    # files (same mtime) the first by key; p0's packument stays.
    assert "evicted          9 entries, 52.7 KiB" in done.stdout
    assert "scanning" in done.stderr
    assert cache_files(storage / "cache") == {"p0/packument.json": 1000}
