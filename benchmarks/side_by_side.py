"""``python -m benchmarks peers``: overlaystore, Verdaccio and nginx side by side.

    python -m benchmarks peers [--corpus real|synthetic|auto] [--quick]
                               [--peers overlaystore,verdaccio,nginx[,aiohttp]] [--only SCENARIO ...]
                               [--workers N] [--work DIR] [--json] [--no-write]

Order of a run: load the corpus; start the static upstream (127.0.0.1, the
only "upstream" any peer sees); set up each peer (a peer that cannot be
installed is skipped with its reason); empty overlaystore's cache and fill it
through it, and let the nginx peer take the bytes overlaystore serves; the
same emptying and filling for Verdaccio.
Then ``repetitions`` rounds; in each, peer after peer with only that peer
running (two cores: a second idle server still costs wake-ups and cache):
start, GET everything once, the wrk scenarios (RSS sampled during the mix),
npm ci against the warm peer, npm ci against the emptied cache (proxies),
the publishes (peers that accept them), stop. Last, overlaystore's start-up
with 100,000 cached packages, nothing else running. Results go to
``benchmarks/results/<date>-<corpus>[-quick].{json,md}``; the markdown table
is printed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks import report, scenarios, wrk
from benchmarks.corpus import Corpus, describe, load
from benchmarks.peer import WORK_ROOT, Peer, PeerUnavailable
from benchmarks.report import AIOHTTP, NGINX, OVERLAYSTORE, VERDACCIO, Outcome
from benchmarks.scenarios import (
    NPM_CI_COLD,
    NPM_CI_WARM,
    OTHER_IDS,
    PUBLISH,
    RSS_IDS,
    STARTUP,
    RssSampler,
    Settings,
    WrkScenario,
)

if TYPE_CHECKING:
    from benchmarks.nginx_peer import NginxPeer

PEERS = (OVERLAYSTORE, VERDACCIO, NGINX, AIOHTTP)
#: measured unless --peers says otherwise (aiohttp is a reference asked for by name)
DEFAULT_PEERS = (OVERLAYSTORE, VERDACCIO, NGINX)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks peers",
                                     description="overlaystore, Verdaccio and nginx side by side (issue 5).")
    parser.add_argument("--corpus", choices=("real", "synthetic", "auto"), default="auto",
                        help="real: captured once from the configured upstream; synthetic: generated (default: auto)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 s wrk runs, 1 round, 1 start-up (a few minutes)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)} (default: {','.join(DEFAULT_PEERS)}; "
                             "aiohttp: a bare aiohttp app serving nginx's bytes, the floor of the HTTP layer)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO",
                        help="scenario ids or prefixes (packument-small, packument, tarball, revalidate, npm-ci, "
                             "publish, peak-rss, startup)")
    parser.add_argument("--workers", type=int, default=1, help="overlaystore worker processes (default 1)")
    parser.add_argument("--work", type=Path, default=WORK_ROOT,
                        help="where peers are installed and run (default: benchmarks/.work)")
    parser.add_argument("--json", action="store_true", help="print the JSON results instead of the markdown table")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/results/")
    args = parser.parse_args(list(argv))
    args.peer_names = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(args.peer_names) - set(PEERS))
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)} (known: {', '.join(PEERS)})")
    return args


class Selection:
    """Which scenarios ``--only`` keeps (all without it)."""

    def __init__(self, only: Sequence[str] | None) -> None:
        self.only = tuple(only or ())

    def wants(self, *scenario_ids: str) -> bool:
        """Whether any of ``scenario_ids`` is selected (an ``--only`` token is an id or its prefix)."""
        return not self.only or any(i.startswith(token) for i in scenario_ids for token in self.only)

    def wrk(self, corpus: Corpus) -> tuple[WrkScenario, ...]:
        # Peak RSS is sampled during the mixed load: asking for it runs the mix.
        return tuple(s for s in scenarios.wrk_scenarios(corpus)
                     if self.wants(s.id) or (self.wants(*RSS_IDS) and s.id.startswith("packument-mix")))


class Run:
    """One side-by-side run: its peers, what was skipped, what was measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = Settings.quick() if args.quick else Settings()
        self.selection = Selection(args.only)
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self.outcomes: list[Outcome] = []
        self.peers: list[Peer] = []  # measured, in table order
        self.nginx_prepared = False
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed / 60:5.1f} min] {message}", file=sys.stderr, flush=True)

    def skip(self, what: str, reason: str) -> None:
        self.log(f"skipping {what}: {reason}")
        self.skipped.append((what, reason))

    # --- set-up ------------------------------------------------------------

    def setup_peers(self, corpus: Corpus, upstream_url: str) -> None:
        from benchmarks.aiohttp_peer import AiohttpPeer
        from benchmarks.nginx_peer import NginxPeer
        from benchmarks.overlaystore_peer import OverlaystorePeer
        from benchmarks.verdaccio_peer import VerdaccioPeer

        wanted = self.args.peer_names
        overlaystore: OverlaystorePeer | None = None
        nginx: NginxPeer | None = None
        # nginx serves the bytes overlaystore renders: overlaystore is set up
        # whenever nginx is wanted, and measured only when asked for.
        if NGINX in wanted:
            nginx = NginxPeer(self.args.work)
            if not self._setup(nginx, upstream_url):
                nginx = None
        if OVERLAYSTORE in wanted or nginx is not None:
            candidate = OverlaystorePeer(self.args.work, workers=self.args.workers)
            if self._setup(candidate, upstream_url) and self._fill(candidate, corpus, nginx=nginx):
                overlaystore = candidate
            elif nginx is not None:
                self.skip(NGINX, "it serves overlaystore's bytes, and overlaystore is unavailable")
            if not self.nginx_prepared:
                nginx = None
        if VERDACCIO in wanted:
            verdaccio = VerdaccioPeer(self.args.work)
            if self._setup(verdaccio, upstream_url) and self._fill(verdaccio, corpus):
                self.peers.append(verdaccio)
        if overlaystore is not None and OVERLAYSTORE in wanted:
            self.peers.append(overlaystore)
        if nginx is not None:
            self.peers.append(nginx)
        if AIOHTTP in wanted:
            if nginx is None:
                self.skip(AIOHTTP, "it serves the bytes the nginx peer prepares: add nginx to --peers")
            else:
                floor = AiohttpPeer(nginx.www, self.args.work)
                if self._setup(floor, upstream_url):
                    self.peers.append(floor)
        self.peers.sort(key=lambda peer: PEERS.index(peer.name))

    def _setup(self, peer: Peer, upstream_url: str) -> bool:
        self.log(f"{peer.name}: set-up")
        try:
            peer.setup(upstream_url)
        except PeerUnavailable as exc:
            self.skip(peer.name, str(exc))
            return False
        return True

    def _fill(self, peer: Peer, corpus: Corpus, *, nginx: NginxPeer | None = None) -> bool:
        """Start ``peer``, empty its cache, pull the whole corpus through it
        (and hand ``nginx`` the bytes it now serves), stop it.

        Emptied first: what an earlier run cached names another upstream
        port, and maybe the other corpus (both have a "debug", for one)."""
        started = time.monotonic()
        try:
            with scenarios.running(peer):
                peer.clear_cache()
                failures = scenarios.warm(peer.base_url, corpus)
                if nginx is not None and not failures:
                    self._prepare_nginx(nginx, peer, corpus)
        except PeerUnavailable as exc:
            self.skip(peer.name, str(exc))
            return False
        self.log(f"{peer.name}: cache filled in {time.monotonic() - started:.0f} s")
        if failures:
            self.skip(peer.name, f"{len(failures)} corpus requests failed, e.g. {failures[0]}")
            return False
        return True

    def _prepare_nginx(self, nginx: NginxPeer, overlaystore: Peer, corpus: Corpus) -> None:
        try:
            nginx.prepare(corpus, overlaystore.base_url)
        except PeerUnavailable as exc:
            self.skip(NGINX, str(exc))
        else:
            self.nginx_prepared = True

    # --- measuring ---------------------------------------------------------

    def round(self, number: int, corpus: Corpus) -> None:
        per_round = [s.id for s in scenarios.wrk_scenarios(corpus)] + [*RSS_IDS, NPM_CI_WARM, NPM_CI_COLD, PUBLISH]
        if not self.selection.wants(*per_round):
            return
        for peer in self.peers:
            self.log(f"round {number}/{self.settings.repetitions}: {peer.name}")
            try:
                with scenarios.running(peer):
                    self.measure_peer(peer, corpus)
            except PeerUnavailable as exc:
                self.skip(f"{peer.name} in round {number}", str(exc))

    def measure_peer(self, peer: Peer, corpus: Corpus) -> None:
        failures = scenarios.warm(peer.base_url, corpus)
        if failures:
            self.notes.append(f"{peer.name}: {len(failures)} warm-up requests failed, e.g. {failures[0]}")
        selected = self.selection.wrk(corpus)
        if selected and not self._wrk_available():
            selected = ()
        # The mix scenarios are contiguous: memory is sampled while they run.
        mix = [i for i, s in enumerate(selected) if s.id.startswith("packument-mix")]
        first, last = (mix[0], mix[-1] + 1) if mix else (len(selected), len(selected))
        for scenario in selected[:first]:
            self.measure_wrk(scenario, peer)
        if mix:
            with RssSampler(peer, self.settings.rss_interval_s) as sampler:
                for scenario in selected[first:last]:
                    self.measure_wrk(scenario, peer)
            if self.selection.wants(*RSS_IDS):
                self.outcomes.extend(scenarios.rss_outcomes(peer, sampler))
        for scenario in selected[last:]:
            self.measure_wrk(scenario, peer)
        if self.selection.wants(NPM_CI_WARM) and peer.installs and self._npm_available():
            self.attempt(NPM_CI_WARM, peer, lambda: scenarios.npm_ci(corpus, peer, cold=False))
        if self.selection.wants(NPM_CI_COLD) and peer.is_proxy and self._npm_available():
            self.attempt(NPM_CI_COLD, peer, lambda: scenarios.npm_ci(corpus, peer, cold=True))
        if self.selection.wants(PUBLISH) and peer.can_publish:
            self.attempt(PUBLISH, peer, lambda: scenarios.publishes(peer, count=self.settings.publishes))

    def measure_wrk(self, scenario: WrkScenario, peer: Peer) -> None:
        self.attempt(scenario.id, peer, lambda: scenarios.run_wrk(
            scenario, peer, duration_s=self.settings.duration_s, warmup_s=self.settings.warmup_s))

    def attempt(self, scenario_id: str, peer: Peer, measure: Callable[[], Outcome]) -> None:
        """Run one measurement; a failure is recorded as a note, not a crash."""
        started = time.monotonic()
        try:
            outcome = measure()
        except PeerUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the others
            traceback.print_exc(file=sys.stderr)
            self.notes.append(f"{scenario_id} on {peer.name} failed: {type(exc).__name__}: {exc}")
            return
        self.outcomes.append(outcome)
        shown = report.fmt_outcome(outcome) if outcome.values else f"no value ({outcome.note})"
        self.log(f"  {scenario_id:<32} {peer.name:<12} {shown}  [{time.monotonic() - started:.0f} s]")

    def _wrk_available(self) -> bool:
        try:
            wrk.wrk_binary()
        except wrk.WrkUnavailable as exc:
            if ("wrk scenarios", str(exc)) not in self.skipped:
                self.skip("wrk scenarios", str(exc))
            return False
        return True

    def _npm_available(self) -> bool:
        if shutil.which("npm") is None:
            if ("npm ci", "npm is not installed") not in self.skipped:
                self.skip("npm ci", "npm is not installed")
            return False
        return True

    def startup(self, upstream_url: str) -> None:
        if OVERLAYSTORE not in [peer.name for peer in self.peers] or not self.selection.wants(STARTUP):
            return
        self.log(f"start-up with {self.settings.startup_packages:,} cached packages")
        self.attempt(STARTUP, self.peers[0], lambda: scenarios.startup(
            upstream_url, self.settings, workers=self.args.workers))

    def stop_all(self) -> None:
        for peer in self.peers:
            try:
                peer.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                traceback.print_exc(file=sys.stderr)


def _mode(args: argparse.Namespace) -> str:
    if args.quick:
        return "quick"
    if args.only or tuple(args.peer_names) != DEFAULT_PEERS or args.workers != 1:
        return "partial"
    return "full"


def main(argv: Sequence[str]) -> int:
    from benchmarks.static_upstream import StaticUpstream

    args = parse_args(argv)
    run = Run(args)
    if args.quick:
        run.notes.append("quick mode: a smoke run (short runs, one round), not results to quote")
    machine = report.describe_machine()
    date = report.now()
    corpus = load(args.corpus)
    run.log(describe(corpus))
    try:
        with StaticUpstream(corpus, args.work / "upstream") as upstream:
            run.log(f"static upstream ({upstream.server}) at {upstream.url}")
            run.setup_peers(corpus, upstream.url)
            for number in range(1, run.settings.repetitions + 1):
                run.round(number, corpus)
            run.startup(upstream.url)
    finally:
        run.stop_all()
    ids = [s.id for s in scenarios.wrk_scenarios(corpus)] + list(OTHER_IDS)
    order = {scenario: index for index, scenario in enumerate(ids)}
    outcomes = sorted(report.merge(run.outcomes), key=lambda o: (order.get(o.scenario, len(order)),
                                                                  PEERS.index(o.peer) if o.peer in PEERS else 9))
    result = report.Report(
        date=date, corpus=corpus.kind, corpus_summary=describe(corpus), mode=_mode(args),
        settings=run.settings.describe() + (f"; overlaystore --workers {args.workers}" if args.workers != 1 else ""),
        machine=machine, peers=tuple(peer.name for peer in run.peers), outcomes=tuple(outcomes),
        skipped=tuple(run.skipped), notes=tuple(run.notes), loadavg_end=report.loadavg(),
        duration_s=time.monotonic() - run.started,
        extra={"static upstream": upstream.server},
    )
    if not args.no_write:
        paths = report.write(result)
        run.log("wrote " + ", ".join(str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd())
                                     else str(path) for path in paths))
    print(json.dumps(report.to_json(result), indent=2, ensure_ascii=False) if args.json else report.to_markdown(result))
    return 0
