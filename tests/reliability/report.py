"""Run the bounded reliability suites and rewrite docs/reliability.md.

    .venv/bin/python -m tests.reliability.report            # run everything, then write the doc
    .venv/bin/python -m tests.reliability.report --quick    # shorter slow suites (crash 30, soak 20 s)
    .venv/bin/python -m tests.reliability.report --no-run   # only re-render from the results files

Running means two pytest sessions over ``--paths`` (default: tests/reliability
and tests/security), ``-m "not slow"`` then ``-m slow``, with
``OVERLAYSTORE_RECORD_RESULTS=1``. The slow suites are bounded by
``OVERLAYSTORE_SERVER_CRASH_ITERATIONS`` (default 200) and
``OVERLAYSTORE_SOAK_SECONDS`` (default 120), unless already set.

**Results files** (what a suite writes to contribute rows): one JSON document
per suite, ``tests/reliability/results/<suite>.json``::

    {"suite": "soak", "title": "Soak: ...", "source": "tests/reliability",
     "runs": {"default": RUN, "slow": RUN}}

A RUN is an object; these keys fill the summary table (all optional):
``requests``, ``faults``, ``inputs`` (or ``inputs_tried``), ``crashes``,
``lost``, ``server_errors``, ``tests_passed``, ``tests_failed``, ``recorded``
(ISO time). ``details`` (a list of ``{"what", "value", "note"}``) becomes the
suite's own table; without it, the other scalar keys (and one level of
nested objects) are listed instead. ``tests`` (test id -> outcome) is not
rendered beyond the counts.

Exit status: non-zero if a pytest session failed (the doc is written anyway,
showing the failures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .harness import RECORD_ENV, RESULTS_DIR, ROOT

DOC = ROOT / "docs" / "reliability.md"
COMMAND = ".venv/bin/python -m tests.reliability.report"

SUMMARY = (
    ("Requests served", ("requests", "requests_served")),
    ("Faults injected", ("faults", "faults_injected")),
    ("Inputs tried", ("inputs", "inputs_tried")),
    ("Crashes survived", ("crashes", "crashes_survived")),
    ("Lost", ("lost",)),
    ("5xx", ("server_errors",)),
)
_SKIP = {"recorded", "tests", "details", "tests_passed", "tests_failed"} | {k for _, keys in SUMMARY for k in keys}


def run_suites(paths: list[str], quick: bool, extra: list[str]) -> int:
    env = dict(os.environ)
    env[RECORD_ENV] = "1"
    env.setdefault("OVERLAYSTORE_SERVER_CRASH_ITERATIONS", "30" if quick else "200")
    env.setdefault("OVERLAYSTORE_SOAK_SECONDS", "20" if quick else "120")
    status = 0
    for marker in ("not slow", "slow"):
        cmd = [sys.executable, "-m", "pytest", *paths, "-q", "-m", marker, *extra]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        if rc not in (0, 5):  # 5: nothing selected
            status = rc
    return status


# ------------------------------------------------------------------ render


def load_results(directory: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(directory.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"skipping {path}: {exc}", file=sys.stderr)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("runs"), dict):
            doc.setdefault("suite", path.stem)
            docs.append(doc)
    return docs


def _first(run: Mapping[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if key in run and run[key] is not None:
            return run[key]
    return None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value) if len(value) <= 8 else f"{len(value)} items"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) if len(value) <= 8 else f"{len(value)} entries"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _order(profiles: Iterable[str]) -> list[str]:
    return sorted(profiles, key=lambda p: (p != "default", p != "slow", p))


def _detail_rows(run: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    details = run.get("details")
    if isinstance(details, list) and details:
        return [(_fmt(d.get("what")), _fmt(d.get("value")), _fmt(d.get("note", ""))) for d in details
                if isinstance(d, dict)]
    rows = []
    for key, value in run.items():
        if key in _SKIP:
            continue
        if isinstance(value, dict):
            for sub, inner in value.items():
                rows.append((f"{key}: {sub}", _fmt(inner), ""))
        else:
            rows.append((key, _fmt(value), ""))
    return rows


def render(docs: list[dict[str, Any]], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    lines = [
        "# Reliability figures",
        "",
        f"Regenerate with one command: `{COMMAND}`",
        "(runs the default and the bounded slow suites of tests/reliability and",
        "tests/security with `OVERLAYSTORE_RECORD_RESULTS=1`, then rewrites this",
        "file from `tests/reliability/results/*.json`; `--quick` shortens the slow",
        "suites, `--no-run` only re-renders). Do not edit by hand.",
        "",
        f"Rendered {now:%Y-%m-%d %H:%M} UTC on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}. Everything runs on 127.0.0.1.",
        "",
        "## Summary",
        "",
        "| Suite | Run | " + " | ".join(label for label, _ in SUMMARY) + " | Tests passed / failed | Recorded |",
        "|---|---|" + "---:|" * len(SUMMARY) + "---|---|",
    ]
    totals: dict[str, int] = {label: 0 for label, _ in SUMMARY}
    for doc in docs:
        for profile in _order(doc["runs"]):
            run = doc["runs"][profile]
            cells = []
            for label, keys in SUMMARY:
                value = _first(run, keys)
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[label] += value
                cells.append(_fmt(value))
            tests = f"{_fmt(run.get('tests_passed'))} / {_fmt(run.get('tests_failed'))}"
            recorded = str(run.get("recorded") or "–")[:16].replace("T", " ")
            lines.append(f"| {doc.get('title') or doc['suite']} | {profile} | " + " | ".join(cells)
                         + f" | {tests} | {recorded} |")
    lines.append("| **all** | | " + " | ".join(f"**{_fmt(totals[label])}**" for label, _ in SUMMARY) + " | | |")
    lines += [
        "",
        "Lost must be 0 and 5xx must be 0 wherever they are measured. *Faults injected*",
        "counts upstream faults, kills, full disks and cache GC/clear runs imposed on",
        "the server; *crashes survived* counts SIGKILLs followed by a verified restart.",
    ]
    for doc in docs:
        for profile in _order(doc["runs"]):
            run = doc["runs"][profile]
            rows = _detail_rows(run)
            if not rows:
                continue
            lines += ["", f"## {doc.get('title') or doc['suite']} ({profile})", ""]
            source = doc.get("source")
            if source:
                lines += [f"Source: `{source}`, suite `{doc['suite']}`.", ""]
            lines += ["| What | Figure | Note |", "|---|---|---|"]
            lines += [f"| {w} | {v} | {n} |" for w, v, n in rows]
            failed = [t for t, o in (run.get("tests") or {}).items() if o != "passed"]
            if failed:
                lines += ["", "Not passed: " + ", ".join(f"`{t}`" for t in failed)]
    lines += [
        "",
        "## How rows get here",
        "",
        "Each suite writes `tests/reliability/results/<suite>.json` when",
        "`OVERLAYSTORE_RECORD_RESULTS=1`; the format is in the docstring of",
        "`tests/reliability/report.py`. A suite that wants a row only has to write",
        "that file; the report merges whatever is there.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-run", action="store_true", help="only re-render docs/reliability.md from the results")
    parser.add_argument("--quick", action="store_true", help="shorter slow suites (crash loop 30, soak 20 s)")
    parser.add_argument("--paths", nargs="*", default=None, help="pytest paths (default: tests/reliability tests/security)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    status = 0
    if not args.no_run:
        paths = args.paths or [p for p in ("tests/reliability", "tests/security") if (ROOT / p).is_dir()]
        status = run_suites(paths, args.quick, args.pytest_args)
    docs = load_results()
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(docs))
    print(f"wrote {DOC.relative_to(ROOT)} from {len(docs)} results file(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
