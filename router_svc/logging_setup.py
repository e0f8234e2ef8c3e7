"""The router's logging: the shared formats (`service_base.logs`) and its per-request logger.

Request lines go to the ``router_svc.requests`` logger; prompts and outputs appear in them only
with ``--log-prompts``. A writer thread (``service_base.logs``) writes them, so the event loop that
finishes a request never waits on stderr.
"""
from __future__ import annotations

import logging
from typing import Any

from service_base.logs import JsonFormatter, TextFormatter, configure, flush, shutdown
from service_base.logs import log_request as _log_request

__all__ = ["REQUEST_LOGGER", "JsonFormatter", "TextFormatter", "configure", "flush", "log_request", "request_log",
           "shutdown"]

REQUEST_LOGGER = "router_svc.requests"
request_log = logging.getLogger(REQUEST_LOGGER)


def log_request(fields: dict[str, Any]) -> None:
    """One line for one finished Generate request (INFO: ``--log-level WARNING`` silences it)."""
    _log_request(request_log, fields)
