"""Drive wrk: its Lua script, its command line, its output, and CPU shares.

One :func:`run` is one wrk process against one URL set. Besides wrk's own
figures it records how much CPU wrk and the server used over the run: the
machine has two cores, so a server that "loses" while wrk eats a whole core
is a different story from one that loses with a core to spare.

wrk prints rounded human units ("1.27k", "491.14KB", "8.48ms"); the parsers
below turn them back into plain numbers (req/s, bytes/s, milliseconds).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peer import cpu_seconds

#: wrk gives up on a response after this long and counts a timeout; its
#: default (2 s) is shorter than one huge packument from a slow peer under 8
#: connections, which would then show as errors instead of as slowness.
DEFAULT_TIMEOUT_S = 60


class WrkUnavailable(Exception):
    """wrk is not installed; the message says so."""


@dataclass(frozen=True)
class WrkOutput:
    """What wrk printed, in plain units."""

    requests: int
    duration_s: float
    requests_per_s: float
    transfer_bytes_per_s: float
    latency_ms: tuple[tuple[int, float], ...]  # (percentile, ms) from --latency
    errors_connect: int = 0
    errors_read: int = 0
    errors_write: int = 0
    errors_timeout: int = 0
    non_2xx_3xx: int = 0

    def percentile(self, pct: int) -> float | None:
        return dict(self.latency_ms).get(pct)

    @property
    def errors(self) -> int:
        return self.errors_connect + self.errors_read + self.errors_write + self.errors_timeout + self.non_2xx_3xx


@dataclass(frozen=True)
class WrkRun:
    """One run: wrk's figures plus the CPU shares (1.0 = one whole core)."""

    output: WrkOutput
    wall_s: float
    wrk_cpu: float
    server_cpu: float


# --- output parsing -----------------------------------------------------------

_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_BINARY_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}
_METRIC_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}

_SUMMARY = re.compile(r"^\s*(\d+) requests in ([\d.]+\w+), ([\d.]+\w*B) read\s*$", re.M)
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+[a-z]+)\s*$", re.M)
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+\w*B)\s*$", re.M)


def parse_time_ms(text: str) -> float:
    """``"8.48ms"`` → 8.48, ``"1.14s"`` → 1140.0, ``"611.86us"`` → 0.61186."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _TIME_UNITS[match[2]]


def parse_bytes(text: str) -> float:
    """``"491.14KB"`` → 502927.36 (wrk's byte units are binary), ``"567.25B"`` → 567.25."""
    match = re.fullmatch(r"([\d.]+)([KMGTP]?)B", text.strip())
    if match is None:
        raise ValueError(f"not a wrk byte count: {text!r}")
    return float(match[1]) * _BINARY_UNITS[match[2]]


def parse_metric(text: str) -> float:
    """``"1.27k"`` → 1270.0 (wrk's counts are decimal)."""
    match = re.fullmatch(r"([\d.]+)([kMGTP]?)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk count: {text!r}")
    return float(match[1]) * _METRIC_UNITS[match[2]]


def parse_output(text: str) -> WrkOutput:
    """Parse wrk's standard report (with or without ``--latency``)."""
    summary = _SUMMARY.search(text)
    rps = _RPS.search(text)
    transfer = _TRANSFER.search(text)
    if summary is None or rps is None or transfer is None:
        raise ValueError("not a wrk report:\n" + text)
    socket = _SOCKET.search(text)
    non_2xx = _NON_2XX.search(text)
    connect, read, write, timeout = (int(g) for g in socket.groups()) if socket else (0, 0, 0, 0)
    # A report where every request timed out prints 0.00us percentiles: no
    # latency was measured, which is not the same as zero latency.
    percentiles = tuple((round(float(p)), parse_time_ms(t)) for p, t in _PERCENTILE.findall(text))
    if percentiles and all(ms == 0.0 for _, ms in percentiles):
        percentiles = ()
    return WrkOutput(
        requests=int(summary[1]),
        duration_s=parse_time_ms(summary[2]) / 1000,
        requests_per_s=float(rps[1]),
        transfer_bytes_per_s=parse_bytes(transfer[1]),
        latency_ms=percentiles,
        errors_connect=connect,
        errors_read=read,
        errors_write=write,
        errors_timeout=timeout,
        non_2xx_3xx=int(non_2xx[1]) if non_2xx else 0,
    )


# --- Lua script ---------------------------------------------------------------


def lua_string(value: str) -> str:
    """A Lua double-quoted literal for ``value`` (bytes outside printable ASCII as ``\\ddd``)."""
    out = ['"']
    for byte in value.encode():
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03d}")
    out.append('"')
    return "".join(out)


def lua_script(paths: Sequence[str], headers: Sequence[tuple[str, str]] = ()) -> str:
    """The script for one scenario: its headers, and round-robin over ``paths``.

    With one path there is no ``request`` function, so wrk builds the request
    once and replays it (its fastest mode: what a reader of ordinary wrk
    figures expects); with several, each request takes the next path in turn.
    """
    if not paths:
        raise ValueError("wrk needs at least one path")
    lines = [f"-- generated by benchmarks/wrk.py: {len(paths)} path(s), {len(headers)} header(s)"]
    lines += [f"wrk.headers[{lua_string(name)}] = {lua_string(value)}" for name, value in headers]
    if len(paths) == 1:
        lines.append(f"wrk.path = {lua_string(paths[0])}")
    else:
        lines.append("local paths = {")
        lines += [f"  {lua_string(path)}," for path in paths]
        lines.append("}")
        lines.append("local i = 0")
        lines.append("request = function()")
        lines.append("  i = i % #paths + 1")
        lines.append("  return wrk.format(nil, paths[i])")
        lines.append("end")
    return "\n".join(lines) + "\n"


# --- running ------------------------------------------------------------------


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkUnavailable("wrk is not installed (Debian package: wrk)")
    return found


def version() -> str | None:
    """wrk's version line, or None without wrk."""
    try:
        done = subprocess.run([wrk_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (WrkUnavailable, OSError, subprocess.TimeoutExpired):
        return None
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else None


def command(base_url: str, script: Path, *, connections: int, duration_s: float, threads: int = 1,
            timeout_s: int = DEFAULT_TIMEOUT_S) -> list[str]:
    return [wrk_binary(), f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s}s",
            "--latency", "-s", str(script), base_url.rstrip("/") + "/"]


def run(base_url: str, paths: Sequence[str], *, headers: Sequence[tuple[str, str]] = (), connections: int,
        duration_s: float, server_pids: Sequence[int] = (), threads: int = 1) -> WrkRun:
    """Run wrk once and return its figures with wrk's and the server's CPU shares."""
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "scenario.lua"
        script.write_text(lua_script(paths, headers))
        argv = command(base_url, script, connections=connections, duration_s=duration_s, threads=threads)
        server_before = cpu_seconds(list(server_pids))
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # wait4 hands back the child's own rusage as it is reaped: wrk's CPU
        # time exactly, without racing /proc/<pid> going away at exit.
        stdout, stderr = _drain(process)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        server_after = cpu_seconds(list(server_pids))
        process.returncode = os.waitstatus_to_exitcode(status)
    text = stdout.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}: {stderr.decode(errors='replace').strip()}"
                           f" {text.strip()}")
    return WrkRun(output=parse_output(text), wall_s=wall, wrk_cpu=(usage.ru_utime + usage.ru_stime) / wall,
                  server_cpu=(server_after - server_before) / wall)


def _drain(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    # wrk's report is a few hundred bytes, written at exit; stderr only gets
    # a line on failure. Read stderr after stdout's EOF: neither pipe can fill.
    assert process.stdout is not None and process.stderr is not None
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    return stdout, stderr
