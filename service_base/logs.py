"""Log formats of both services: readable text or JSON lines, and one line per finished request.

A request line carries its fields in ``record.fields``: in text mode it prints as the bare JSON
object, in JSON mode merged into the record's usual fields, so the router's and the expert's lines
about one request can be joined on ``request_id``. Lines carry ids, timings and sizes only.

Records are written by a thread, not by the code that logs them: ``configure`` puts a
``QueueHandler`` on the root logger and a ``QueueListener`` thread owns the stream. Every finished
request logs a line from the event loop, and a write to a slow or full stderr pipe (a busy log
collector, a terminal scrolled back) would stall every stream in the process; handing a record to a
queue costs a lock and an append. ``flush`` waits until the thread has written everything queued;
``shutdown`` (also run at exit) flushes and stops the thread.
"""
from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
from typing import Any

__all__ = ["JsonFormatter", "TextFormatter", "configure", "flush", "log_request", "shutdown"]


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


class _InProcessQueueHandler(logging.handlers.QueueHandler):
    """Hands the record itself to the writer thread, message merged with its arguments.

    The standard ``prepare`` formats the record with a plain formatter and drops ``exc_info``, as a
    record bound for another process must; in one process the record can travel whole, so the
    stream's own formatter (JSON's ``exc`` key, the text layout) still sees everything.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()  # arguments may change after the call; the text may not
        record.args = None
        return record


class _Writer:
    """The queue and the thread that writes the records queued on it."""

    def __init__(self, handler: logging.Handler) -> None:
        self.queue: queue.Queue[logging.LogRecord] = queue.Queue()
        self.listener = logging.handlers.QueueListener(self.queue, handler, respect_handler_level=True)
        self.handler = handler
        self.listener.start()

    def flush(self) -> None:
        self.queue.join()  # the listener marks each record done once its handler has written it
        self.handler.flush()

    def stop(self) -> None:
        self.listener.stop()  # writes what is queued, then ends the thread
        self.handler.flush()


_writer: _Writer | None = None


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Replaces the root handlers with a queue to a writer thread for stderr, in ``fmt`` ("text" or "json")."""
    global _writer
    shutdown()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _writer = _Writer(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_InProcessQueueHandler(_writer.queue))
    root.setLevel(level)


def flush() -> None:
    """Waits until every record logged so far has been written (a no-op before ``configure``)."""
    if _writer is not None:
        _writer.flush()


def shutdown() -> None:
    """Writes what is queued and stops the writer thread; logging goes nowhere until ``configure`` again."""
    global _writer
    writer, _writer = _writer, None
    if writer is not None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, _InProcessQueueHandler) and handler.queue is writer.queue:
                root.removeHandler(handler)
        writer.stop()


atexit.register(shutdown)


def log_request(logger: logging.Logger, fields: dict[str, Any]) -> None:
    """One line for one finished request (INFO: a WARNING log level silences it)."""
    if logger.isEnabledFor(logging.INFO):
        logger.info("request finished", extra={"fields": {"event": "request", **fields}})
