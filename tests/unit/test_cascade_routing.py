"""The cascade in the routing decision (ExpertChooser + CascadeScorer): which prompts it rescores,
how the rows combine, and that a busy, failing or abandoned cascade never fails or delays a request
beyond its bound. The fast classifier is the FAKE keyword classifier (tests/helpers.py); the
cascade is the tiny real model of tests/cascade_model.py, behind test doubles where a test needs
it slow or broken."""
from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.batching import MicroBatcher
from router_svc.cascade import CascadeModel, CascadeScorer, combine
from router_svc.metrics import RouterMetrics
from router_svc.servicer import ExpertChooser
from tests.cascade_model import LABELS, GatedCascade, write_cascade_model
from tests.helpers import FakeClassifier, eventually

# The FAKE classifier knows none of these words: a flat row (1/6 each), below any threshold; the
# tiny cascade model knows "ibuprofen" (medicine).
UNSURE_MEDICINE = "What are the side effects of ibuprofen?"
# "python" and "function" make the FAKE classifier sure of code (0.9); the cascade model would say
# law ("landlord", "deposit") if it were asked.
SURE_CODE = "python function about a landlord deposit"
# The FAKE classifier: code 0.9, below a 0.95 threshold. The cascade: "birthday" (general) diluted
# by twenty unknown words, ~0.57. Averaged, code still wins; replaced, general does.
CODE_OR_GENERAL = ("write a python function that wishes my friend a happy birthday and then prints it nicely "
                   "on the screen for everyone")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cascade_model(tmp_path_factory.mktemp("cascade"))


@pytest.fixture(scope="module")
def model(model_dir: Path) -> CascadeModel:
    return CascadeModel.load(model_dir, labels=LABELS)


def outcome(metrics: RouterMetrics, name: str) -> float:
    return metrics.registry.get_sample_value("router_cascade_prompts_total", {"outcome": name}) or 0.0


def chooser_with(cascade_model, metrics: RouterMetrics, *, threshold: float | None = None, max_pending: int = 4,
                 fast: FakeClassifier | None = None) -> tuple[ExpertChooser, CascadeScorer]:
    fast = fast or FakeClassifier()
    scorer = None
    if cascade_model is not None:
        scorer = CascadeScorer(cascade_model, threshold=threshold, max_pending=max_pending, metrics=metrics)
    chooser = ExpertChooser(fast, MicroBatcher(fast.predict_batch), experts=LABELS, fallback="general",
                            min_confidence=0.4, metrics=metrics, cascade=scorer)
    return chooser, scorer


async def test_an_unsure_prompt_is_rescored_and_its_route_changes(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    plain, _ = chooser_with(None, metrics)
    before = await plain.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    assert (before.expert, before.source, before.cascade) == ("general", "fallback", None)

    chooser, scorer = chooser_with(model, metrics)
    route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    slow = model.predict_batch([UNSURE_MEDICINE])[0]
    assert route.expert == "medicine" and route.source == "classifier" and not route.fallback
    # average: the mean of the FAKE's flat row and the cascade's row
    assert route.score == pytest.approx((1 / 6 + slow[LABELS.index("medicine")]) / 2, rel=1e-5)
    assert route.cascade == "tiny-bow-1"
    assert ("x-expert-cascade", "tiny-bow-1") in route.metadata()
    assert outcome(metrics, "scored") == 1
    assert metrics.registry.get_sample_value("router_cascade_seconds_count") == 1
    await scorer.close()


async def test_a_confident_prompt_is_left_alone(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model, open_gate=True)
    chooser, scorer = chooser_with(gated, metrics)
    route = await chooser.route(pb.GenerateRequest(prompt=SURE_CODE))
    assert (route.expert, route.cascade) == ("code", None)
    assert gated.runs == 0 and outcome(metrics, "scored") == 0
    assert all(key != "x-expert-cascade" for key, _ in route.metadata())
    # The cascade would have said law: the prompt was left alone, not agreed with.
    assert LABELS[model.predict_batch([SURE_CODE])[0].argmax()] == "law"
    await scorer.close()


async def test_the_threshold_comes_from_the_model_unless_overridden(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    _, default = chooser_with(model, metrics)
    assert default.threshold == model.threshold == 0.5
    # 0.9 from the FAKE classifier is not below the model's 0.5, but is below an override of 0.95.
    chooser, overridden = chooser_with(model, metrics, threshold=0.95)
    route = await chooser.route(pb.GenerateRequest(prompt=SURE_CODE))
    assert route.cascade == "tiny-bow-1" and outcome(metrics, "scored") == 1
    await default.close()
    await overridden.close()


@pytest.mark.parametrize(("combination", "expected"), [("average", "code"), ("replace", "general")])
async def test_average_and_replace(model: CascadeModel, combination: str, expected: str) -> None:
    metrics = RouterMetrics()
    cascade = GatedCascade(model, open_gate=True, combination=combination)
    chooser, scorer = chooser_with(cascade, metrics, threshold=0.95)
    fast = FakeClassifier().predict_batch([CODE_OR_GENERAL])[0]
    slow = model.predict_batch([CODE_OR_GENERAL])[0]
    route = await chooser.route(pb.GenerateRequest(prompt=CODE_OR_GENERAL))
    combined = (fast + slow) / 2 if combination == "average" else slow
    assert route.expert == expected and not route.fallback
    assert route.score == pytest.approx(float(combined.max()), rel=1e-5)
    assert dict(route.ranked) == pytest.approx(dict(zip(LABELS, combined.tolist())), rel=1e-5)
    await scorer.close()


def test_combine() -> None:
    fast = np.array([0.5, 0.3, 0.2], dtype=np.float32)
    slow = np.array([0.1, 0.1, 0.8], dtype=np.float32)
    np.testing.assert_allclose(combine(fast, slow, "average"), [0.3, 0.2, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(combine(fast, slow, "replace"), slow)
    assert combine(fast, slow, "average").dtype == np.float32


async def test_the_cascade_runs_in_its_own_thread(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model, open_gate=True)
    chooser, scorer = chooser_with(gated, metrics)
    await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    assert gated.threads and all(name.startswith("cascade") for name in gated.threads)
    assert threading.current_thread().name not in gated.threads
    await scorer.close()


async def test_when_the_bound_is_reached_the_fast_answer_stands(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model)
    chooser, scorer = chooser_with(gated, metrics, max_pending=2)
    first = [asyncio.create_task(chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))) for _ in range(2)]
    await gated.wait_started()  # one running, one queued behind it: the bound is full
    await eventually(lambda: scorer.pending == 2)
    busy = await asyncio.wait_for(chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE)), 10)
    assert (busy.expert, busy.source, busy.cascade) == ("general", "fallback", None)
    assert outcome(metrics, "skipped_busy") == 1 and outcome(metrics, "scored") == 0
    gated.gate.set()
    routes = await asyncio.gather(*first)
    assert [(r.expert, r.cascade) for r in routes] == [("medicine", "tiny-bow-1")] * 2
    assert outcome(metrics, "scored") == 2 and scorer.pending == 0
    await scorer.close()


async def test_a_failing_cascade_leaves_the_fast_answer_logged_once(model: CascadeModel, caplog) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model, open_gate=True)
    gated.fail = RuntimeError("onnxruntime: out of memory")
    chooser, scorer = chooser_with(gated, metrics)
    with caplog.at_level(logging.INFO, logger="router_svc.cascade"):
        for _ in range(3):
            route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
            assert (route.expert, route.source, route.cascade) == ("general", "fallback", None)
        failures = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(failures) == 1 and "out of memory" in failures[0].getMessage()
        assert outcome(metrics, "error") == 3
        gated.fail = None
        route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
        assert route.expert == "medicine"
        assert any("scores prompts again" in r.getMessage() for r in caplog.records)
        gated.fail = RuntimeError("again")
        await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2  # a new run of failures
    assert scorer.pending == 0
    await scorer.close()


async def test_a_row_of_the_wrong_shape_is_an_error_not_a_failed_request(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model, open_gate=True)
    gated.shape_override = (1, 5)
    chooser, scorer = chooser_with(gated, metrics)
    route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    assert (route.expert, route.cascade) == ("general", None) and outcome(metrics, "error") == 1
    await scorer.close()


async def test_a_cancelled_caller_leaks_nothing(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    gated = GatedCascade(model)
    chooser, scorer = chooser_with(gated, metrics, max_pending=2)
    running = asyncio.create_task(chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE)))
    await gated.wait_started()
    queued = asyncio.create_task(chooser.route(pb.GenerateRequest(prompt="aspirin or ibuprofen for a fever?")))
    await eventually(lambda: scorer.pending == 2)
    queued.cancel()
    running.cancel()
    for task in (queued, running):
        with pytest.raises(asyncio.CancelledError):
            await task
    # The queued run never starts; the running one holds its slot until its thread is done.
    await eventually(lambda: scorer.pending == 1)
    gated.gate.set()
    await eventually(lambda: scorer.pending == 0 and gated.finished == 1)
    assert gated.runs == 1
    assert outcome(metrics, "scored") == 0 and outcome(metrics, "error") == 0  # the result was dropped
    route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))  # the slots are free again
    assert route.cascade == "tiny-bow-1"
    await scorer.close()


async def test_a_closed_scorer_leaves_the_fast_answer(model: CascadeModel) -> None:
    metrics = RouterMetrics()
    chooser, scorer = chooser_with(model, metrics)
    await scorer.close()
    route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    assert (route.expert, route.cascade) == ("general", None) and outcome(metrics, "skipped_busy") == 1


async def test_classify_uses_the_cascade_too(model: CascadeModel) -> None:
    chooser, scorer = chooser_with(model, RouterMetrics())
    decision = await chooser.decide(UNSURE_MEDICINE)
    assert decision.expert == "medicine"
    await scorer.close()


async def test_failover_routes_keep_the_cascade_mark(model: CascadeModel) -> None:
    chooser, scorer = chooser_with(model, RouterMetrics())
    route = await chooser.route(pb.GenerateRequest(prompt=UNSURE_MEDICINE))
    assert all(candidate.cascade == "tiny-bow-1" for candidate in chooser.candidates(route))
    await scorer.close()


def test_max_pending_must_be_positive(model: CascadeModel) -> None:
    with pytest.raises(ValueError, match="max_pending"):
        CascadeScorer(model, max_pending=0)


# --- the settings -----------------------------------------------------------------------------------

def parse_router_flags(*argv: str):
    import argparse

    from router_svc import config

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.from_sources(parser.parse_args(list(argv)))


def test_the_cascade_is_off_by_default() -> None:
    cfg = parse_router_flags()
    assert (cfg.cascade_dir, cfg.cascade_below, cfg.cascade_threads, cfg.cascade_max_pending) == (None, None, 1, 4)


def test_cascade_settings_from_flags_and_file(tmp_path: Path) -> None:
    from router_svc.config import ConfigError

    path = tmp_path / "router.yaml"
    path.write_text("experts: {general: 'h:1'}\ncascade_model: models/cascade\ncascade_below: 0.8\n"
                    "cascade_threads: 2\ncascade_max_pending: 16\n")
    cfg = parse_router_flags("--config", str(path))
    assert cfg.cascade_dir == str(tmp_path / "models" / "cascade")  # relative to the file's folder
    assert (cfg.cascade_below, cfg.cascade_threads, cfg.cascade_max_pending) == (0.8, 2, 16)
    cfg = parse_router_flags("--config", str(path), "--cascade-model", "/srv/cascade", "--cascade-below", "0.6",
                             "--cascade-threads", "4", "--cascade-max-pending", "1")
    assert (cfg.cascade_dir, cfg.cascade_below, cfg.cascade_threads, cfg.cascade_max_pending) == (
        "/srv/cascade", 0.6, 4, 1)
    for flags, message in ((("--cascade-below", "1.5"), r"cascade_below: expected a number in \[0, 1\]"),
                           (("--cascade-threads", "0"), "cascade_threads: expected an integer in"),
                           (("--cascade-max-pending", "0"), "cascade_max_pending: expected an integer in")):
        with pytest.raises(ConfigError, match=message):
            parse_router_flags(*flags)
