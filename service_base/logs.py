"""Log formats of both services: readable text or JSON lines, and one line per finished request.

A request line carries its fields in ``record.fields``: in text mode it prints as the bare JSON
object, in JSON mode merged into the record's usual fields, so the router's and the expert's lines
about one request can be joined on ``request_id``. Lines carry ids, timings and sizes only.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure", "log_request"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """The usual one-line text; request records print as their JSON fields alone."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is not None:
            return json.dumps({"ts": round(record.created, 6), "pid": record.process, **fields},
                              separators=(",", ":"), ensure_ascii=False, default=str)
        return super().format(record)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Replaces the root handlers with one stderr handler in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def log_request(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """One line for one finished request (INFO: a WARNING log level silences it)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("request finished", extra={"fields": {"event": "request", **fields}})
