"""The "aiohttp" peer: the bytes nginx serves, served by a bare aiohttp app.

Where a Python server on aiohttp stops, whatever it does per request: one
process on uvloop, one route, no middleware, every body held in a dict,
large ones written in drained slices (:func:`server.bodies.send_body`, as
overlaystore does). It answers like the nginx peer: ``Accept`` picks the full
or the abbreviated document, ``Accept-Encoding: gzip`` the ``.gz`` file, a
matching ``If-None-Match`` a 304. Between nginx and this peer lies the HTTP
layer; between this peer and overlaystore, overlaystore's own work per
request (its routing, access rules, metrics and conditional checks).

It serves the nginx peer's folder, tarball URLs and all (they name nginx's
address), so it takes part in the wrk scenarios only, not in ``npm ci``.

    python -m benchmarks.aiohttp_peer <www folder> <port>
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import xxhash
from aiohttp import web

from benchmarks.nginx_peer import ABBREVIATED
from benchmarks.peer import Peer, PeerUnavailable, wait_for_http
from server.serving import LISTEN_BACKLOG, new_event_loop
from server.bodies import send_body

_REPO = Path(__file__).resolve().parent.parent


class AiohttpPeer(Peer):
    """A bare aiohttp app serving the nginx peer's prepared folder."""

    name = "aiohttp"
    is_proxy = False
    can_publish = False
    installs = False

    def __init__(self, www: Path, work: Path | None = None) -> None:
        super().__init__(work)
        self.www = www

    def setup(self, upstream_url: str) -> None:
        # serves what the nginx peer prepared; never talks to the upstream
        if not (self.www / "full").is_dir():
            raise PeerUnavailable(f"{self.www} holds no prepared documents (the nginx peer prepares them)")

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the aiohttp peer is already running")
        command = [sys.executable, "-m", "benchmarks.aiohttp_peer", str(self.www.resolve()), str(self.port)]
        self._process = subprocess.Popen(command, cwd=_REPO, stdin=subprocess.DEVNULL)
        try:
            wait_for_http(f"{self.base_url}/-/ping", timeout_s=120, process=self._process)
        except PeerUnavailable:
            self.stop()
            raise


# --- the server process ---------------------------------------------------------

#: (body, ETag) by URL path
Files = dict[str, tuple[bytes, str]]


def load(www: Path) -> tuple[dict[str, Files], Files]:
    """Every document of each variant and every tarball under ``www``, by the
    URL path that asks for it (a scoped name's ``/`` as nginx decodes ``%2f``)."""
    docs: dict[str, Files] = {}
    for variant in ("full", "abbreviated"):
        files: Files = {}
        for path in (www / variant).rglob("*.json*"):
            relative = path.relative_to(www / variant).as_posix()
            url = "/" + relative.removesuffix(".gz").removesuffix(".json") + (".gz" if path.suffix == ".gz" else "")
            data = path.read_bytes()
            files[url] = (data, f'"{xxhash.xxh3_64_hexdigest(data)}"')
        docs[variant] = files
    tarballs: Files = {}
    for path in (www / "tarballs").rglob("*.tgz"):
        data = path.read_bytes()
        tarballs["/" + path.relative_to(www / "tarballs").as_posix()] = (data, f'"{xxhash.xxh3_64_hexdigest(data)}"')
    return docs, tarballs


def make_app(www: Path) -> web.Application:
    docs, tarballs = load(www)

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/-/ping":
            return web.json_response({})
        headers = {"Vary": "Accept, Accept-Encoding"}
        if "/-/" in path:
            found = tarballs.get(path)
            headers["Content-Type"] = "application/octet-stream"
        else:
            abbreviated = ABBREVIATED in request.headers.get("Accept", "")
            files = docs["abbreviated" if abbreviated else "full"]
            found = None
            if "gzip" in request.headers.get("Accept-Encoding", ""):
                found = files.get(path + ".gz")
                if found is not None:
                    headers["Content-Encoding"] = "gzip"
            found = found or files.get(path)
            headers["Content-Type"] = ABBREVIATED if abbreviated else "application/json"
        if found is None:
            return web.json_response({"error": "Not found"}, status=404)
        body, etag = found
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return await send_body(request, body, headers)

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    return app


def main(argv: list[str]) -> int:
    www, port = Path(argv[0]), int(argv[1])
    # wrk drops its connections mid-response when a run ends: not worth a traceback each
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    loop = new_event_loop()
    try:
        web.run_app(make_app(www), host="127.0.0.1", port=port, access_log=None, print=None,
                    backlog=LISTEN_BACKLOG, loop=loop)
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
