"""The side-by-side command line: which peers, and what a run is called."""

from __future__ import annotations

import pytest

from benchmarks.side_by_side import DEFAULT_PEERS, _mode, parse_args


def test_defaults_are_the_issue_peers_and_a_full_run() -> None:
    args = parse_args([])
    assert tuple(args.peer_names) == DEFAULT_PEERS == ("overlaystore", "verdaccio", "nginx")
    assert _mode(args) == "full"


@pytest.mark.parametrize("argv", [["--only", "packument-mix"], ["--peers", "overlaystore,nginx,aiohttp"],
                                  ["--workers", "2"]])
def test_a_subset_is_a_partial_run(argv: list[str]) -> None:
    assert _mode(parse_args(argv)) == "partial"


def test_quick_wins_over_partial() -> None:
    assert _mode(parse_args(["--quick", "--only", "tarball"])) == "quick"


def test_unknown_peer_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--peers", "overlaystore,cnpm"])
