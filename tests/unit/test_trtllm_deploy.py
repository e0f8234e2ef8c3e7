"""The GPU experts' Kubernetes manifest fits a TensorRT-LLM expert: the startup probe waits long
enough for a large engine to load, and admission is left to the engine's batch size."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "experts-gpu.yaml"
# A 70B FP8 engine at tensor parallelism 4 is ~70 GB: read at 100 MB/s, plus engine setup.
LARGEST_LOAD_S = 70e9 / 100e6 + 120


def _expert_containers() -> list[dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == "Deployment"]
    assert docs
    return [d["spec"]["template"]["spec"]["containers"][0] for d in docs]


def test_startup_probe_budget_covers_a_70b_tp4_load():
    for container in _expert_containers():
        probe = container["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget >= LARGEST_LOAD_S, f"{container['args']}: {budget} s < {LARGEST_LOAD_S:.0f} s"


def test_concurrency_is_left_to_the_engine_batch_size():
    for container in _expert_containers():
        assert "--max-concurrency" not in container["args"]
