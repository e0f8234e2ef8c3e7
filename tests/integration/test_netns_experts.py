"""Experts on separate hosts: each in a network namespace made by this test, reached over a veth pair.

One host is cut off mid-stream (its link goes down, nothing is closed or reset); the client must
see an error within a bound set by its keepalive, not hang, while the stream to the other host
runs to its end. Addresses come from 198.18.0.0/15 (reserved for benchmarking) and exist only on
the veth pairs this test creates; no traffic goes anywhere else. Needs root or CAP_NET_ADMIN and
the `ip` tool; skipped with the reason otherwise. Namespaces are always deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from tests.helpers import ExpertProcess, drain, request, start_expert_process

IP = shutil.which("ip")
# The client pings after 500 ms without data and gives the peer 1 s to answer.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 500),
    ("grpc.keepalive_timeout_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
CUT_DETECTION_S = 5.0


def run_ip(*args: str, netns: str | None = None) -> None:
    argv = [IP, *(("-n", netns) if netns else ()), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def netns_unavailable_reason() -> str | None:
    if IP is None:
        return "the `ip` tool (iproute2) is not installed"
    tag = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
    probe = f"ert-probe-{tag}"
    # Everything the tests do, once: a namespace, a veth pair moved into it, a command run inside.
    steps = [
        [IP, "netns", "add", probe],
        [IP, "link", "add", f"ertp{tag}", "type", "veth", "peer", "name", f"ertq{tag}"],
        [IP, "link", "set", f"ertq{tag}", "netns", probe],
        [IP, "netns", "exec", probe, "true"],
    ]
    try:
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, timeout=10, check=False)
            if result.returncode != 0:
                return (f"`{' '.join(step[1:3])}` is not permitted here: "
                        f"{result.stderr.strip() or result.returncode}")
    finally:
        subprocess.run([IP, "link", "del", f"ertp{tag}"], capture_output=True, timeout=10, check=False)
        subprocess.run([IP, "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


@dataclass
class Host:
    """A network namespace joined to this one by a veth pair on its own /30."""

    netns: str
    host_dev: str
    ns_dev: str
    host_ip: str
    ns_ip: str


def used_198_18_subnets() -> set[str]:
    out = subprocess.run([IP, "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    return {word.rsplit(".", 1)[0] for word in out.split() if word.startswith("198.18.")}


def make_host(tag: str, third_octet: int, base: int) -> Host:
    suffix = secrets.token_hex(3)
    host = Host(
        netns=f"ert-{tag}-{suffix}",
        host_dev=f"erth{tag}{suffix}",
        ns_dev=f"ertn{tag}{suffix}",
        host_ip=f"198.18.{third_octet}.{base + 1}",
        ns_ip=f"198.18.{third_octet}.{base + 2}",
    )
    try:
        run_ip("netns", "add", host.netns)
        run_ip("link", "add", host.host_dev, "type", "veth", "peer", "name", host.ns_dev)
        run_ip("link", "set", host.ns_dev, "netns", host.netns)
        run_ip("addr", "add", f"{host.host_ip}/30", "dev", host.host_dev)
        run_ip("link", "set", host.host_dev, "up")
        run_ip("addr", "add", f"{host.ns_ip}/30", "dev", host.ns_dev, netns=host.netns)
        run_ip("link", "set", host.ns_dev, "up", netns=host.netns)
        run_ip("link", "set", "lo", "up", netns=host.netns)
    except BaseException:
        remove_host(host)
        raise
    return host


def remove_host(host: Host) -> None:
    # Only this test's own experts run in its namespace; one left behind by an interrupted test
    # would keep the namespace alive.
    pids = subprocess.run([IP, "netns", "pids", host.netns], capture_output=True, text=True, check=False).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    # Deleting the namespace destroys its veth end, which takes the peer with it; the explicit
    # link delete covers a namespace that was never created.
    subprocess.run([IP, "netns", "del", host.netns], capture_output=True, timeout=10, check=False)
    subprocess.run([IP, "link", "del", host.host_dev], capture_output=True, timeout=10, check=False)


@pytest.fixture
def two_hosts():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    used = used_198_18_subnets()
    third = next(o for o in (secrets.randbelow(256) for _ in range(64)) if f"198.18.{o}" not in used)
    hosts: list[Host] = []
    try:
        for tag, base in (("a", 0), ("b", 4)):
            hosts.append(make_host(tag, third, base))
        yield hosts
    finally:
        for host in hosts:
            remove_host(host)


async def start_in(host: Host, name: str) -> ExpertProcess:
    return await start_expert_process(
        name, "--tokens-per-second", "20", "--ttft-ms", "5",
        listen=f"{host.ns_ip}:0", prefix=(IP, "netns", "exec", host.netns),
    )


@pytest.mark.slow
async def test_host_cut_off_mid_stream_errors_within_keepalive_bound_other_host_unaffected(two_hosts):
    cut, kept = two_hosts
    procs = await asyncio.gather(start_in(cut, "far-a"), start_in(kept, "far-b"), return_exceptions=True)
    try:
        for p in procs:
            if isinstance(p, BaseException):
                raise p
        cut_proc, kept_proc = procs
        assert cut_proc.address.startswith(cut.ns_ip) and kept_proc.address.startswith(kept.ns_ip)
        async with (
            grpc.aio.insecure_channel(cut_proc.address, options=KEEPALIVE_OPTIONS) as cut_channel,
            grpc.aio.insecure_channel(kept_proc.address, options=KEEPALIVE_OPTIONS) as kept_channel,
        ):
            # 20 tokens/s: 200 tokens would take 10 s; the deadline is well past the keepalive bound.
            doomed = pb_grpc.ExpertStub(cut_channel).Generate(request("far away", max_tokens=200), timeout=30)
            healthy = pb_grpc.ExpertStub(kept_channel).Generate(request("still here", max_tokens=60), timeout=30)
            for _ in range(3):
                assert (await doomed.read()).text
            assert (await healthy.read()).text
            healthy_rest = asyncio.ensure_future(drain(healthy))

            run_ip("link", "set", cut.ns_dev, "down", netns=cut.netns)
            cut_at = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(doomed)
            detected_after = time.monotonic() - cut_at
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
            assert detected_after < CUT_DETECTION_S, f"error seen {detected_after:.2f} s after the cut"

            rest = await healthy_rest
            assert len(rest) == 59 and rest[-1].finish_reason == pb.FINISH_REASON_LENGTH
            # The cut-off expert is still running: only the network failed.
            assert cut_proc.process.returncode is None
    finally:
        for p in procs:
            if isinstance(p, ExpertProcess):
                await p.close()


@pytest.mark.slow
async def test_host_cut_off_without_keepalive_still_ends_at_the_deadline(two_hosts):
    host = two_hosts[0]
    proc = await start_in(host, "far-a")
    try:
        async with grpc.aio.insecure_channel(proc.address) as channel:
            call = pb_grpc.ExpertStub(channel).Generate(request("far away", max_tokens=200), timeout=2.5)
            started = time.monotonic()
            assert (await call.read()).text
            run_ip("link", "set", host.ns_dev, "down", netns=host.netns)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await drain(call)
            elapsed = time.monotonic() - started
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
        assert elapsed < 2.5 + 1.0
    finally:
        await proc.close()
