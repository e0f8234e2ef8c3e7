"""Generate/Classify request validation and what the classifier reads from a conversation."""
from __future__ import annotations

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from router_svc.errors import InvalidRequest
from router_svc.servicer import Route, classification_text, validate_generate_request

LIMIT = 1024


def request(**fields) -> pb.GenerateRequest:
    return pb.GenerateRequest(**fields)


def msg(role: str, content: str) -> pb.ChatMessage:
    return pb.ChatMessage(role=role, content=content)


@pytest.mark.parametrize("req", [
    request(prompt="What is 2+2?"),
    request(messages=[msg("system", "be brief"), msg("user", "hi")]),
    request(prompt="x" * LIMIT),
    request(prompt="hi", sampling=pb.SamplingParams(max_tokens=5, temperature=0.0, top_p=1.0, top_k=40,
                                                     seed=1, stop=["\n"])),
])
def test_valid_requests_pass(req: pb.GenerateRequest) -> None:
    validate_generate_request(req, LIMIT)


@pytest.mark.parametrize(("req", "message"), [
    (request(), "the request is empty: set prompt or messages"),
    (request(prompt="  \n"), "only whitespace"),
    (request(prompt="hi", messages=[msg("user", "hi")]), "either prompt or messages, not both"),
    (request(prompt="x" * (LIMIT + 1)), f"prompt is {LIMIT + 1} bytes; this service accepts at most {LIMIT} bytes"),
    (request(prompt="é" * (LIMIT // 2 + 1)), "prompt is 1026 bytes"),
    (request(messages=[msg("user", "x" * 600), msg("assistant", "y" * 600)]), "prompt is 1200 bytes"),
    (request(messages=[msg("user", "hi"), msg("robot", "beep")]), r"messages\[1\].role is 'robot'"),
    (request(messages=[msg("user", " ")]), "every message is empty"),
    (request(prompt="hi", sampling=pb.SamplingParams(temperature=-0.5)), "sampling.temperature"),
    (request(prompt="hi", sampling=pb.SamplingParams(temperature=float("nan"))), "sampling.temperature"),
    (request(prompt="hi", sampling=pb.SamplingParams(top_p=0.0)), r"sampling.top_p must be in \(0, 1\]"),
    (request(prompt="hi", sampling=pb.SamplingParams(top_p=1.5)), "sampling.top_p"),
    (request(prompt="hi", sampling=pb.SamplingParams(top_k=-1)), "sampling.top_k must be >= 0"),
    (request(prompt="hi", sampling=pb.SamplingParams(stop=["a", ""])), r"sampling.stop\[1\] is empty"),
    (request(prompt="hi", sampling=pb.SamplingParams(stop=["s"] * 17)), "sampling.stop has 17 strings"),
    (request(prompt="hi", sampling=pb.SamplingParams(stop=["s" * 257])), r"sampling.stop\[0\] has 257 characters"),
])
def test_invalid_requests_are_explained(req: pb.GenerateRequest, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate_generate_request(req, LIMIT)


def test_classification_text_uses_the_last_user_turns() -> None:
    messages = [msg("system", "You are helpful."), msg("user", "one"), msg("assistant", "ok"),
                msg("user", "two"), msg("user", "three"), msg("user", "four")]
    assert classification_text("", messages) == "two\nthree\nfour"
    assert classification_text("plain prompt", []) == "plain prompt"
    assert classification_text("", [msg("system", "only a system turn")]) == "only a system turn"


def test_route_metadata() -> None:
    classified = dict(Route("math", 0.875, False, "v7").metadata())
    assert classified == {"x-expert": "math", "x-expert-score": "0.875000", "x-classifier-version": "v7",
                          "x-expert-source": "classifier"}
    explicit = dict(Route("law", None, False, "v7").metadata())
    assert explicit["x-expert-source"] == "explicit" and "x-expert-score" not in explicit
    assert dict(Route("general", 0.1, True, "v7").metadata())["x-expert-source"] == "fallback"


class _Batcher:
    pass


def test_failover_candidates_follow_scores_and_margin() -> None:
    from router_svc.servicer import ExpertChooser

    class Labels:
        labels = ("math", "code", "science", "general")
        version = "v1"

    chooser = ExpertChooser(Labels(), _Batcher(), experts=("math", "code", "science", "general"),
                            fallback="general", min_confidence=0.3, failover_margin=0.1)
    ranked = (("math", 0.5), ("code", 0.45), ("science", 0.38), ("general", 0.02))
    route = Route("math", 0.5, False, "v1", ranked)
    chosen = chooser.candidates(route)
    assert [(r.expert, r.source) for r in chosen] == [("math", "classifier"), ("code", "failover"),
                                                      ("general", "fallback")]
    assert all(r.failover_from == "math" for r in chosen[1:])
    assert dict(chosen[1].metadata())["x-expert-failover-from"] == "math"
    # An explicit choice and a fallback decision have nowhere else to go.
    assert [r.expert for r in chooser.candidates(Route("math", None, False, "v1"))] == ["math"]
    assert [r.expert for r in chooser.candidates(Route("general", 0.02, True, "v1", ranked))] == ["general"]
