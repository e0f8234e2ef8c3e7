"""Command line of the engine build: `python -m expert_svc.build_engines --manifest FILE`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .manifest import ManifestError, load_manifest
from .pipeline import BuildError, execute, plan, summary_table

DEFAULT_MANIFEST = "deploy/engines/llama3-8b.yaml"
STAGES = {"1": [1], "2": [2], "all": [1, 2]}


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m expert_svc.build_engines",
        description="Quantize experts with ModelOpt (stage 1) and build TensorRT-LLM engines (stage 2).",
    )
    parser.add_argument("--manifest", default=DEFAULT_MANIFEST, help=f"manifest YAML (default {DEFAULT_MANIFEST})")
    parser.add_argument("--stages", choices=sorted(STAGES), default="all",
                        help="1: checkpoints only (no TensorRT-LLM needed); 2: engines from existing "
                             "checkpoints; all (default)")
    parser.add_argument("--check", action="store_true",
                        help="validate the manifest and print what would be built, then stop")
    parser.add_argument("--force", action="store_true", help="rebuild even what is up to date")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    stages = STAGES[args.stages]
    try:
        builds = load_manifest(args.manifest)
        if args.check:
            todo = plan(builds, stages, args.force)
            for build in builds:
                needed = todo[build.name]
                state = "up to date" if not needed else "needs stage " + ", ".join(map(str, needed))
                print(f"{build.name}: {build.quantization}, tp {build.tp_size} -> {build.output_dir}: {state}")
            return 0
        outcomes = execute(builds, stages, force=args.force)
    except (ManifestError, BuildError) as exc:
        print(f"build-engines: {exc}", file=sys.stderr)
        return 2
    print(summary_table(outcomes, stages))
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"{o.build.name}: {o.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
