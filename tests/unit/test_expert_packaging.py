"""The install extras: a GPU install carries exactly one onnxruntime (onnxruntime-gpu), a CPU
install exactly one (onnxruntime), and the quantization extra none of its own.

Both distributions provide the `onnxruntime` module: with both installed, whichever landed last
wins and the CUDA provider can silently disappear. The requirement sets are resolved from the
project's own metadata (pyproject.toml), markers evaluated for the extras asked for, and followed
into the dependencies of every distribution installed here (their Requires-Dist), which covers
what pip would add for them.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: Requirement) -> str:
    return re.sub(r"[-_.]+", "-", requirement.name).lower()


def _project_requirements(extras: set[str]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in wanted if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in extras | {""})]


def _resolve(extras: set[str]) -> set[str]:
    """Distribution names the install of `expert-router[extras]` brings, following the metadata of
    the distributions installed here."""
    seen: set[str] = set()
    pending = _project_requirements(extras)
    while pending:
        requirement = pending.pop()
        name = _name(requirement)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(requirement.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            dependency = Requirement(text)
            chosen = requirement.extras | {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in chosen):
                pending.append(dependency)
    return seen


def _onnxruntimes(names: set[str]) -> set[str]:
    return {n for n in names if n == "onnxruntime" or n.startswith("onnxruntime-")}


@pytest.mark.parametrize("extras, expected", [
    ({"gpu"}, {"onnxruntime-gpu"}),
    ({"gpu", "dev"}, {"onnxruntime-gpu"}),
    ({"cpu"}, {"onnxruntime"}),
    ({"cpu", "dev"}, {"onnxruntime"}),
    ({"quantization"}, set()),
    ({"cpu", "dev", "quantization"}, {"onnxruntime"}),
])
def test_each_install_carries_at_most_one_onnxruntime(extras, expected):
    assert _onnxruntimes(_resolve(extras)) == expected


def test_quantization_extra_pins_cpu_torch_and_the_verified_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {_name(r): str(r.specifier) for r in map(Requirement, project["optional-dependencies"]["quantization"])}
    assert pins["torch"] == "==2.13.0"  # an unpinned torch pulls a CUDA build of several gigabytes
    assert all(spec.startswith("==") for spec in pins.values()), pins
    assert {"nvidia-modelopt", "transformers", "gguf", "accelerate"} <= pins.keys()


def test_gpu_extra_has_accelerate_and_a_transformers_modelopt_accepts():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    gpu = {_name(r): r for r in map(Requirement, project["optional-dependencies"]["gpu"])}
    assert "accelerate" in gpu
    assert not gpu["transformers"].specifier.contains("4.56.0") and gpu["transformers"].specifier.contains("4.57.0")
