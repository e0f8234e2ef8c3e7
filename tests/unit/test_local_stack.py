"""`make run`'s stack: the experts it starts drain within its grace, before it would kill them."""
from __future__ import annotations

from pathlib import Path

import pytest

from expert_svc.config import config_from_args
from router_svc import local_stack


@pytest.mark.parametrize("grace", ["5", "0.5"])
def test_experts_drain_within_the_stacks_grace_before_its_kill_deadline(tmp_path: Path, grace: str) -> None:
    args = local_stack.build_parser().parse_args(["--engine", "synthetic", "--grace", grace])
    expert = local_stack.ExpertProcess("math", 50062, tmp_path / "math.log")
    command = local_stack.expert_command(expert, args)
    assert command[1:3] == ["-m", "expert_svc"]
    # The expert's own parser reads the command line the stack builds.
    cfg = config_from_args(command[3:])
    assert cfg.grace_s == pytest.approx(float(grace)) and cfg.name == "math"
    # So its drain ends KILL_MARGIN_S before the stack's SIGKILL. Without --grace-s the expert's own
    # default would apply, which outlasts the stack's deadline (seen: an expert with no stream to
    # drain still used its whole 10 s grace and was killed at Ctrl-C).
    default = config_from_args(["--engine", "synthetic", "--name", "math", "--listen", expert.address]).grace_s
    assert default > local_stack.build_parser().parse_args([]).grace + local_stack.KILL_MARGIN_S - 0.5
