"""Slow and idle clients against a real server process on 127.0.0.1.

Three kinds of hostile connection, all at once:

* **slow-loris**: a request's headers sent a byte at a time, never finished;
* **idle**: a connection opened and never used;
* **slow body**: complete headers announcing a body that trickles (and stops).

While they are open, ordinary requests (on fresh connections) must be
answered promptly. After the configured bounds, every hostile connection
must have been closed by the server (a stalled body answered 408 first) and
the server's open descriptors must be back where they started.

The limits (README, Configuration; ``server.serving.run_options``):

* ``keepalive_timeout`` (default 75 s): an idle keep-alive connection is
  closed after it, and it is also all a client gets to send a request's
  headers: aiohttp's keep-alive timer runs from the connection's start (or
  its last response) and is not reset by partial data. aiohttp has no
  separate header-read timeout.
* ``body_timeout`` (default 60 s): a body that stalls that long between two
  chunks gets 408 with ``Connection: close``; aiohttp itself has no body
  timeout. aiohttp then reads and drops what is left of the body for up to
  its ``lingering_time`` (10 s) before it closes the connection.
* Not bounded by the server: the number of connections (the descriptor
  limit, ``ulimit -n``, is). A reverse proxy with per-client connection
  limits is the place for that. Connects are queued up to the listen backlog
  (1024, capped by net.core.somaxconn); a burst beyond it waits for the
  client's SYN retries (seconds), and a client that then sends nothing may
  never be accepted at all.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.harness import ServerProcess, percentile

from .conftest import Results

#: aiohttp's lingering_time: how long it drains an unread body after answering.
LINGERING_S = 10.0
FAST_LIMITS = """\
keepalive_timeout = "2s"
body_timeout = "2s"
[auth]
bcrypt_rounds = 4
"""


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Hostile:
    kind: str
    #: Hang up as soon as an answer is complete (as a client would), instead
    #: of waiting for the server to close the connection.
    hang_up_on_answer: bool = False
    opened: float = field(default_factory=time.monotonic)
    connect_s: float = 0.0
    answered_after: float | None = None
    closed_after: float | None = None
    answer: bytes = b""
    error: str | None = None


async def _watch_close(conn: Hostile, reader: asyncio.StreamReader, deadline: float) -> None:
    try:
        while time.monotonic() < deadline:
            data = await asyncio.wait_for(reader.read(4096), max(0.01, deadline - time.monotonic()))
            if not data:
                break
            conn.answer += data
            head, sep, body = conn.answer.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if sep and conn.answered_after is None and length is not None and len(body) >= length:
                conn.answered_after = time.monotonic() - conn.opened
                if conn.hang_up_on_answer:
                    break
        else:
            return
    except (TimeoutError, asyncio.TimeoutError):
        return
    except (ConnectionError, OSError) as exc:
        conn.error = type(exc).__name__
    conn.closed_after = time.monotonic() - conn.opened


async def _connect(port: int, conn: Hostile, budget: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float]:
    """Connect, and start the connection's clock once it is established (a
    flood of connects overflows the listen backlog: some are only accepted
    after SYN retries, seconds later). Returns the connection's deadline."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn.opened = time.monotonic()
    conn.connect_s = conn.opened - started
    return reader, writer, conn.opened + budget


async def _slowloris(port: int, conn: Hostile, budget: float, interval: float) -> None:
    reader, writer, deadline = await _connect(port, conn, budget)
    watcher = asyncio.create_task(_watch_close(conn, reader, deadline))
    try:
        writer.write(b"GET /-/ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while time.monotonic() < deadline and not watcher.done():
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(interval)
    except (ConnectionError, OSError):
        pass
    finally:
        await watcher
        writer.close()


async def _idle(port: int, conn: Hostile, budget: float) -> None:
    reader, writer, deadline = await _connect(port, conn, budget)
    await _watch_close(conn, reader, deadline)
    writer.close()


async def _slow_body(port: int, conn: Hostile, budget: float, interval: float, stall_after: int) -> None:
    reader, writer, deadline = await _connect(port, conn, budget)
    watcher = asyncio.create_task(_watch_close(conn, reader, deadline))
    try:
        writer.write(b"PUT /-/user/org.couchdb.user:slow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        sent = 0
        while time.monotonic() < deadline and not watcher.done():
            if sent < stall_after:
                writer.write(b" ")
                await writer.drain()
                sent += 1
            await asyncio.sleep(interval)
    except (ConnectionError, OSError):
        pass
    finally:
        await watcher
        writer.close()


async def _normal_requests(url: str, count: int, spread: float) -> tuple[list[float], list[int]]:
    latencies: list[float] = []
    statuses: list[int] = []
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(force_close=True)  # a fresh connection each time: accept() must keep up
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for i in range(count):
            path = ("/-/ping", "/left-pad", "/-/whoami", "/-/v1/search?text=x")[i % 4]
            started = time.monotonic()
            async with session.get(url + path) as resp:
                await resp.read()
                statuses.append(resp.status)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(spread / count)
    return latencies, statuses


async def _siege(server: ServerProcess, *, slow: int, idle: int, bodies: int, hold: float, bound: float,
                 normal: int, wait_for_lingering: bool) -> dict[str, Any]:
    assert server.pid is not None
    fds_before = _open_fds(server.pid)
    budget = hold + bound + (LINGERING_S if wait_for_lingering else 0) + 3
    conns = [Hostile("slowloris") for _ in range(slow)] + [Hostile("idle") for _ in range(idle)] + \
            [Hostile("slow body", hang_up_on_answer=not wait_for_lingering) for _ in range(bodies)]
    tasks = []
    for conn in conns:
        if conn.kind == "slowloris":
            tasks.append(_slowloris(server.port, conn, budget, interval=0.2))
        elif conn.kind == "idle":
            tasks.append(_idle(server.port, conn, budget))
        else:
            # A byte every 0.2 s for a while (a slow upload keeps going), then nothing.
            tasks.append(_slow_body(server.port, conn, budget, interval=0.2, stall_after=int(hold / 0.2)))
    hostile = asyncio.gather(*tasks)
    await asyncio.sleep(0.5)  # all of them connected and trickling
    fds_under_siege = _open_fds(server.pid)
    latencies, statuses = await _normal_requests(server.url, normal, spread=hold)
    await hostile
    # Every hostile connection was closed by the server within its bound.
    still_open = [c for c in conns if c.closed_after is None]
    assert still_open == [], f"{len(still_open)} hostile connections outlived the limits: {still_open[:3]}"
    by_kind: dict[str, list[float]] = {}
    for c in conns:
        assert c.closed_after is not None
        by_kind.setdefault(c.kind, []).append(c.closed_after)
    for c in conns:
        if c.kind == "slow body":
            assert c.answer.startswith(b"HTTP/1.1 408"), c.answer[:120]
        else:
            assert c.answer == b"" or c.answer.startswith(b"HTTP/1.1 4"), c.answer[:120]
    await asyncio.sleep(0.5)
    fds_after = _open_fds(server.pid)
    assert fds_after <= fds_before + 2, (fds_before, fds_under_siege, fds_after)
    assert all(s in (200, 401, 404) for s in statuses), statuses
    return {
        "hostile_connections": len(conns),
        "slowloris": slow, "idle": idle, "slow_bodies": bodies,
        "normal_requests": len(statuses),
        "normal_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "normal_p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "normal_max_ms": round(max(latencies) * 1000, 1),
        "closed_after_s": {k: [round(min(v), 2), round(max(v), 2)] for k, v in by_kind.items()},
        "max_connect_s": round(max(c.connect_s for c in conns), 2),
        "slow_body_answered_408_after_s": [round(min(a), 2), round(max(a), 2)] if (
            a := [c.answered_after for c in conns if c.kind == "slow body" and c.answered_after is not None]) else None,
        "server_fds": {"before": fds_before, "under_siege": fds_under_siege, "after": fds_after},
    }


@pytest.fixture
def fast_limits_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = ServerProcess(tmp_path / "srv", None, config=FAST_LIMITS)
    server.start()
    yield server
    server.stop()


async def test_slow_and_idle_clients_are_cut_and_do_not_block_others(
    fast_limits_server: ServerProcess, security_results: Results
) -> None:
    figures = await _siege(fast_limits_server, slow=100, idle=100, bodies=20, hold=1.0, bound=2.0, normal=40,
                           wait_for_lingering=False)
    assert figures["normal_max_ms"] < 1000, figures
    # The bounds hold: headers and idle connections cut after ~2 s (the
    # keep-alive timer, run from the connection's start); a stalled body
    # answered 408 ~2 s after its last byte (the slow suite also waits for
    # the close that follows the lingering time).
    closed = figures["closed_after_s"]
    assert closed["slowloris"][1] < 2.0 + 1.0 and closed["idle"][1] < 2.0 + 1.0, closed
    assert figures["slow_body_answered_408_after_s"][1] < 1.0 + 2.0 + 1.0, figures
    security_results.record("slow_clients", figures)
    security_results.detail("slow/idle connections held against the server", figures["hostile_connections"],
                            f"normal requests p99 {figures['normal_p99_ms']} ms; all cut within the limits")


@pytest.mark.slow
async def test_many_slow_clients_slow(tmp_path: Path, security_results: Results) -> None:
    server = ServerProcess(tmp_path / "srv", None, config=FAST_LIMITS.replace('"2s"', '"5s"'))
    server.start()
    try:
        # 1000 connects at once: within the listen backlog (server.serving.LISTEN_BACKLOG);
        # beyond it the kernel drops handshakes and clients wait for SYN retries.
        figures = await _siege(server, slow=450, idle=450, bodies=100, hold=4.0, bound=5.0, normal=200,
                               wait_for_lingering=True)
    finally:
        server.stop()
    assert figures["normal_p99_ms"] < 1000, figures
    security_results.record("slow_clients_many", figures)
    security_results.detail("slow/idle connections held (slow suite)", figures["hostile_connections"],
                            f"normal requests p99 {figures['normal_p99_ms']} ms")


@pytest.mark.slow
async def test_the_default_limits_cut_a_slowloris(tmp_path: Path, security_results: Results) -> None:
    """With the shipped defaults (75 s, 60 s), in real time."""
    server = ServerProcess(tmp_path / "srv", None)
    server.start()
    try:
        conns = [Hostile("slowloris"), Hostile("idle"), Hostile("slow body")]
        await asyncio.gather(
            _slowloris(server.port, conns[0], 85, interval=1.0),
            _idle(server.port, conns[1], 85),
            _slow_body(server.port, conns[2], 85, interval=1.0, stall_after=5),
        )
    finally:
        server.stop()
    slowloris, idle, body = (c.closed_after for c in conns)
    assert slowloris is not None and 74 <= slowloris <= 80, slowloris
    assert idle is not None and 74 <= idle <= 80, idle
    # 5 s of trickle, 60 s of silence, then 408 and up to 10 s of lingering.
    assert body is not None and 64 <= body <= 5 + 60 + LINGERING_S + 2, body
    assert conns[2].answer.startswith(b"HTTP/1.1 408"), conns[2].answer[:80]
    security_results.record("default_limits_s", {"slowloris": round(slowloris, 1), "idle": round(idle, 1),
                                                 "stalled_body": round(body, 1)})


def test_the_limits_are_configurable_and_reach_aiohttp(tmp_path: Path) -> None:
    from server.serving import run_options
    from server.config_file import ConfigError, load_config

    default = load_config(None, env={}, overrides={}, discover_upstream=False)
    assert (default.server.keepalive_timeout_s, default.server.body_timeout_s) == (75.0, 60.0)
    options = run_options(default)
    assert (options["keepalive_timeout"], options["backlog"]) == (75.0, 1024)
    path = tmp_path / "c.toml"
    path.write_text('keepalive_timeout = "10s"\nbody_timeout = 5\n')
    config = load_config(path, env={}, overrides={}, discover_upstream=False)
    assert (config.server.keepalive_timeout_s, config.server.body_timeout_s) == (10.0, 5.0)
    assert run_options(config)["keepalive_timeout"] == 10.0
    for bad in ('keepalive_timeout = 0\n', 'body_timeout = "soon"\n'):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_config(path, env={}, overrides={}, discover_upstream=False)
