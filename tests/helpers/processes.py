"""Finding a process's children by what they run (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def children_running(parent: int, marker: bytes) -> list[int]:
    """The pids of ``parent``'s children whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if int(stat.rpartition(")")[2].split()[1]) == parent and marker in cmdline:
            found.append(int(entry))
    return found
