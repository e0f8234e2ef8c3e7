"""The router and `make run`'s local stack as real processes: startup, a call through them, clean exit."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import grpc
import openai
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from router_svc.config import LOCAL_EXPERT_PORTS
from tests.helpers import drain, eventually

ARTIFACT = Path(__file__).resolve().parents[2] / "router_svc" / "classifier_data" / "model.onnx"
needs_classifier = pytest.mark.skipif(not ARTIFACT.exists(),
                                      reason="the packaged classifier is not built yet")


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float) -> tuple[re.Match, str]:
    seen = []
    async def scan():
        while True:
            line = await stream.readline()
            if not line:
                raise AssertionError("process ended before printing " + pattern + ":\n" + "".join(seen[-30:]))
            text = line.decode(errors="replace")
            seen.append(text)
            if match := re.search(pattern, text):
                return match
    return await asyncio.wait_for(scan(), timeout), "".join(seen)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


async def test_bad_config_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("experts: {general: '127.0.0.1:1'}\nmin_confidence: lots\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert "min_confidence: expected a number" in stderr.decode()


@pytest.mark.slow
@needs_classifier
async def test_router_process_serves_and_exits_0_on_sigterm(start_expert, relay: str) -> None:
    expert = await start_expert("general", tokens_per_second=20.0)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc", "--listen", "127.0.0.1:0", "--relay", relay,
        "--expert", f"general={expert.address}",
        stderr=asyncio.subprocess.PIPE)
    try:
        match, _ = await read_until(process.stderr, r"router listening on (127\.0\.0\.1:\d+)", 60)
        async with grpc.aio.insecure_channel(match.group(1)) as channel:
            stub = pb_grpc.RouterStub(channel)
            call = stub.Generate(pb.GenerateRequest(prompt="hello",
                                                    sampling=pb.SamplingParams(max_tokens=10)))
            assert (await call.read()).text
            process.send_signal(signal.SIGTERM)  # mid-stream: the stream is drained, not cut
            rest = []
            while (frame := await call.read()) is not grpc.aio.EOF:
                rest.append(frame)
            assert rest[-1].usage.completion_tokens == 10
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@needs_classifier
@pytest.mark.slow
async def test_local_stack_starts_routes_and_stops_cleanly(tmp_path: Path) -> None:
    router_port, http_port, *expert_ports = free_ports(8)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc.local_stack", "--engine", "synthetic",
        "--router-port", str(router_port), "--http-port", str(http_port),
        "--expert-ports", ",".join(map(str, expert_ports)), "--log-dir", str(tmp_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        _, printed = await read_until(process.stdout, r"Ctrl-C stops everything", 120)
        assert f"Expert Router is up on 127.0.0.1:{router_port}" in printed
        assert "generate" in printed and "grpcurl" in printed
        async with grpc.aio.insecure_channel(f"127.0.0.1:{router_port}") as channel:
            stub = pb_grpc.RouterStub(channel)
            listed = await stub.ListExperts(pb.ListExpertsRequest())
            assert [e.name for e in listed.experts] == list(LOCAL_EXPERT_PORTS)
            assert all(e.healthy for e in listed.experts)
            call = stub.Generate(pb.GenerateRequest(prompt="Write a Python function that sorts a list.",
                                                    sampling=pb.SamplingParams(max_tokens=3)))
            frames = [frame async for frame in call]
            assert (await call.initial_metadata())["x-expert"] == "code"
            assert frames[-1].usage.completion_tokens == 3
        # The OpenAI-compatible door, with the curl line the stack prints.
        assert f"curl -s http://127.0.0.1:{http_port}/v1/chat/completions" in printed
        completion = await openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused",
                                              max_retries=0).chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "Write a Python function that sorts a list."}],
            max_tokens=3)
        assert completion.model == "code" and completion.usage.completion_tokens == 3
        assert len(processes_mentioning(f"--listen 127.0.0.1:{expert_ports[0]}")) == 1

        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        for port in expert_ports:
            assert processes_mentioning(f"--listen 127.0.0.1:{port}") == []
        assert all(port_is_free(port) for port in (router_port, http_port, *expert_ports))
    finally:
        if process.returncode is None:
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()


@pytest.mark.slow
@needs_classifier
async def test_workers_share_one_port_and_exit_0_on_sigterm(start_expert, tmp_path: Path, relay: str) -> None:
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    expert = await start_expert("general")
    metrics_port, = free_ports(1)
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - a test, before any server runs
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router_svc", "--listen", "127.0.0.1:0", "--workers", "2", "--relay", relay,
            "--expert", f"general={expert.address}", "--metrics-listen", f"127.0.0.1:{metrics_port}",
            "--http-listen", "127.0.0.1:0", stderr=log_file)
    try:
        await eventually(lambda: log_path.read_text().count("router listening on") == 2, timeout=60)
        text = log_path.read_text()
        addresses = set(re.findall(r"router listening on (127\.0\.0\.1:\d+)", text))
        assert len(addresses) == 1, text  # both workers on the port the parent picked
        address = addresses.pop()
        request = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_tokens=2))
        # A new connection each time, which the kernel spreads over the workers. Each channel gets
        # its own subchannel pool: by default gRPC shares subchannels between channels to the same
        # address, so a closed channel's connection, still open, could carry the next call.
        for _ in range(16):
            async with grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]
                                                 ) as channel:
                frames = await drain(pb_grpc.RouterStub(channel).Generate(request))
                assert frames[-1].usage.completion_tokens == 2
        def request_lines() -> list[dict]:
            return [json.loads(line) for line in log_path.read_text().splitlines()
                    if line.startswith("{") and '"event":"request"' in line]

        # A stream's log line and metrics follow its end (with the native relay, just after the client saw it).
        await eventually(lambda: len(request_lines()) >= 16)
        requests = request_lines()
        assert len(requests) == 16
        assert len({r["pid"] for r in requests}) == 2
        assert process.pid not in {r["pid"] for r in requests}
        # The HTTP door too: one port (``:0`` resolved once by the parent), spread over both workers.
        http_addresses = set(re.findall(r"OpenAI-compatible HTTP on http://(127\.0\.0\.1:\d+)/v1", text))
        assert len(http_addresses) == 1, text
        http_address = http_addresses.pop()
        for _ in range(16):  # a new client (connection) each time, as above
            client = openai.AsyncOpenAI(base_url=f"http://{http_address}/v1", api_key="unused", max_retries=0)
            completion = await client.completions.create(model="auto", prompt="hello", max_tokens=2)
            assert completion.usage.completion_tokens == 2
            await client.close()
        def http_request_lines() -> list[dict]:
            return [json.loads(line) for line in log_path.read_text().splitlines()
                    if line.startswith("{") and '"door":"http"' in line]

        # Log lines are written by each worker's log thread, so the last may land just after the reply.
        await eventually(lambda: len(http_request_lines()) >= 16)
        http_requests = http_request_lines()
        assert len(http_requests) == 16 and len({r["pid"] for r in http_requests}) == 2

        def scrape() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                body = response.read().decode()
            return sum(sample.value for family in text_string_to_metric_families(body)
                       for sample in family.samples
                       if sample.name == "router_requests_total" and sample.labels.get("code") == "OK")

        async def all_counted() -> bool:  # the parent adds up both workers, both doors
            return await asyncio.to_thread(scrape) == 32

        assert await eventually(all_counted, what="32 OK requests in the parent's metrics")

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert port_is_free(int(address.rpartition(":")[2]))
        assert port_is_free(int(http_address.rpartition(":")[2]))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
