"""The publish-floor tool measures what it says, and its command line works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import publish_floor


def test_disk_floors_write_the_files_durably_and_clean_up(tmp_path: Path) -> None:
    floors = publish_floor.disk_floors(tmp_path, 5)
    assert [f.name for f in floors] == ["durable_writes", "page_cache_writes"]
    for floor in floors:
        assert floor.n == 5
        assert 0 < floor.p10_ms <= floor.p50_ms <= floor.p90_ms
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_http_floor_answers_every_put() -> None:
    floor = publish_floor.http_floor(20)
    assert floor.name == "http_put" and floor.n == 20
    assert 0 < floor.p50_ms < 1000


def test_main_prints_one_json_object_per_floor_and_the_ceiling(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert publish_floor.main(["--dir", str(tmp_path), "--publishes", "5", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in rows] == ["durable_writes", "page_cache_writes", "http_put",
                                         "ceiling_publishes_per_s"]
    durable, _, http, ceiling = rows
    assert ceiling["value"] == pytest.approx(1000 / (durable["p50_ms"] + http["p50_ms"]), rel=0.01)
