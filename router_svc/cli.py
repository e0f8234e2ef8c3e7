"""The `expert-router` command line.

Each subcommand lives in its own module under ``router_svc.commands`` and is
imported only when used, so `expert-router classify` never pays for the
training stack and `expert-router train` never for the gRPC client.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module under router_svc.commands, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("classify", "score prompts with the classifier; one JSON line per prompt"),
    "train": ("train", "train the classifier (docs/classifier.md lists its sources) and export it to ONNX"),
    "train-cascade": ("train_cascade", "build the router's cascade model: MiniLM fine-tuned, else MiniLM + LR (ONNX, tokenizer, cascade.json)"),
    "eval": ("evaluate", "evaluate the classifier and the MiniLM baseline; write docs/"),
    "generate": ("generate", "stream an answer from the router (or an expert) to the terminal"),
    "experts": ("experts", "list the router's experts and their health"),
    "bench": ("bench", "load a router or expert with concurrent streams; latency and throughput per level"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="expert-router", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(_module=module)
        # Each command module defines add_arguments(parser) and run(args) -> int.
        _command_module(module).add_arguments(sub_parser)
    return parser


def _command_module(module: str):
    return importlib.import_module(f"router_svc.commands.{module}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_command_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
