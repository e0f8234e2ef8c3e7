"""What the optional cascade costs per routing decision: ExpertChooser.decide with and without it.

The cascade (router_svc/cascade.py, ``--cascade-model``) rescores the prompts whose best fast score
is below its threshold, in a thread of its own. Its cost to a request is the time ``decide`` takes:
on a prompt that is not cascaded, nothing; on one that is, the cascade model's run plus the hop to
its thread and back. This script times both choosers as the router builds them (same fast
classifier, same MicroBatcher, same prompts), interleaved call by call so that the machine's other
load falls on both alike, and prints the median and p90 of each, the fraction of prompts cascaded,
and the cascade model's own time on the cascaded prompts (called directly, no thread hop).

    .venv/bin/python benchmarks/cascade_cost.py                         # the tiny test model (anywhere)
    .venv/bin/python benchmarks/cascade_cost.py --cascade-model DIR     # a real export (make train-cascade)
    .venv/bin/python benchmarks/cascade_cost.py --cascade-model DIR --prompts 1000 --cascade-below 0.8

Prompts: the project's own built-in bench prompts (router_svc/loadgen/prompts.py, everyday
questions across the six experts), cycled to ``--prompts`` calls; never an evaluation set. Without
``--cascade-model`` the cascade is the tiny bag-of-words model the tests build
(tests/cascade_model.py, threshold 0.9 as the measured MiniLM cascade's): it shows the fixed cost of
the hop and the fraction cascaded, not MiniLM's run time. A measurement, not a test: compare the
rows of one run.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from router_svc.batching import MicroBatcher
from router_svc.cascade import CascadeModel, CascadeScorer
from router_svc.classifier import Classifier
from router_svc.loadgen import prompts
from router_svc.metrics import RouterMetrics
from router_svc.servicer import ExpertChooser

# The tiny model's threshold: the one `make eval-router` chose for the measured MiniLM cascade.
TINY_THRESHOLD = 0.9


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load_cascade(directory: str | None, labels: Sequence[str], threads: int) -> CascadeModel:
    if directory is not None:
        return CascadeModel.load(directory, labels=labels, threads=threads)
    from tests.cascade_model import write_cascade_model

    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as scratch:  # the model is in memory once loaded
        tiny = write_cascade_model(Path(scratch) / "tiny", labels=labels, threshold=TINY_THRESHOLD,
                                   version="tiny-bow-bench")
        return CascadeModel.load(tiny, labels=labels, threads=threads)


async def measure(classifier: Classifier, cascade_model: CascadeModel, texts: Sequence[str], calls: int,
                  cascade_below: float | None) -> dict[str, object]:
    metrics = RouterMetrics()
    labels = classifier.labels

    def chooser(cascade: CascadeScorer | None) -> ExpertChooser:
        return ExpertChooser(classifier, MicroBatcher(classifier.predict_batch), experts=labels,
                             fallback=labels[-1], min_confidence=0.0, metrics=metrics, cascade=cascade)

    scorer = CascadeScorer(cascade_model, threshold=cascade_below, max_pending=1_000_000, metrics=metrics)
    plain, cascaded = chooser(None), chooser(scorer)
    for text in texts:  # warm-up: the batcher's first predictions run in its thread, models load lazily
        await plain.decide(text)
        await cascaded.decide(text)
    before = metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": "scored"}) or 0.0
    timings: dict[str, list[float]] = {"without cascade": [], "with cascade": [], "with cascade, cascaded only": []}
    changed = 0
    for i in range(calls):
        text = texts[i % len(texts)]
        order = (plain, cascaded) if i % 2 == 0 else (cascaded, plain)
        decisions = {}
        for which in order:
            scored_before = metrics.registry.get_sample_value("router_cascade_prompts_total",
                                                              {"outcome": "scored"}) or 0.0
            started = time.perf_counter_ns()
            decision = await which.decide(text)
            elapsed = (time.perf_counter_ns() - started) / 1000
            decisions[which] = decision.expert
            if which is plain:
                timings["without cascade"].append(elapsed)
            else:
                timings["with cascade"].append(elapsed)
                scored = metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": "scored"})
                if scored > scored_before:
                    timings["with cascade, cascaded only"].append(elapsed)
        changed += decisions[plain] != decisions[cascaded]
    after = metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": "scored"}) or 0.0
    cascaded_texts = [text for text in texts if scorer.wanted(classifier.predict_batch([text])[0])]
    direct: list[float] = []
    for i in range(min(calls, 10 * max(1, len(cascaded_texts)))):
        if not cascaded_texts:
            break
        started = time.perf_counter_ns()
        cascade_model.predict_batch([cascaded_texts[i % len(cascaded_texts)]])
        direct.append((time.perf_counter_ns() - started) / 1000)
    if direct:
        timings["cascade model alone (cascaded prompts, no hop)"] = direct
    await scorer.close()
    return {"timings": timings, "fraction": (after - before) / calls, "changed": changed / calls,
            "distinct_cascaded": len(cascaded_texts), "threshold": scorer.threshold}


async def caller(chooser: ExpertChooser, texts: Sequence[str], offset: int, calls: int, stride: int,
                 timed: list[float]) -> None:
    """One of the concurrent callers: decides calls offset, offset + stride, ... back to back.

    It yields to the loop after each decision, as a request does when it goes on to its expert:
    a decision scored inline never suspends, and callers that never yield would starve the loop
    of the cascade thread's completions (a benchmark artifact, not the router's behaviour)."""
    for i in range(offset, calls, stride):
        started = time.perf_counter_ns()
        await chooser.decide(texts[i % len(texts)])
        timed.append((time.perf_counter_ns() - started) / 1000)
        await asyncio.sleep(0)


async def measure_concurrent(classifier: Classifier, cascade_model: CascadeModel, texts: Sequence[str],
                             calls: int, concurrency: int, cascade_below: float | None,
                             max_pending: int) -> dict[str, dict[str, object]]:
    """``concurrency`` callers at once, each deciding its share of ``calls`` back to back: without
    the cascade, then with it and its bound (``max_pending``), as a busy router would see them."""
    results = {}
    for name in ("without cascade", "with cascade"):
        metrics = RouterMetrics()
        labels = classifier.labels
        scorer = (CascadeScorer(cascade_model, threshold=cascade_below, max_pending=max_pending, metrics=metrics)
                  if name == "with cascade" else None)
        chooser = ExpertChooser(classifier, MicroBatcher(classifier.predict_batch), experts=labels,
                                fallback=labels[-1], min_confidence=0.0, metrics=metrics, cascade=scorer)
        for text in texts:
            await chooser.decide(text)
        warm = {o: metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": o}) or 0.0
                for o in ("scored", "skipped_busy", "error")}
        timed: list[float] = []

        started = time.perf_counter()
        await asyncio.gather(*(caller(chooser, texts, offset, calls, concurrency, timed)
                               for offset in range(concurrency)))
        wall = time.perf_counter() - started
        outcomes = {o: (metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": o}) or 0.0)
                    - warm[o] for o in warm}
        if scorer is not None:
            await scorer.close()
        results[name] = {"timed": timed, "per_second": calls / wall, "outcomes": outcomes}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade-model", metavar="DIR", default=None,
                        help="cascade model directory (default: the tiny test model, written to a temporary folder)")
    parser.add_argument("--cascade-below", type=float, default=None,
                        help="cascade threshold (default: the model's own)")
    parser.add_argument("--cascade-threads", type=int, default=1, help="onnxruntime threads per cascade run")
    parser.add_argument("--prompts", type=int, default=400, help="timed decide calls per chooser (default 400)")
    parser.add_argument("--classifier", metavar="DIR", default=None,
                        help="fast classifier artifact (default: the packaged one)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="also run this many callers at once, to see the bound at work (default: not)")
    parser.add_argument("--cascade-max-pending", type=int, default=4,
                        help="the cascade's bound in the concurrent run (default 4, the router's default)")
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.classifier)
    cascade_model = load_cascade(args.cascade_model, classifier.labels, args.cascade_threads)
    texts = [p.prompt for p in prompts.builtin_prompts()]
    result = asyncio.run(measure(classifier, cascade_model, texts, args.prompts, args.cascade_below))
    print(f"fast: {classifier.version}; cascade: {cascade_model!r} from {cascade_model.directory}")
    print(f"{len(texts)} built-in prompts cycled to {args.prompts} calls per chooser, interleaved; "
          f"threshold {result['threshold']:g}")
    print(f"cascaded: {result['fraction']:.1%} of calls ({result['distinct_cascaded']} of {len(texts)} prompts); "
          f"expert changed by the cascade: {result['changed']:.1%} of calls")
    print("\nExpertChooser.decide, us:            median       p90      mean")
    medians = {}
    for name, values in result["timings"].items():
        if not values:
            print(f"  {name:<46} (no calls)")
            continue
        medians[name] = statistics.median(values)
        print(f"  {name:<46} {medians[name]:9.1f} {percentile(values, 0.9):9.1f} {statistics.fmean(values):9.1f}")
    if "without cascade" in medians and "with cascade" in medians:
        plain, both = result["timings"]["without cascade"], result["timings"]["with cascade"]
        print(f"\nmean added per prompt by the cascade: {statistics.fmean(both) - statistics.fmean(plain):.1f} us; "
              f"median ratio with/without: {medians['with cascade'] / medians['without cascade']:.2f}x")
    if args.concurrency > 0:
        concurrent = asyncio.run(measure_concurrent(classifier, cascade_model, texts, args.prompts, args.concurrency,
                                                    args.cascade_below, args.cascade_max_pending))
        print(f"\n{args.concurrency} callers at once, {args.prompts} decisions, cascade bound "
              f"{args.cascade_max_pending}: decide us median / p90 / p99, decisions/s, cascade outcomes")
        for name, row in concurrent.items():
            timed = row["timed"]
            outcomes = ", ".join(f"{o} {n / args.prompts:.1%}" for o, n in row["outcomes"].items())
            print(f"  {name:<16} {statistics.median(timed):9.1f} {percentile(timed, 0.9):9.1f} "
                  f"{percentile(timed, 0.99):9.1f} {row['per_second']:9.0f}/s  {outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
