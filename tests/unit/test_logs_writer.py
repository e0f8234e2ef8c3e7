"""Log records are written by a thread: the code that logs (the event loop) never waits on the
stream, every line still arrives whole, and what is queued is written before the process ends."""
from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading

import pytest

from service_base import logs


@pytest.fixture
def root_logging(monkeypatch):
    """Restores the root logger's handlers and level after a test that calls ``logs.configure``."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield monkeypatch
    logs.shutdown()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_request_lines_arrive_complete_and_in_order(root_logging) -> None:
    stream = io.StringIO()
    root_logging.setattr(sys, "stderr", stream)
    logs.configure("INFO", "json")
    logger = logging.getLogger("test.requests")
    for index in range(200):
        logs.log_request(logger, {"request_id": f"r{index}", "status": "OK", "frames": index})
    logging.getLogger("test").error("failed: %s", "boom", exc_info=ValueError("bad"))
    logs.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["request_id"] for line in lines[:200]] == [f"r{i}" for i in range(200)]
    assert lines[199] | {"ts": 0, "pid": 0} == {"ts": 0, "level": "INFO", "logger": "test.requests",
                                                "msg": "request finished", "pid": 0, "event": "request",
                                                "request_id": "r199", "status": "OK", "frames": 199}
    # The record travels whole: the JSON formatter still sees the message's arguments and the exception.
    assert lines[200]["msg"] == "failed: boom" and "ValueError: bad" in lines[200]["exc"]


class BlockedStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set, like a full pipe to a stalled reader."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.writing.set()
        assert self.release.wait(30), "never released"
        return super().write(text)


def test_logging_returns_while_the_stream_is_blocked(root_logging) -> None:
    stream = BlockedStream()
    root_logging.setattr(sys, "stderr", stream)
    logs.configure("INFO", "text")
    logger = logging.getLogger("test.requests")

    def log_three() -> None:
        for index in range(3):
            logs.log_request(logger, {"request_id": f"r{index}"})

    caller = threading.Thread(target=log_three)
    caller.start()
    caller.join(10)  # a hang guard: with a synchronous handler this would wait on the stream
    assert not caller.is_alive(), "logging waited for the stream"
    assert stream.writing.wait(10)  # the writer thread is the one stuck in write()
    assert stream.getvalue() == ""
    stream.release.set()
    logs.flush()
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == ["r0", "r1", "r2"]


def test_queued_lines_are_written_before_the_process_exits() -> None:
    script = ("import logging; from service_base import logs; logs.configure('INFO', 'json'); "
              "log = logging.getLogger('x.requests'); "
              "[logs.log_request(log, {'request_id': f'r{i}'}) for i in range(500)]")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    ids = [json.loads(line)["request_id"] for line in result.stderr.splitlines()]
    assert ids == [f"r{i}" for i in range(500)]
