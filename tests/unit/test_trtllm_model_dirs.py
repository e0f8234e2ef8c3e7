"""A wrong --model directory for the trtllm engine: one line naming the directory, what was found
and what to do, and exit status 2, before anything is bound or imported (no TensorRT-LLM needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expert_svc.__main__ import main
from tests.fakes.trtllm_env import write_engine_dir, write_hf_dir


def _run(model_dir: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["--engine", "trtllm", "--name", "code", "--listen", "127.0.0.1:0",
                 "--model", str(model_dir), *extra])
    return code, capsys.readouterr().err


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def _hf_without_tokenizer(tmp_path: Path) -> Path:
    d = write_hf_dir(tmp_path / "hf")
    (d / "tokenizer_config.json").unlink()
    return d


def _trtllm_checkpoint(tmp_path: Path) -> Path:
    d = tmp_path / "trtllm-checkpoint"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architecture": "LlamaForCausalLM", "dtype": "bfloat16",
                                               "mapping": {"world_size": 1, "tp_size": 1}}))
    (d / "rank0.safetensors").write_bytes(b"\0")
    return d


def _unreadable_config(tmp_path: Path) -> Path:
    # A config.json that cannot be read as a file (a directory stands in for a file without read
    # permission, which root could read anyway).
    d = tmp_path / "broken"
    d.mkdir()
    (d / "config.json").mkdir()
    return d


CASES = {
    "empty": (_empty, (), ["no config.json", "holds nothing", "make build-engines"]),
    "hf-without-tokenizer": (_hf_without_tokenizer, (), ["Hugging Face checkpoint without tokenizer",
                                                         "pass --tokenizer"]),
    "trtllm-checkpoint": (_trtllm_checkpoint, (), ["TensorRT-LLM checkpoint", "trtllm-build first"]),
    "engine-for-another-tp": (lambda p: write_engine_dir(p / "engine"), ("--tensor-parallel-size", "4"),
                              ["built for tensor parallelism 2", "--tensor-parallel-size is 4",
                               "rebuild with tp_size 4"]),
    "unreadable-config": (_unreadable_config, (), ["cannot read", "config.json", "permissions"]),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_wrong_model_directory_is_one_line_and_exit_2(kind, tmp_path, capsys):
    make, extra, phrases = CASES[kind]
    model_dir = make(tmp_path)
    code, err = _run(model_dir, capsys, *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("expert_svc: error: ")
    assert str(model_dir) in lines[0]
    for phrase in phrases:
        assert phrase in lines[0]


def test_engine_missing_a_rank_file_names_it(tmp_path, capsys):
    d = write_engine_dir(tmp_path / "engine")
    (d / "rank1.engine").unlink()
    code, err = _run(d, capsys)
    assert code == 2 and "lacks rank1.engine" in err and str(d) in err
