"""One structured line per request: method, path, status, bytes, ms, cache
outcome. Runs after the response is sent (aiohttp's access-logger hook), so
the byte count is what went out. Secrets never reach it: no headers are
logged, and the token in a logout or token-revoke path is redacted."""

from __future__ import annotations

import logging
import re

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from .keys import OUTCOME
from .log_setup import HTTP

_SECRET_PATHS = re.compile(r"^(/-/user/token/|/-/npm/v1/tokens/token/)[^/?]+")


def redact(path: str) -> str:
    """``path`` with any secret path segment replaced."""
    return _SECRET_PATHS.sub(r"\1<redacted>", path)


def log_request(logger: logging.Logger, method: str, path: str, status: int, body_bytes: int,
                seconds: float, outcome: str) -> None:
    """The one access-log line (aiohttp's requests and the hit path's); its
    fields also travel on the record, for the JSON log format."""
    path, ms = redact(path), round(seconds * 1000, 1)
    fields = {"method": method, "path": path, "status": status, "bytes": body_bytes, "ms": ms, "outcome": outcome}
    logger.info("%s %s %d %dB %.1fms %s", method, path, status, body_bytes, ms, outcome, extra={HTTP: fields})


class AccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        outcome = request.get(OUTCOME, "-") if hasattr(request, "get") else "-"
        log_request(self.logger, request.method, request.rel_url.path, response.status, response.body_length,
                    time, outcome)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
