"""The "nginx static" peer: the bytes overlaystore serves, served by nginx.

The zero-logic limit of the comparison. :meth:`NginxPeer.prepare` copies from
a warmed overlaystore every corpus packument in both representations (tarball
URLs moved to this peer's address), pre-compresses each the way overlaystore
does (:func:`overlaystore.render.gzip_bytes`, so both send the same number of
bytes) and links the corpus tarballs; nginx then only picks a file:

* ``Accept`` containing ``application/vnd.npm.install-v1+json`` selects the
  abbreviated document (served with that content type), anything else the
  full one (``application/json``); ``Vary: Accept, Accept-Encoding``;
* ``gzip_static`` sends ``<file>.gz`` to clients accepting gzip;
* ``sendfile``, ``tcp_nopush``, ETag (``If-None-Match`` → 304) and keep-alive
  are nginx's own defaults or one switch away.

The module also holds what the static upstream shares: finding the binary and
the process-level config that lets nginx run unprivileged from a work folder.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.corpus import Corpus, url_path
from benchmarks.peer import Peer, PeerUnavailable, stop_process, wait_for_http
from overlaystore.render import gzip_bytes

#: same core count overlaystore gets in the comparison
WORKERS = 2
ABBREVIATED = "application/vnd.npm.install-v1+json"
_NOT_FOUND = '{"error":"Not found"}'
_PREPARE_THREADS = 8
# a packument URL path never contains "/-/"; a tarball path always does
TARBALL_LOCATION = r"^/(?:@[^/]+/)?[^/]+/-/[^/]+\.tgz$"
# nginx -V: the modules whose temp folders it creates at start-up
_TEMP_PATHS = {
    "client-body": ("client_body_temp_path", None),
    "proxy": ("proxy_temp_path", "http_proxy"),
    "fastcgi": ("fastcgi_temp_path", "http_fastcgi"),
    "uwsgi": ("uwsgi_temp_path", "http_uwsgi"),
    "scgi": ("scgi_temp_path", "http_scgi"),
}


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or where distributions put it (often off a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def main_config(binary: str, prefix: Path, *, workers: int) -> str:
    """Everything outside ``http {}`` plus the temp paths, all under ``prefix``.

    The compiled-in defaults (/var/lib/nginx, /run/nginx.pid) are neither
    writable unprivileged nor ours to touch, so each is pointed into ``prefix``.
    """
    lines = [
        "daemon off;",
        f"worker_processes {workers};",
        f"pid {prefix / 'nginx.pid'};",
        f"error_log {prefix / 'error.log'} warn;",
    ]
    if os.geteuid() == 0:
        # as root, workers would drop to "nobody" and could not read the work folder
        user = pwd.getpwuid(os.getuid()).pw_name
        lines.append(f"user {user} {grp.getgrgid(os.getgid()).gr_name};")
    lines += ["events { worker_connections 1024; }", "http {", "    access_log off;"]
    lines += [f"    {directive} {prefix / 'temp' / key};" for directive, key in _temp_directives(binary)]
    return "\n".join(lines) + "\n"


def _temp_directives(binary: str) -> list[tuple[str, str]]:
    try:
        built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.SubprocessError):
        built = ""
    directives = []
    for key, (directive, module) in _TEMP_PATHS.items():
        if module is not None and f"--without-{module}_module" in built:
            continue
        directives.append((directive, key))
    return directives


def start_nginx(binary: str, conf: Path, prefix: Path, url: str) -> subprocess.Popen[bytes]:
    """Check ``conf``, run nginx in the foreground, return once ``url`` answers."""
    # nginx resolves a relative -c against -p; make both absolute
    conf, prefix = conf.resolve(), prefix.resolve()
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    check = subprocess.run([binary, "-t", "-q", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True)
    if check.returncode != 0:
        raise PeerUnavailable(f"nginx rejects {conf}: {check.stderr.strip()[-400:]}")
    process = subprocess.Popen(
        [binary, "-c", str(conf), "-p", str(prefix)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        wait_for_http(url + "/", timeout_s=20, process=process)
    except PeerUnavailable as exc:
        stop_process(process)
        log = prefix / "error.log"
        tail = log.read_text(errors="replace").strip()[-400:] if log.exists() else ""
        raise PeerUnavailable(f"{exc}; {tail}") from exc
    return process


def not_found_location() -> str:
    return f"        location @missing {{ types {{}} default_type application/json; return 404 '{_NOT_FOUND}'; }}\n"


class NginxPeer(Peer):
    """nginx serving pre-rendered packuments and the corpus tarballs."""

    name = "nginx"
    is_proxy = False
    can_publish = False

    def __init__(self, work: Path | None = None) -> None:
        super().__init__(work)
        self._binary: str | None = None

    @property
    def www(self) -> Path:
        return self.work / "www"

    def setup(self, upstream_url: str) -> None:
        # nginx serves what prepare() copied; it never talks to the upstream
        self._binary = find_nginx()
        if self._binary is None:
            raise PeerUnavailable("nginx is not installed (Debian: apt-get install nginx-light)")
        self.work.mkdir(parents=True, exist_ok=True)

    def prepare(self, corpus: Corpus, source_base_url: str) -> None:
        """Copy every corpus packument (both variants) from a warm overlaystore at
        ``source_base_url``, pointed at this peer, pre-compressed; link the tarballs."""
        source = source_base_url.rstrip("/")
        for variant in ("full", "abbreviated"):
            shutil.rmtree(self.www / variant, ignore_errors=True)
        self.www.mkdir(parents=True, exist_ok=True)
        tarballs = self.www / "tarballs"
        if tarballs.is_symlink():
            tarballs.unlink()
        elif tarballs.exists():
            shutil.rmtree(tarballs)
        tarballs.symlink_to(corpus.root.resolve() / "tarballs", target_is_directory=True)
        jobs = [(name, variant) for name in corpus.names for variant in ("full", "abbreviated")]
        with ThreadPoolExecutor(_PREPARE_THREADS) as pool:
            for _ in pool.map(lambda job: self._copy(source, *job), jobs):
                pass

    def _copy(self, source: str, name: str, variant: str) -> None:
        accept = ABBREVIATED if variant == "abbreviated" else "application/json"
        request = urllib.request.Request(source + url_path(name), headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body = response.read()
        except OSError as exc:
            raise PeerUnavailable(f"cannot copy {name} ({variant}) from {source}: {exc}") from exc
        body = body.replace(source.encode(), self.base_url.encode())
        target = self.www / variant / f"{name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
        target.with_name(target.name + ".gz").write_bytes(gzip_bytes(body))

    def config(self) -> str:
        assert self._binary is not None, "setup() first"
        www = self.www.resolve()
        vary = 'add_header Vary "Accept, Accept-Encoding";'
        return (
            main_config(self._binary, self.work.resolve(), workers=WORKERS)
            + "    sendfile on;\n"
            + "    tcp_nopush on;\n"
            + "    gzip off;\n"
            + "    gzip_static on;\n"
            + "    etag on;\n"
            + "    types { application/json json; application/octet-stream tgz; }\n"
            + "    default_type application/octet-stream;\n"
            + "    map $http_accept $variant {\n"
            + "        default full;\n"
            + '        "~application/vnd\\.npm\\.install-v1\\+json" abbreviated;\n'
            + "    }\n"
            + "    server {\n"
            + f"        listen 127.0.0.1:{self.port};\n"
            + f"        root {www};\n"
            + "        error_page 404 @missing;\n"
            + f'        location ~ "{TARBALL_LOCATION}" {{ root {www / "tarballs"}; }}\n'
            # $uri is decoded (%2f → /), so a scoped name lands in its scope folder
            + "        location / { rewrite ^ /$variant$uri.json last; }\n"
            + f"        location /full/ {{ internal; types {{}} default_type application/json; {vary} }}\n"
            + f"        location /abbreviated/ {{ internal; types {{}} default_type {ABBREVIATED}; {vary} }}\n"
            + not_found_location()
            + "    }\n"
            + "}\n"
        )

    def start(self) -> None:
        if self._binary is None:
            raise PeerUnavailable("nginx: setup() was not called")
        if not (self.www / "full").is_dir():
            raise PeerUnavailable("nginx: prepare() was not called, nothing to serve")
        conf = self.work / "nginx.conf"
        conf.write_text(self.config())
        self._process = start_nginx(self._binary, conf, self.work.resolve(), self.base_url)

