"""benchmarks/report.py: ratios, the issue's targets (PASS/MISS), merging
rounds, and the markdown / JSON written for a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.corpus import Corpus
from benchmarks.report import NGINX, OVERLAYSTORE, VERDACCIO, Outcome, Target
from benchmarks.scenarios import OTHER_IDS, wrk_scenarios


def rps(scenario: str, peer: str, *values: float, **details: float) -> Outcome:
    return Outcome(scenario, scenario.replace("-", " "), "req/s", True, peer, values, tuple(details.items()))


def seconds(scenario: str, peer: str, *values: float) -> Outcome:
    return Outcome(scenario, scenario, "s", False, peer, values)


def test_ratio_is_overlaystore_over_the_other_median() -> None:
    outcomes = [rps("packument-small-full", OVERLAYSTORE, 5000, 6000, 7000),
                rps("packument-small-full", VERDACCIO, 400, 500, 900)]
    assert report.ratio(outcomes, "packument-small-full", VERDACCIO) == pytest.approx(12.0)
    assert report.ratio(outcomes, "packument-small-full", NGINX) is None


def test_small_packument_needs_ten_times_verdaccio() -> None:
    passing = [rps("packument-small-full-gzip", OVERLAYSTORE, 5000), rps("packument-small-full-gzip", VERDACCIO, 500)]
    missing = [rps("packument-small-full-gzip", OVERLAYSTORE, 4999), rps("packument-small-full-gzip", VERDACCIO, 500)]
    assert report.verdict(passing, "packument-small-full-gzip") == "PASS"
    assert report.verdict(missing, "packument-small-full-gzip") == "MISS"


def test_times_are_bounded_from_above() -> None:
    outcomes = [seconds("npm-ci-warm", OVERLAYSTORE, 5.4), seconds("npm-ci-warm", NGINX, 5.0)]
    assert report.verdict(outcomes, "npm-ci-warm") == "PASS"  # 1.08 <= 1.1
    outcomes[0] = seconds("npm-ci-warm", OVERLAYSTORE, 5.6)
    assert report.verdict(outcomes, "npm-ci-warm") == "MISS"


def test_cold_install_is_compared_with_nginx_warm_install() -> None:
    outcomes = [seconds("npm-ci-cold", OVERLAYSTORE, 6.0), seconds("npm-ci-warm", NGINX, 5.0)]
    assert report.ratio(outcomes, "npm-ci-cold", NGINX) == pytest.approx(1.2)
    assert report.verdict(outcomes, "npm-ci-cold") == "PASS"


def test_absolute_targets() -> None:
    rss = [Outcome("peak-rss-hwm", "rss", "MiB", False, OVERLAYSTORE, (280.0,))]
    assert report.verdict(rss, "peak-rss-hwm") == "PASS"  # 300 MB = 286.1 MiB
    rss = [Outcome("peak-rss-hwm", "rss", "MiB", False, OVERLAYSTORE, (290.0,))]
    assert report.verdict(rss, "peak-rss-hwm") == "MISS"
    assert report.verdict([seconds("startup-100k", OVERLAYSTORE, 0.4, 1.2, 0.5)], "startup-100k") == "PASS"
    assert report.TARGETS["startup-100k"].text() == "≤ 1 s"


def test_missing_figures_and_untargeted_scenarios() -> None:
    assert report.verdict([rps("tarball-large", OVERLAYSTORE, 100)], "tarball-large") == "n/a"
    empty = [rps("tarball-large", OVERLAYSTORE, 100), rps("tarball-large", NGINX)]  # nginx: no value
    assert report.verdict(empty, "tarball-large") == "n/a"
    assert report.verdict([rps("revalidate-304", OVERLAYSTORE, 100)], "revalidate-304") == ""


def test_target_text() -> None:
    assert Target(10, True, VERDACCIO).text() == "≥ 10× verdaccio"
    assert Target(1.25, False, NGINX).text() == "≤ 1.25× nginx"


def test_every_target_names_a_scenario_the_harness_runs() -> None:
    corpus = Corpus(root=Path("/nonexistent"), kind="synthetic", names=("a", "ms", "typescript"), small="ms",
                    huge="typescript", tarball_small="/ms/-/ms-2.1.3.tgz",
                    tarball_large="/typescript/-/typescript-5.0.0.tgz")
    ids = {s.id for s in wrk_scenarios(corpus)}
    assert len(ids) == 15
    assert set(report.TARGETS) <= ids | set(OTHER_IDS)
    assert {s.connections for s in wrk_scenarios(corpus) if "huge" in s.id} == {8}


def test_merge_joins_rounds() -> None:
    merged = report.merge([
        rps("tarball-small", OVERLAYSTORE, 100, p50_ms=1.0, errors=2),
        rps("tarball-small", VERDACCIO, 10),
        rps("tarball-small", OVERLAYSTORE, 300, p50_ms=3.0, errors=1),
        rps("tarball-small", OVERLAYSTORE, 200, p50_ms=2.0, errors=0),
    ])
    assert [(o.peer, o.values) for o in merged] == [(OVERLAYSTORE, (100, 300, 200)), (VERDACCIO, (10,))]
    assert merged[0].detail("p50_ms") == 2.0
    assert merged[0].detail("errors") == 3
    assert (merged[0].median, merged[0].low, merged[0].high) == (200, 100, 300)


def test_formatting() -> None:
    assert report.fmt_number(65244.4) == "65,244"
    assert report.fmt_number(3.94) == "3.94"
    assert report.fmt_number(0.0123) == "0.0123"
    assert report.fmt_outcome(rps("x", OVERLAYSTORE, 510, 524, 530)) == "524 (510–530)"
    assert report.fmt_outcome(seconds("x", OVERLAYSTORE, 6.27)) == "6.27 s"
    assert report.fmt_outcome(None) == "—"
    assert report.fmt_ratio(12.345) == "12.3×"
    assert report.fmt_ratio(0.29976, bound=0.3) == "0.2998×"  # a miss never reads as the target
    assert report.fmt_ratio(0.29976) == report.fmt_ratio(0.3, bound=0.3) == "0.3×"


def _report(mode: str = "full") -> report.Report:
    machine = report.Machine(nproc=2, cpu="Some CPU", kernel="6.1", python="3.11.7", node="v20", npm="11",
                             nginx="nginx/1.22.1", wrk="wrk 4.1.0", loadavg_start="0.5 0.5 0.5")
    outcomes = (
        rps("packument-small-full", OVERLAYSTORE, 6000, 7000, 8000, p50_ms=1.5, wrk_cpu=0.9, server_cpu=1.0),
        rps("packument-small-full", VERDACCIO, 500, 520, 530, p50_ms=60.0),
        rps("packument-small-full", NGINX, 60000, 65000, 70000),
        seconds("npm-ci-cold", OVERLAYSTORE, 6.0),
        seconds("npm-ci-warm", NGINX, 5.0),
        Outcome("publish-100", "100 sequential publishes", "publishes/s", True, VERDACCIO, (), note="401 denied"),
    )
    return report.Report(date="2026-11-26T10:00:00+00:00", corpus="synthetic", corpus_summary="250 packages",
                         mode=mode, settings="10 s x 3", machine=machine, peers=(OVERLAYSTORE, VERDACCIO, NGINX),
                         outcomes=outcomes, skipped=(("nothing", "because"),))


def test_markdown_table() -> None:
    text = report.to_markdown(_report())
    assert "| scenario | overlaystore | verdaccio | nginx | overlaystore/verdaccio | overlaystore/nginx |" in text
    row = next(line for line in text.splitlines() if line.startswith("| packument small full (req/s)"))
    assert "7,000 (6,000–8,000)" in row and "13.5×" in row and "0.108×" in row
    assert row.endswith("| ≥ 10× verdaccio | PASS |")
    cold = next(line for line in text.splitlines() if line.startswith("| npm-ci-cold |"))
    assert "1.2×" in cold and "PASS" in cold
    assert "skipped nothing: because" in text
    assert "100 sequential publishes, verdaccio: 401 denied" in text
    assert "| packument small full | overlaystore | 1.50 | 90% | 100% |" in text


def test_json_and_file_names(tmp_path: Path) -> None:
    json_path, md_path = report.write(_report(), tmp_path)
    assert (json_path.name, md_path.name) == ("2026-11-26-synthetic.json", "2026-11-26-synthetic.md")
    data = json.loads(json_path.read_text())
    small = next(s for s in data["scenarios"] if s["id"] == "packument-small-full")
    assert small["peers"][OVERLAYSTORE] == {"median": 7000, "min": 6000, "max": 8000, "values": [6000, 7000, 8000],
                                            "details": {"p50_ms": 1.5, "wrk_cpu": 0.9, "server_cpu": 1.0},
                                            "note": ""}
    assert small["ratios"][VERDACCIO] == pytest.approx(7000 / 520)
    assert small["verdict"] == "PASS"
    assert data["machine"]["nproc"] == 2
    quick_json, _ = report.write(_report("quick"), tmp_path)
    assert quick_json.name == "2026-11-26-synthetic-quick.json"
    partial_json, _ = report.write(_report("partial"), tmp_path)
    assert partial_json.name == "2026-11-26-synthetic-partial-1000.json"
