"""Live reload: a new config file swaps experts and thresholds without dropping streams; a bad one is refused."""
from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import grpc
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from router_svc import config
from router_svc.reload import ConfigReloader
from tests.helpers import drain, eventually

ARTIFACT = Path(__file__).resolve().parents[2] / "router_svc" / "classifier_data" / "model.onnx"


def write_config(path: Path, experts: dict[str, str], **settings) -> None:
    lines = ["experts:"] + [f"  {name}: '{address}'" for name, address in experts.items()]
    lines += [f"{key}: {value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")


def loader(path: Path):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    args = parser.parse_args(["--config", str(path), "--listen", "127.0.0.1:0", "--workers", "1"])
    return lambda: config.from_sources(args)


async def test_reload_swaps_experts_keeps_streams_and_rejects_bad_files(
        tmp_path: Path, start_expert, fake_classifier, channels, caplog) -> None:
    from router_svc import server

    old_expert = await start_expert("general", tokens_per_second=40.0)
    new_expert = await start_expert("general")
    path = tmp_path / "router.yaml"
    write_config(path, {"general": old_expert.address}, min_confidence=0.4)
    load = loader(path)
    router = await server.start(load(), classifier=fake_classifier)
    reloader = ConfigReloader(router, load, watch_path=str(path), poll_s=0.05)
    reloader.start()
    try:
        stub = pb_grpc.RouterStub(channels(router.address))
        in_flight = stub.Generate(pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=20)))
        assert (await in_flight.read()).text
        old_state = router.state

        write_config(path, {"general": new_expert.address}, min_confidence=0.7, max_in_flight=5)
        await eventually(lambda: reloader.reloads == 1)
        assert router.state is not old_state and router.state.generation == 2
        assert router.cfg.min_confidence == pytest.approx(0.7) and router.admission.limits.max_in_flight == 5
        frames = await drain(stub.Generate(pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=2))))
        assert frames and new_expert.engine.stats.finished == 1

        rest = await drain(in_flight)  # the stream on the old generation went on to its end
        assert rest[-1].usage.completion_tokens == 20 and old_expert.engine.stats.finished == 1
        await eventually(lambda: old_state.upstream.replicas() == [])  # old channels closed after it

        # A bad file is refused, logged, and the running config stays.
        path.write_text("experts: {general: '" + new_expert.address + "'}\nmin_confidence: 7\n")
        await eventually(lambda: reloader.failures == 1)
        assert router.state.generation == 2 and router.cfg.min_confidence == pytest.approx(0.7)
        assert any("min_confidence: expected a number in [0, 1]" in r.getMessage() and r.levelname == "ERROR"
                   for r in caplog.records)
        assert not await reloader.reload("manual")  # still the same bad file
        frames = await drain(stub.Generate(pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=2))))
        assert frames[-1].usage.completion_tokens == 2
    finally:
        await reloader.close()
        await router.stop(0)


@pytest.mark.slow
@pytest.mark.skipif(not ARTIFACT.exists(), reason="the packaged classifier is not built yet")
async def test_sighup_reloads_a_router_process(tmp_path: Path, start_expert, relay: str) -> None:
    first, second = await start_expert("general"), await start_expert("general")
    path = tmp_path / "router.yaml"
    write_config(path, {"general": first.address}, reload_poll_s=3600)  # only SIGHUP may reload here
    log_path = tmp_path / "router.log"
    with open(log_path, "wb") as log_file:  # noqa: ASYNC230 - a test, before any server runs
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router_svc", "--config", str(path), "--listen", "127.0.0.1:0",
            "--workers", "1", "--relay", relay, stderr=log_file)
    try:
        await eventually(lambda: "router listening on" in log_path.read_text())
        address = log_path.read_text().split("router listening on ")[1].split(";")[0]
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.RouterStub(channel)
            request = pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=2))
            await drain(stub.Generate(request))
            assert first.engine.stats.finished == 1

            write_config(path, {"general": second.address}, reload_poll_s=3600)
            process.send_signal(signal.SIGHUP)
            await eventually(lambda: "config reloaded (SIGHUP)" in log_path.read_text())
            await drain(stub.Generate(request))
            assert second.engine.stats.finished == 1 and first.engine.stats.finished == 1

            path.write_text("experts: {general: 'nowhere'}\n")
            process.send_signal(signal.SIGHUP)
            await eventually(lambda: "rejected, keeping the running config" in log_path.read_text())
            await drain(stub.Generate(request))
            assert second.engine.stats.finished == 2
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
