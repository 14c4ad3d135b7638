"""The fake upstream: a corpus served as static files on 127.0.0.1.

Proxies under test fetch from it instead of a real registry, so no measurement
touches the network and a cold proxy's misses cost the same on every machine.
It answers like a registry for exactly the corpus:

* ``GET /<name>`` (a scoped name as ``%2f``, ``%2F`` or ``/``): the full
  packument, ``application/json``, tarball URLs pointing at this server;
* ``GET /<name>/-/<file>.tgz``: the tarball;
* anything else: 404 with a JSON body.

nginx serves it when installed (one worker: the upstream must not compete with
the peer for the two cores); otherwise a small aiohttp server in a subprocess
(``python -m benchmarks.static_upstream ROOT PORT``) with the same URLs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from types import TracebackType

from benchmarks.corpus import PLACEHOLDER_BASE, Corpus
from benchmarks.nginx_peer import TARBALL_LOCATION, find_nginx, main_config, not_found_location, start_nginx
from benchmarks.peer import free_port, process_tree, stop_process, wait_for_http

_ROOT = Path(__file__).resolve().parent.parent


class StaticUpstream:
    """Context manager: materialize the corpus under ``work``, serve it, stop on exit."""

    def __init__(self, corpus: Corpus, work: Path, *, prefer: str = "nginx") -> None:
        self.corpus = corpus
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nginx = find_nginx() if prefer == "nginx" else None
        self._nginx = nginx
        self.server = "nginx" if nginx else "aiohttp"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def www(self) -> Path:
        return self.work / "www"

    def __enter__(self) -> StaticUpstream:
        self.materialize()
        try:
            if self._nginx is not None:
                conf = self.work / "nginx.conf"
                conf.write_text(self._nginx_config(self._nginx))
                self._process = start_nginx(self._nginx, conf, self.work.resolve(), self.url)
            else:
                command = [sys.executable, "-m", "benchmarks.static_upstream", str(self.www.resolve()), str(self.port)]
                self._process = subprocess.Popen(command, cwd=_ROOT, stdin=subprocess.DEVNULL)
                wait_for_http(self.url + "/", timeout_s=30, process=self._process)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None

    def pids(self) -> list[int]:
        return process_tree(self._process.pid) if self._process is not None and self._process.poll() is None else []

    def materialize(self) -> None:
        """Packuments with tarball URLs on :attr:`url`; tarballs linked, not copied."""
        shutil.rmtree(self.www, ignore_errors=True)
        self.www.mkdir(parents=True)
        placeholder, url = PLACEHOLDER_BASE.encode(), self.url.encode()
        for name in self.corpus.names:
            target = self.www / "packuments" / f"{name}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.corpus.packument_file(name).read_bytes().replace(placeholder, url))
        (self.www / "tarballs").symlink_to(self.corpus.root.resolve() / "tarballs", target_is_directory=True)

    def _nginx_config(self, binary: str) -> str:
        www = self.www.resolve()
        return (
            main_config(binary, self.work.resolve(), workers=1)
            + "    sendfile on;\n"
            + "    types { application/json json; application/octet-stream tgz; }\n"
            + "    default_type application/octet-stream;\n"
            + "    server {\n"
            + f"        listen 127.0.0.1:{self.port};\n"
            + f"        root {www};\n"
            + "        error_page 404 @missing;\n"
            + f'        location ~ "{TARBALL_LOCATION}" {{ root {www / "tarballs"}; }}\n'
            # $uri is decoded (%2f and %2F → /), so every spelling of a scoped name finds its file
            + "        location / { try_files /packuments$uri.json =404; }\n"
            + not_found_location()
            + "    }\n"
            + "}\n"
        )


def serve_aiohttp(root: Path, port: int) -> None:
    """The fallback server: the same URLs as the nginx config, from ``root``."""
    from aiohttp import web

    base = root.resolve()
    not_found = {"error": "Not found"}

    async def handle(request: web.Request) -> web.StreamResponse:
        # raw_path: aiohttp keeps %2F encoded in .path, so decode it ourselves
        path = urllib.parse.unquote(request.raw_path.split("?", 1)[0])
        parts = path[1:].split("/")
        if request.method not in ("GET", "HEAD") or any(part in ("", ".", "..") for part in parts):
            return web.json_response(not_found, status=404)
        if "-" in parts[1:-1] and path.endswith(".tgz"):
            file, content_type = base / "tarballs" / path[1:], "application/octet-stream"
        else:
            file, content_type = base / "packuments" / f"{path[1:]}.json", "application/json"
        if not file.is_file():
            return web.json_response(not_found, status=404)
        return web.FileResponse(file, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    serve_aiohttp(Path(sys.argv[1]), int(sys.argv[2]))
