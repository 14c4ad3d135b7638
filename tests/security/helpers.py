"""Shared checks for the hostile-input and security suites.

* :func:`expect_4xx` / :func:`expect_not_5xx`: the npm-style error contract
  (``{"error": str}``, JSON, no traceback).
* :class:`Tree`: a snapshot of every file under a directory (path -> digest),
  so "nothing was written" is one comparison.
* :func:`raw_request`: an HTTP/1.1 request sent byte-exact over a socket, for
  paths that a client library would normalise (``..``, backslashes, NUL).
* :class:`Tally`: counts inputs and statuses per endpoint for the results file.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

#: Signs of a leaked stack trace or internal detail in a response body.
_LEAKS = (b"Traceback (most recent call last)", b'File "/', b'.py", line ', b"site-packages/")


def check_error_body(status: int, content_type: str, body: bytes) -> str:
    """The npm error contract for a >= 400 answer; returns the message."""
    for leak in _LEAKS:
        assert leak not in body, f"{status}: the body leaks {leak!r}: {body[:500]!r}"
    assert content_type == "application/json", f"{status} {content_type}: {body[:300]!r}"
    doc = orjson.loads(body)
    assert isinstance(doc, dict), body[:300]
    message = doc.get("error")
    assert isinstance(message, str) and message, body[:300]
    return message


async def expect_4xx(resp: ClientResponse, *, context: object = "") -> int:
    """Assert ``resp`` is a 4xx with an npm-style body; returns the status."""
    body = await resp.read()
    assert 400 <= resp.status < 500, f"{context}: expected a 4xx, got {resp.status}: {body[:500]!r}"
    check_error_body(resp.status, resp.content_type, body)
    return resp.status


async def expect_not_5xx(resp: ClientResponse, *, context: object = "") -> int:
    """Assert ``resp`` is not a 5xx (and, if an error, npm-shaped); returns the status."""
    body = await resp.read()
    assert resp.status < 500, f"{context}: got {resp.status}: {body[:500]!r}"
    if resp.status >= 400:
        check_error_body(resp.status, resp.content_type, body)
    else:
        for leak in _LEAKS[:1]:
            assert leak not in body
    return resp.status


def as_body(data: bytes | str) -> io.BytesIO:
    """A request body for aiohttp's client (which warns about large raw bytes)."""
    return io.BytesIO(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)


async def assert_responsive(client: TestClient, *, within: float = 2.0) -> None:
    """``/-/ping`` answers 200 within ``within`` seconds."""
    started = time.monotonic()
    resp = await asyncio.wait_for(client.get("/-/ping"), within)
    assert resp.status == 200
    await resp.read()
    assert time.monotonic() - started < within


@dataclass(frozen=True)
class Tree:
    """Every file under ``root`` with its stat signature (size, mtime, inode):
    a write in place changes the mtime, an atomic replace the inode."""

    root: Path
    files: dict[str, tuple[int, int, int]]

    @classmethod
    def of(cls, root: Path) -> Tree:
        files: dict[str, tuple[int, int, int]] = {}
        if root.exists():
            for path in root.rglob("*"):
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if not path.is_dir() or path.is_symlink():
                    files[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, st.st_ino)
        return cls(root, files)

    def diff(self, other: Tree) -> dict[str, list[str]]:
        before, after = self.files, other.files
        return {
            "added": sorted(set(after) - set(before)),
            "removed": sorted(set(before) - set(after)),
            "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
        }

    def assert_unchanged(self, context: object = "") -> None:
        now = Tree.of(self.root)
        delta = self.diff(now)
        assert not any(delta.values()), f"{context}: files were written: {delta}"


def package_entries(published: Path) -> list[str]:
    """Names of package directories in the published store (hidden entries excluded)."""
    if not published.exists():
        return []
    out = []
    for entry in published.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.name.startswith("@") and entry.is_dir():
            out.extend(f"{entry.name}/{sub.name}" for sub in entry.iterdir())
        else:
            out.append(entry.name)
    return sorted(out)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


async def raw_request(
    host: str,
    port: int,
    method: str,
    target: str | bytes,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
) -> RawResponse:
    """Send one request byte-exact (``target`` is not normalised or encoded)
    with ``Connection: close`` and read the whole answer."""
    target_bytes = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", f"Host: {host}:{port}".encode()]
    all_headers = {"Connection": "close", **(headers or {})}
    if body or method in ("PUT", "POST"):
        all_headers.setdefault("Content-Length", str(len(body)))
    lines += [f"{k}: {v}".encode("latin-1") for k, v in all_headers.items()]
    payload = b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    raw = await asyncio.wait_for(exchange(), timeout)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete HTTP answer: {raw[:300]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return RawResponse(status, parsed, rest)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


@dataclass
class Tally:
    """Inputs tried and statuses seen, per endpoint."""

    endpoints: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, endpoint: str, status: int | str) -> None:
        self.endpoints.setdefault(endpoint, Counter())[str(status)] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            name: {"inputs": sum(c.values()), "statuses": dict(sorted(c.items())),
                   "server_errors": sum(n for s, n in c.items() if s.isdigit() and int(s) >= 500)}
            for name, c in sorted(self.endpoints.items())
        }
