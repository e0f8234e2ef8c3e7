"""Where the router's classification time goes, step by step, warm and after idle gaps.

At one user the router classifies one prompt every ~0.7 s, and the time from the request to the
decision (measured around ``ExpertChooser.route`` in the running router) was 0.35-0.43 ms at the
median while ``make bench-classifier`` measures 30-37 us per prompt back to back. This script
separates the steps of one decision - the classified text, the two featurizer passes, the feeds,
``InferenceSession.run``, the batcher's array checks, ``core.decide`` - and times each with
``perf_counter_ns``, then the whole path as the router runs it (``ExpertChooser.route`` through
the ``MicroBatcher`` on an asyncio loop; with ``--keep-warm-ms`` also with a timer re-scoring a
short text on the idle loop), under three conditions:

- ``warm``: calls back to back (what a benchmark loop measures);
- ``idle``: ``--gap-ms`` of sleep before each call (what one user's request stream looks like);
- ``evict``: the same sleep, then ``--evict-mib`` of memory read, as other processes on a shared
  machine do to the caches while the router waits.

    .venv/bin/python benchmarks/route_decision.py                        # all three, 200 calls each
    .venv/bin/python benchmarks/route_decision.py --conditions idle --iterations 100 --gap-ms 300
    .venv/bin/python benchmarks/route_decision.py --conditions idle --keep-warm-ms 10 --variants

Medians and p90s in microseconds go to stdout. A measurement, not a test; the machine's other
load moves the idle figures, so compare rows of one run.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import core
from expert_router.v1 import expert_router_pb2 as pb
from router_svc.batching import MicroBatcher
from router_svc.classifier import DEFAULT_ARTIFACT_DIR, MODEL_FILE, OUTPUT_NAME, Classifier
from router_svc.loadgen import prompts
from router_svc.servicer import ExpertChooser, classification_text

CONDITIONS = ("warm", "idle", "evict")


class Conditioner:
    """Puts the process in one condition before each timed call."""

    def __init__(self, condition: str, gap_s: float, evict_mib: int) -> None:
        self.condition = condition
        self.gap_s = gap_s
        self._evict = np.ones(evict_mib * 1024 * 1024 // 8, dtype=np.int64) if condition == "evict" else None

    def before(self) -> None:
        if self.condition == "warm":
            return
        time.sleep(self.gap_s)
        self.evict()

    async def before_async(self) -> None:
        """The same on a running loop: the loop's timers (a keep-warm timer) run meanwhile."""
        if self.condition == "warm":
            return
        await asyncio.sleep(self.gap_s)
        self.evict()

    def evict(self) -> None:
        if self._evict is not None:
            self._evict.sum()  # reads every cache line of a buffer larger than the last-level cache


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def steps_of(classifier: Classifier) -> Callable[[str], dict[str, int]]:
    """One decision split into its steps, each timed (ns); mirrors Classifier.predict_batch."""
    featurizer = classifier.featurizer_config.build()
    word_config = classifier.word_featurizer_config
    word_featurizer = word_config.build() if word_config is not None else None
    session = classifier._session  # the benchmark times the session's run alone
    labels = classifier.labels
    available = frozenset(labels)

    def one(prompt: str) -> dict[str, int]:
        clock = time.perf_counter_ns
        t0 = clock()
        text = classification_text(prompt, ())
        t1 = clock()
        ids, weights, segments = featurizer.transform_batch([text])
        t2 = clock()
        feeds = {"feature_ids": ids, "feature_weights": weights, "segment_ids": segments,
                 "prompt_count": np.array([1], dtype=np.int64)}
        if word_featurizer is not None:
            word_ids, word_weights, word_segments = word_featurizer.transform_batch([text])
            feeds.update(word_ids=word_ids, word_weights=word_weights, word_segments=word_segments)
        t3 = clock()
        scores = session.run([OUTPUT_NAME], feeds)[0]
        t4 = clock()
        row = np.ascontiguousarray(np.asarray(scores, dtype=np.float32))[0]
        t5 = clock()
        core.decide(labels, row, 0.0, labels[-1], available)
        t6 = clock()
        return {"text": t1 - t0, "featurize (n-grams)": t2 - t1, "featurize (words) + feeds": t3 - t2,
                "session.run": t4 - t3, "array checks": t5 - t4, "core.decide": t6 - t5, "sum of steps": t6 - t0}

    return one


def measure_steps(classifier: Classifier, texts: Sequence[str], conditioner: Conditioner,
                  iterations: int) -> dict[str, list[float]]:
    one = steps_of(classifier)
    for text in texts:  # first calls build caches in onnxruntime and numpy
        one(text)
    results: dict[str, list[float]] = {}
    for i in range(iterations):
        conditioner.before()
        for step, ns in one(texts[i % len(texts)]).items():
            results.setdefault(step, []).append(ns / 1000)
    return results


def session_variant(artifact: str | None, **options: object) -> Callable[[str], None]:
    """A Classifier whose onnxruntime session differs from the router's by ``options``."""
    import onnxruntime as ort

    variant = Classifier.load(artifact)
    settings = ort.SessionOptions()
    settings.intra_op_num_threads = settings.inter_op_num_threads = 1
    settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for name, value in options.items():
        setattr(settings, name, value)
    model = (Path(artifact) if artifact else DEFAULT_ARTIFACT_DIR) / MODEL_FILE
    session = ort.InferenceSession(model.read_bytes(), sess_options=settings, providers=["CPUExecutionProvider"])
    variant._session, variant._run = session, session.run  # the benchmark swaps the session alone
    return lambda text: variant.predict_batch([text])


def numpy_variant(classifier: Classifier, artifact: str | None) -> Callable[[str], None] | None:
    """The packaged graph (bags of float16 table rows, bias, softmax) evaluated with numpy instead
    of onnxruntime: how much of a cold prediction is onnxruntime's own code. Needs the ``onnx``
    package (the dev extra) to read the tables; None without it or for another graph."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    model = onnx.load((Path(artifact) if artifact else DEFAULT_ARTIFACT_DIR) / MODEL_FILE)
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if not {"table", "word_table", "bias"} <= tables.keys():
        return None
    table, word_table, bias = tables["table"], tables["word_table"], tables["bias"]
    featurizer = classifier.featurizer_config.build()
    word_config = classifier.word_featurizer_config
    if word_config is None:
        return None
    word_featurizer = word_config.build()

    def run(text: str) -> None:
        ids, weights, _ = featurizer.transform_batch([text])
        word_ids, word_weights, _ = word_featurizer.transform_batch([text])
        logits = ((table[ids].astype(np.float32) * weights[:, None]).sum(0)
                  + (word_table[word_ids].astype(np.float32) * (word_weights * word_weights)[:, None]).sum(0)
                  + bias)
        exp = np.exp(logits - logits.max())
        exp / exp.sum()

    return run


def measure_variants(classifier: Classifier, texts: Sequence[str], conditioner: Conditioner,
                     iterations: int, artifact: str | None) -> dict[str, list[float]]:
    """``predict_batch`` against variants that would show what makes a cold prediction slow:
    spinning first (the clock speed), a short prediction first (the caches), session options."""
    import onnxruntime as ort

    def spin_then(seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            pass

    prepare: dict[str, Callable[[], None]] = {
        "predict_batch": lambda: None,
        "spin 2 ms first": lambda: spin_then(0.002),
        "a short prediction first": lambda: classifier.predict_batch(("a short text",)),
    }
    sessions: dict[str, Callable[[str], None]] = {
        "session: enable_mem_pattern off": session_variant(artifact, enable_mem_pattern=False),
        "session: enable_cpu_mem_arena off": session_variant(artifact, enable_cpu_mem_arena=False),
        "session: basic graph optimizations": session_variant(
            artifact, graph_optimization_level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    }
    evaluated_with_numpy = numpy_variant(classifier, artifact)
    if evaluated_with_numpy is not None:
        sessions["the same graph in numpy"] = evaluated_with_numpy
    def predict(text: str) -> None:
        classifier.predict_batch([text])

    for text in texts:
        predict(text)
        for run in sessions.values():
            run(text)
    results: dict[str, list[float]] = {name: [] for name in (*prepare, *sessions)}
    for i in range(iterations):
        text = texts[i % len(texts)]
        for name, timed in results.items():
            conditioner.before()
            if name in prepare:
                prepare[name]()
            run = sessions.get(name, predict)
            started = time.perf_counter_ns()
            run(text)
            timed.append((time.perf_counter_ns() - started) / 1000)
    return {f"variant: {name}": values for name, values in results.items()}


def measure_route(classifier: Classifier, texts: Sequence[str], conditioner: Conditioner,
                  iterations: int, keep_warm_s: float | None) -> dict[str, list[float]]:
    """``ExpertChooser.route`` as the router calls it (the MicroBatcher, inline once proven cheap).

    With ``keep_warm_s``, a loop timer scores a short fixed text after every ``keep_warm_s`` of
    idleness, to see whether keeping the model in the caches pays for its CPU."""
    requests = [pb.GenerateRequest(prompt=text) for text in texts]
    label = "" if keep_warm_s is None else f", kept warm every {keep_warm_s * 1000:g} ms"

    async def run() -> dict[str, list[float]]:
        batcher = MicroBatcher(classifier.predict_batch)
        loop = asyncio.get_running_loop()
        warmups = 0

        def keep_warm() -> None:
            nonlocal warmups
            classifier.predict_batch(("a short text to keep the model warm",))
            warmups += 1
            timer[0] = loop.call_later(keep_warm_s, keep_warm)

        timer = [loop.call_later(keep_warm_s, keep_warm)] if keep_warm_s is not None else [None]
        labels = classifier.labels
        chooser = ExpertChooser(classifier, batcher, experts=labels, fallback=labels[-1], min_confidence=0.0)
        for request in requests:  # the first predictions run in the thread, as in the router
            await chooser.route(request)
        timed: list[float] = []
        thread_cpu: list[float] = []
        idle_cpu_ns = idle_ns = 0
        for i in range(iterations):
            gap_started, gap_started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            await conditioner.before_async()
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            idle_ns += started - gap_started
            idle_cpu_ns += started_cpu - gap_started_cpu
            await chooser.route(requests[i % len(requests)])
            timed.append((time.perf_counter_ns() - started) / 1000)
            thread_cpu.append((time.thread_time_ns() - started_cpu) / 1000)
        if timer[0] is not None:
            timer[0].cancel()
        inline = batcher.inline
        await batcher.close()
        idle_share = f"{100 * idle_cpu_ns / idle_ns:.2f} % of a core" if conditioner.condition != "warm" else "-"
        return {f"route{label} (wall)": timed, f"route{label} (loop thread CPU)": thread_cpu,
                f"  inline {inline} of {iterations + len(requests)}; {warmups} keep-warm predictions; "
                f"loop CPU between calls (with the conditioning) {idle_share}": []}

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per condition (default 200)")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help="comma-separated: warm,idle,evict")
    parser.add_argument("--gap-ms", type=float, default=100.0, help="sleep before each idle/evict call (default 100)")
    parser.add_argument("--evict-mib", type=int, default=64, help="memory read before each evict call (default 64)")
    parser.add_argument("--keep-warm-ms", type=float, default=0.0,
                        help="also measure route with the model re-scored every this many idle ms (default: not)")
    parser.add_argument("--variants", action="store_true",
                        help="also time predict_batch after a spin, after a short prediction, and with other "
                             "onnxruntime session options, interleaved")
    parser.add_argument("--artifact", default=None, help="classifier artifact directory (default: packaged)")
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.artifact)
    texts = [p.prompt for p in prompts.builtin_prompts()]
    print(f"{classifier!r}; {len(texts)} built-in prompts; {args.iterations} calls per condition; "
          f"gap {args.gap_ms:g} ms; evict {args.evict_mib} MiB")
    for condition in args.conditions.split(","):
        conditioner = Conditioner(condition, args.gap_ms / 1000, args.evict_mib)
        rows = measure_steps(classifier, texts, conditioner, args.iterations)
        for keep_warm_s in [None] + ([args.keep_warm_ms / 1000] if args.keep_warm_ms > 0 else []):
            rows.update(measure_route(classifier, texts, conditioner, args.iterations, keep_warm_s))
        if args.variants:
            rows.update(measure_variants(classifier, texts, conditioner, args.iterations, args.artifact))
        print(f"\n{condition}: step, p50 / p90 us")
        for step, values in rows.items():
            if not values:
                print(f"  {step}")
                continue
            print(f"  {step:<44} {statistics.median(values):8.1f} / {percentile(values, 0.9):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
