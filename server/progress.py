"""Progress bars for long command-line runs (cache GC, import, backup).

The library reports ``progress(phase, done, total)``; this draws one tqdm
bar per phase on stderr, when stderr is a terminal or ``--progress`` asks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

ProgressCallback = Callable[[str, int, int], None]


@contextmanager
def progress_bars(
    args: argparse.Namespace, labels: Mapping[str, tuple[str, str]] | None = None
) -> Iterator[ProgressCallback | None]:
    """A callback drawing a bar per phase, or None when no bar is wanted.
    ``labels`` maps a phase to its (description, unit)."""
    if not (getattr(args, "progress", False) or sys.stderr.isatty()):
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            desc, unit = (labels or {}).get(phase, (phase, "items"))
            bar = bars[phase] = tqdm(
                total=total or None, desc=desc, unit=f" {unit}", file=sys.stderr, leave=False
            )
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        for bar in bars.values():
            bar.close()
