"""``python -m benchmarks <benchmark> [options]``: dispatch to one benchmark."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence


def _lookup(argv: Sequence[str]) -> int:
    from benchmarks.bench_lookup import main

    return main(argv)


def _peers(argv: Sequence[str]) -> int:
    from benchmarks.side_by_side import main

    return main(argv)


def _publish_floor(argv: Sequence[str]) -> int:
    from benchmarks.publish_floor import main

    return main(argv)


BENCHMARKS: dict[str, Callable[[Sequence[str]], int]] = {
    "lookup": _lookup, "peers": _peers, "publish-floor": _publish_floor,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [--json] [--help]", file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    return BENCHMARKS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
