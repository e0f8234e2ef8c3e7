"""The --workers supervisor stays small: it builds its workers' commands without the serving stack.

The supervisor only starts, watches and signals worker processes (and serves their merged metrics);
importing the serving stack there (onnxruntime, numpy, gRPC's C++ library through router_svc.server)
cost its process about 30 MiB of resident memory, counted in the router's total (docs/profiles/router.md).
"""
from __future__ import annotations

import json
import subprocess
import sys

SUPERVISOR = """
import json, sys
from router_svc.__main__ import build_parser
from router_svc import config, workers
args = build_parser().parse_args(["--workers", "2", "--expert", "general=127.0.0.1:1"])
cfg = config.from_sources(args)
command = workers.Supervisor(cfg, [], "127.0.0.1:1", "/nonexistent")._command(0)
heavy = ("onnxruntime", "numpy", "router_svc._relay", "router_svc.server", "router_svc.classifier")
print(json.dumps({"command": command, "loaded": [name for name in heavy if name in sys.modules]}))
"""


def test_supervisor_builds_worker_commands_without_the_serving_stack() -> None:
    result = subprocess.run([sys.executable, "-c", SUPERVISOR], capture_output=True, text=True, timeout=60,
                            check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    command = out["command"]
    # Each worker gets its share of the cores for its relay threads (here: cores / 2, at least 1).
    threads = int(command[command.index("--relay-threads") + 1])
    assert threads >= 1
    assert command[command.index("--workers") + 1] == "1"
