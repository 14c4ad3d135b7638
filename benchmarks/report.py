"""The side-by-side run's results: values, the issue's targets, markdown and JSON.

Each scenario yields one :class:`Outcome` per peer (every repetition's value
kept, so a reader sees the spread next to the median). Ratios are always
overlaystore / other peer on the scenario's own unit: for throughputs higher
is better, for times and memory lower is better, and each :class:`Target`
says which way it bounds. Nothing here measures; it only summarizes what
:mod:`benchmarks.scenarios` produced.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

OVERLAYSTORE = "overlaystore"
VERDACCIO = "verdaccio"
NGINX = "nginx"
AIOHTTP = "aiohttp"
#: the peers ratios are taken against, in table order
COMPARED = (VERDACCIO, NGINX)
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """One scenario measured on one peer: a value per repetition."""

    scenario: str  # stable id, e.g. "packument-small-full-gzip"
    title: str  # what the table shows
    unit: str  # "req/s", "s", "publishes/s", "MiB"
    higher_is_better: bool
    peer: str
    values: tuple[float, ...]
    #: medians of secondary figures (latency, transfer, CPU shares, errors)
    details: tuple[tuple[str, float], ...] = ()
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def detail(self, key: str) -> float | None:
        return dict(self.details).get(key)


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: overlaystore's value, or its ratio to a peer, bounded."""

    bound: float
    at_least: bool
    against: str | None = None  # None: a bound on overlaystore's own value (in the outcome's unit)
    label: str = ""  # how the bound reads when ``against`` is None, e.g. "300 MB"

    def text(self) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.against is None:
            return f"{sign} {self.label}"
        return f"{sign} {self.bound:g}× {self.against}"

    def met(self, figure: float) -> bool:
        return figure >= self.bound if self.at_least else figure <= self.bound


_SMALL = Target(10, True, VERDACCIO)
_MIX = Target(0.3, True, NGINX)
_HUGE_IDENTITY = Target(0.5, True, NGINX)
_HUGE_GZIP = Target(0.25, True, NGINX)
#: "at most 300 MB" in the unit the RSS rows use
_RSS = Target(300e6 / _MIB, False, label="300 MB")

#: The issue's targets by scenario id. "Huge full" and "huge gzip" are read as
#: the two encodings, so they bound the abbreviated form as well; the small
#: and mix bounds hold for every form and encoding.
TARGETS: Mapping[str, Target] = {
    **{f"packument-small-{form}{enc}": _SMALL for form in ("full", "abbreviated") for enc in ("", "-gzip")},
    **{f"packument-mix-{form}{enc}": _MIX for form in ("full", "abbreviated") for enc in ("", "-gzip")},
    **{f"packument-huge-{form}": _HUGE_IDENTITY for form in ("full", "abbreviated")},
    **{f"packument-huge-{form}-gzip": _HUGE_GZIP for form in ("full", "abbreviated")},
    "tarball-small": Target(3, True, VERDACCIO),
    "tarball-large": Target(0.8, True, NGINX),
    "npm-ci-warm": Target(1.1, False, NGINX),
    "npm-ci-cold": Target(1.25, False, NGINX),
    "publish-100": Target(5, True, VERDACCIO),
    "peak-rss-hwm": _RSS,
    "peak-rss-sampled": _RSS,
    "startup-100k": Target(1.0, False, label="1 s"),
}

#: A peer without the scenario is compared through another of its own: nginx
#: has no cold cache, so a cold overlaystore install is set against nginx's
#: (only) install, as the issue's target says.
COMPARE_VIA: Mapping[str, str] = {"npm-ci-cold": "npm-ci-warm"}


@dataclass(frozen=True)
class Machine:
    nproc: int
    cpu: str
    kernel: str
    python: str
    node: str
    npm: str
    nginx: str
    wrk: str
    loadavg_start: str


@dataclass(frozen=True)
class Report:
    date: str  # local time, ISO 8601
    corpus: str  # kind
    corpus_summary: str
    mode: str  # "quick" | "full" | "partial" (a subset of the peers, scenarios or settings)
    settings: str  # durations, repetitions, connections
    machine: Machine
    peers: tuple[str, ...]  # the peers measured, table order
    outcomes: tuple[Outcome, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (peer or scenario, reason)
    notes: tuple[str, ...] = ()
    loadavg_end: str = ""
    duration_s: float = 0.0
    extra: Mapping[str, str] = field(default_factory=dict)


#: details that add up over repetitions; every other detail is a median
_SUMMED_DETAILS = frozenset({"errors"})


def merge(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """One outcome per (scenario, peer): the rounds' values joined, details
    the median over rounds (errors summed), notes kept once each; first-seen order."""
    groups: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.scenario, outcome.peer), []).append(outcome)
    merged = []
    for group in groups.values():
        first = group[0]
        keys = list(dict.fromkeys(key for o in group for key, _ in o.details))
        details = []
        for key in keys:
            values = [v for o in group if (v := o.detail(key)) is not None]
            details.append((key, sum(values) if key in _SUMMED_DETAILS else statistics.median(values)))
        notes = list(dict.fromkeys(o.note for o in group if o.note))
        merged.append(Outcome(first.scenario, first.title, first.unit, first.higher_is_better, first.peer,
                              tuple(v for o in group for v in o.values), tuple(details), "; ".join(notes)))
    return merged


# --- comparisons --------------------------------------------------------------


def find(outcomes: Iterable[Outcome], scenario: str, peer: str) -> Outcome | None:
    for outcome in outcomes:
        if outcome.scenario == scenario and outcome.peer == peer and outcome.values:
            return outcome
    return None


def ratio(outcomes: Sequence[Outcome], scenario: str, other: str) -> float | None:
    """overlaystore's median over ``other``'s (through :data:`COMPARE_VIA` if ``other`` lacks the scenario)."""
    mine = find(outcomes, scenario, OVERLAYSTORE)
    theirs = find(outcomes, scenario, other)
    if theirs is None and scenario in COMPARE_VIA:
        theirs = find(outcomes, COMPARE_VIA[scenario], other)
    if mine is None or theirs is None or theirs.median == 0:
        return None
    return mine.median / theirs.median


def verdict(outcomes: Sequence[Outcome], scenario: str) -> str:
    """"PASS", "MISS", "n/a" (a figure is missing) or "" (the issue sets no target)."""
    target = TARGETS.get(scenario)
    if target is None:
        return ""
    if target.against is None:
        mine = find(outcomes, scenario, OVERLAYSTORE)
        figure = None if mine is None else mine.median
    else:
        figure = ratio(outcomes, scenario, target.against)
    if figure is None:
        return "n/a"
    return "PASS" if target.met(figure) else "MISS"


# --- formatting ---------------------------------------------------------------


def fmt_number(value: float) -> str:
    """Three significant digits below 1,000, thousands separators above."""
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_outcome(outcome: Outcome | None) -> str:
    if outcome is None:
        return "—"
    unit = "" if outcome.unit.endswith("/s") else f" {outcome.unit}"
    text = fmt_number(outcome.median) + unit
    if len(outcome.values) > 1:
        text += f" ({fmt_number(outcome.low)}–{fmt_number(outcome.high)})"
    return text


def fmt_ratio(value: float | None, bound: float | None = None) -> str:
    """Three significant digits; four when three would read as exactly a
    target's ``bound`` the value misses (0.29976 is not "0.3×")."""
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}×"
    text = f"{value:.3g}"
    if bound is not None and value != bound and float(text) == bound:
        text = f"{value:.4g}"
    return text + "×"


def scenario_order(outcomes: Iterable[Outcome]) -> list[tuple[str, str, str]]:
    """(id, title, unit) of each scenario, first-seen order."""
    seen: dict[str, tuple[str, str, str]] = {}
    for outcome in outcomes:
        seen.setdefault(outcome.scenario, (outcome.scenario, outcome.title, outcome.unit))
    return list(seen.values())


_DETAILS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("transfer_mib_s", "MiB/s", fmt_number),
    ("p50_ms", "p50 ms", fmt_number),
    ("p99_ms", "p99 ms", fmt_number),
    ("wrk_cpu", "wrk CPU", lambda v: f"{v:.0%}"),
    ("server_cpu", "server CPU", lambda v: f"{v:.0%}"),
    ("errors", "errors", lambda v: f"{v:.0f}"),
    ("body_bytes", "body B", lambda v: f"{v:,.0f}"),
)


def to_markdown(report: Report) -> str:
    m = report.machine
    lines = [
        f"# Side-by-side benchmark, {report.date}",
        "",
        f"- corpus: **{report.corpus}** ({report.corpus_summary})",
        f"- mode: {report.mode}: {report.settings}",
        f"- machine: {m.nproc} cores, {m.cpu}; Linux {m.kernel}; Python {m.python}; node {m.node}; npm {m.npm};"
        f" {m.nginx}; {m.wrk}",
        f"- load average at start / end: {m.loadavg_start} / {report.loadavg_end}; run took"
        f" {report.duration_s / 60:.1f} min",
    ]
    lines += [f"- {key}: {value}" for key, value in report.extra.items()]
    lines += [f"- skipped {what}: {why}" for what, why in report.skipped]
    lines += [f"- {note}" for note in report.notes]
    compared = [peer for peer in COMPARED if peer in report.peers]
    header = ["scenario", *report.peers, *(f"{OVERLAYSTORE}/{peer}" for peer in compared), "target", ""]
    lines += ["", "| " + " | ".join(header) + " |",
              "|---|" + "---:|" * (len(report.peers) + len(compared)) + "---|---|"]
    outcomes = report.outcomes
    for scenario, title, unit in scenario_order(outcomes):
        target = TARGETS.get(scenario)
        row = [f"{title} ({unit})" if unit.endswith("/s") else title]
        row += [fmt_outcome(find(outcomes, scenario, peer)) for peer in report.peers]
        row += [fmt_ratio(ratio(outcomes, scenario, peer), target.bound if target and target.against == peer else None)
                for peer in compared]
        row += [target.text() if target else "", verdict(outcomes, scenario)]
        lines.append("| " + " | ".join(row) + " |")
    detailed = [o for o in outcomes if o.details]
    if detailed:
        columns = [(key, head, f) for key, head, f in _DETAILS if any(o.detail(key) is not None for o in detailed)]
        lines += ["", "Details (medians over the repetitions; CPU: share of one core over the run):", "",
                  "| scenario | peer | " + " | ".join(head for _, head, _ in columns) + " | note |",
                  "|---|---|" + "---:|" * len(columns) + "---|"]
        for o in detailed:
            cells = ["" if (value := o.detail(key)) is None else f(value) for key, _, f in columns]
            lines.append(f"| {o.title} | {o.peer} | " + " | ".join(cells) + f" | {o.note} |")
    notes = [o for o in outcomes if o.note and not o.details]
    if notes:
        lines += ["", *(f"- {o.title}, {o.peer}: {o.note}" for o in notes)]
    return "\n".join(lines) + "\n"


def to_json(report: Report) -> dict[str, object]:
    outcomes = report.outcomes
    scenarios = []
    for scenario, title, unit in scenario_order(outcomes):
        target = TARGETS.get(scenario)
        scenarios.append({
            "id": scenario,
            "title": title,
            "unit": unit,
            "peers": {o.peer: {"median": o.median, "min": o.low, "max": o.high, "values": list(o.values),
                               "details": dict(o.details), "note": o.note}
                      for o in outcomes if o.scenario == scenario and o.values},
            "ratios": {peer: ratio(outcomes, scenario, peer) for peer in COMPARED},
            "target": target.text() if target else None,
            "verdict": verdict(outcomes, scenario) or None,
        })
    return {
        "date": report.date,
        "corpus": report.corpus,
        "corpus_summary": report.corpus_summary,
        "mode": report.mode,
        "settings": report.settings,
        "machine": asdict(report.machine),
        "loadavg_end": report.loadavg_end,
        "duration_s": round(report.duration_s, 1),
        "peers": list(report.peers),
        "skipped": [{"what": what, "reason": why} for what, why in report.skipped],
        "notes": list(report.notes),
        "extra": dict(report.extra),
        "scenarios": scenarios,
    }


def write(report: Report, directory: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """``<directory>/<YYYY-MM-DD>-<corpus>[-<mode>].json`` and ``.md``; returns both paths.

    A quick or partial run gets its own name so that it never overwrites the
    day's full results (a partial one also carries its start time: several
    are often made in a day).
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{report.date[:10]}-{report.corpus}"
    if report.mode == "quick":
        stem += "-quick"
    elif report.mode == "partial":
        stem += f"-partial-{report.date[11:13]}{report.date[14:16]}"
    json_path, md_path = directory / f"{stem}.json", directory / f"{stem}.md"
    json_path.write_text(json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(to_markdown(report))
    return json_path, md_path


# --- the machine --------------------------------------------------------------


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} missing"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]} ?"
    lines = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return lines[0].strip() if lines else f"{argv[0]} ?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def describe_machine() -> Machine:
    from benchmarks import wrk

    nginx = _version(["nginx", "-v"]) if shutil.which("nginx") else "nginx missing"
    return Machine(
        nproc=os.cpu_count() or 0,
        cpu=cpu_model(),
        kernel=platform.release(),
        python=platform.python_version(),
        node=_version(["node", "--version"]),
        npm=_version(["npm", "--version"]),
        nginx=re.sub(r"^nginx version:\s*", "", nginx),
        wrk=wrk.version() or "wrk missing",
        loadavg_start=loadavg(),
    )


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
