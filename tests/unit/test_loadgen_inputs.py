"""Load generator inputs: the built-in prompts, JSONL prompt files, request building and CLI flags."""
from __future__ import annotations

import argparse
import json

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.commands import bench
from router_svc.loadgen.prompts import BenchPrompt, builtin_prompts, load_jsonl

EXPERTS = {"code", "math", "science", "medicine", "law", "general"}


def test_builtin_prompts_cover_the_six_experts():
    prompts = builtin_prompts()
    assert len(prompts) >= 30
    assert {p.expert for p in prompts} == EXPERTS
    assert len({p.prompt for p in prompts}) == len(prompts)


def test_load_jsonl_reads_prompts_and_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "hi", "max_tokens": 5, "expert": "general"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]}),
    ]))
    prompts = load_jsonl(str(path))
    assert prompts[0] == BenchPrompt(prompt="hi", max_tokens=5, expert="general")
    assert prompts[1].messages == (("system", "be brief"), ("user", "x"))


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one"),
    ('{"prompt": "a", "max_tokens": 0}', "max_tokens"),
    ('{"messages": [{"role": "user"}]}', "role"),
    ('[1, 2]', "object"),
])
def test_load_jsonl_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as info:
        load_jsonl(str(path))
    assert ":2:" in str(info.value)


def test_build_requests_serializes_each_prompt():
    raw = bench.build_requests([BenchPrompt(prompt="p"), BenchPrompt(messages=(("user", "m"),), max_tokens=3)],
                               max_tokens=16, expert="math")
    first, second = (pb.GenerateRequest.FromString(r) for r in raw)
    assert first.prompt == "p" and first.sampling.max_tokens == 16 and first.expert == "math"
    assert second.messages[0].content == "m" and second.sampling.max_tokens == 3


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_flags():
    args = _parse(["--target", "h:1", "--users", "1,10,100"])
    assert args.users == [1, 10, 100] and args.rate is None and args.duration == 10.0
    args = _parse(["--target", "h:1", "--rate", "25", "--requests-per-user", "3"])
    assert args.rate == 25.0 and args.requests_per_user == 3


@pytest.mark.parametrize("argv", [
    ["--target", "h:1", "--users", "1", "--rate", "5"],
    ["--target", "h:1", "--users", "0"],
    ["--target", "h:1", "--users", "a,b"],
    ["--target", "h:1", "--duration", "5", "--requests-per-user", "2"],
    ["--target", "h:1", "--max-tokens", "0"],
])
def test_bench_rejects_bad_flags(argv):
    with pytest.raises(SystemExit):
        _parse(argv)


def test_bench_is_a_cli_command():
    from router_svc import cli

    assert cli.COMMANDS["bench"][0] == "bench"
