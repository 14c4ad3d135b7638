"""Where the server's log lines go, and in which shape.

One place for the whole process (the single server, the supervisor and each
worker): ``log_format = "text"`` writes the familiar one-line form,
``"json"`` one JSON object a line for log pipelines (Loki, Elasticsearch,
CloudWatch): ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``worker`` (with several workers), the traceback as ``exc`` when there is
one, and for an access-log line its fields as ``http`` (method, path,
status, bytes, ms, outcome), so nothing has to parse the message.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from .config import Config

LOG_FORMATS = ("text", "json")
#: the attribute an access-log record carries its fields in (``extra={HTTP: {...}}``)
HTTP = "http"

_TEXT = "%(asctime)s %(levelname)s %(name)s{tag}: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
        fields = getattr(record, HTTP, None)
        if isinstance(fields, dict):
            line[HTTP] = fields
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(config: Config, worker: int | None = None) -> None:
    """Set the root logger up for ``config`` (its level and format); a worker
    says which one it is."""
    handler = logging.StreamHandler()
    if config.server.log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        handler.setFormatter(logging.Formatter(_TEXT.format(tag="" if worker is None else f" [worker {worker}]")))
    # A no-op when the root logger already has handlers (an embedding program, pytest).
    logging.basicConfig(level=config.server.log_level.upper(), handlers=[handler])


__all__ = ["HTTP", "LOG_FORMATS", "JsonFormatter", "configure_logging"]
