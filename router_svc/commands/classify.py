"""`expert-router classify`: score prompts with the classifier, one JSON line per prompt."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", nargs="*", help="prompts to classify (default: one per line on stdin)")
    parser.add_argument("--artifact", metavar="DIR", default=None,
                        help="classifier artifact directory (default: the packaged one)")
    parser.add_argument("--min-confidence", type=float, default=None,
                        help="below this top score the fallback expert is chosen (default: the router's, 0.4)")
    parser.add_argument("--fallback", default=None,
                        help="expert used below --min-confidence (default: the router's, general)")
    parser.add_argument("--cascade-model", metavar="DIR", default=None,
                        help="also rescore low-confidence prompts with this cascade model, as the router's "
                             "--cascade-model does (default: none)")
    parser.add_argument("--cascade-below", type=float, default=None,
                        help="cascade a prompt whose best score is below this (default: the model's own threshold)")


def run(args: argparse.Namespace) -> int:
    import json

    import core
    from router_svc.classifier import Classifier
    from router_svc.config import DEFAULT_FALLBACK, DEFAULT_MIN_CONFIDENCE

    # The router's defaults, so this command answers what Router.Classify would.
    if args.min_confidence is None:
        args.min_confidence = DEFAULT_MIN_CONFIDENCE
    if args.fallback is None:
        args.fallback = DEFAULT_FALLBACK
    if not 0.0 <= args.min_confidence <= 1.0:
        print(f"--min-confidence must be in [0, 1], got {args.min_confidence}", file=sys.stderr)
        return 2
    if args.cascade_below is not None and not 0.0 < args.cascade_below <= 1.0:
        print(f"--cascade-below must be in (0, 1], got {args.cascade_below}", file=sys.stderr)
        return 2
    try:
        classifier = Classifier.load(args.artifact)
    except ValueError as exc:
        print(f"cannot load the classifier: {exc}", file=sys.stderr)
        return 1
    cascade = None
    if args.cascade_model is not None:
        from router_svc.cascade import CascadeModel, combine
        try:
            cascade = CascadeModel.load(args.cascade_model, labels=classifier.labels)
        except ValueError as exc:
            print(f"cannot load the cascade model: {exc}", file=sys.stderr)
            return 1
        threshold = cascade.threshold if args.cascade_below is None else args.cascade_below
    prompts = args.text if args.text else (line.rstrip("\r\n") for line in sys.stdin)
    labels = classifier.labels
    for prompt in prompts:
        scores = classifier.predict(prompt)
        # The router's rule (router_svc.cascade.CascadeScorer.wanted): rescore below the threshold.
        rescored = cascade is not None and float(scores.max()) < threshold
        if rescored:
            scores = combine(scores, cascade.predict_batch([prompt])[0], cascade.combination)
        decision = core.decide(labels, scores, args.min_confidence, args.fallback)
        record = {"expert": decision.expert,
                  "scores": {label: round(float(s), 6) for label, s in zip(labels, scores)},
                  "classifier_version": classifier.version}
        if rescored:
            record["cascade"] = cascade.version
        if decision.fallback:
            record["fallback"] = True
        print(json.dumps(record), flush=not args.text)
    return 0
