"""The log format (server/log_setup.py): text lines, or one JSON object a
line with the access-log fields apart, from the real server process."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from server.log_setup import HTTP, JsonFormatter
from tests.reliability.harness import ServerProcess


def test_a_json_line_has_the_record_the_worker_and_the_traceback() -> None:
    logger = logging.getLogger("overlaystore.test-json")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(worker=2))
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("published %s@%s", "left-pad", "1.0.0")
        try:
            raise RuntimeError("disk on fire")
        except RuntimeError:
            logger.exception("could not save")
        logger.info("GET /x 200", extra={HTTP: {"method": "GET", "status": 200}})
    finally:
        logger.removeHandler(handler)
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "published left-pad@1.0.0" and first["level"] == "warning"
    assert first["logger"] == "overlaystore.test-json" and first["worker"] == 2
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert "RuntimeError: disk on fire" in second["exc"] and "exc" not in first
    assert third[HTTP] == {"method": "GET", "status": 200}


def test_the_server_logs_json_lines_when_asked(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv", None, extra_args=("--log-format", "json"))
    server.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/-/whoami", timeout=5)  # noqa: S310 - 127.0.0.1
        assert refused.value.code == 401
        refused.value.close()
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]
    assert any("overlaystore on http://" in line["message"] for line in lines)
    access = [line[HTTP] for line in lines if HTTP in line]
    assert {"method": "GET", "path": "/-/whoami", "status": 401} in [
        {k: a[k] for k in ("method", "path", "status")} for a in access]
    assert all(isinstance(a["ms"], float) and isinstance(a["bytes"], int) for a in access)
