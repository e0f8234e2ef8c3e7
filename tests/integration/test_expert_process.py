"""`python -m expert_svc` as a process: it serves, and SIGTERM drains an in-flight stream, exit 0."""

import asyncio
import re
import signal
import sys

import grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import request

SERVING = re.compile(r"serving .* on (127\.0\.0\.1:\d+)")


async def test_sigterm_drains_in_flight_stream_then_exits_zero():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "expert_svc",
        "--engine",
        "synthetic",
        "--listen",
        "127.0.0.1:0",
        "--name",
        "proc",
        "--ttft-ms",
        "10",
        "--tokens-per-second",
        "20",
        "--grace-s",
        "5",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        address = None
        while address is None:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=20)
            assert line, "the expert exited before serving"
            if match := SERVING.search(line.decode()):
                address = match.group(1)
        async with grpc.aio.insecure_channel(address) as channel:
            call = pb_grpc.ExpertStub(channel).Generate(request("in flight", max_tokens=20))
            frames = [await call.read()]
            proc.send_signal(signal.SIGTERM)
            while (frame := await call.read()) is not grpc.aio.EOF:
                frames.append(frame)
        rc = await asyncio.wait_for(proc.wait(), timeout=10)
        log = (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0, log
    assert len(frames) == 20 and frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert "draining 1 stream" in log and "stopped" in log
