"""Router with the packaged classifier: clear prompts reach the right synthetic expert."""
from __future__ import annotations

from pathlib import Path

import pytest

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc

ARTIFACT = Path(__file__).resolve().parents[2] / "router_svc" / "classifier_data" / "model.onnx"
pytestmark = pytest.mark.skipif(not ARTIFACT.exists(), reason="the packaged classifier is not built yet")

CLEAR_PROMPTS = {
    "code": "Write a Python function that reverses a linked list and returns the new head node.",
    "math": "Find the derivative of f(x) = 3x^2 + 2x - 5 and solve f'(x) = 0 for x.",
    "science": "Explain how photosynthesis converts light energy into chemical energy in plant cells.",
    "medicine": "Which drug is the first-line treatment for hypertension in a patient with chronic kidney disease?",
    "law": "What is the difference between a misdemeanor and a felony under criminal law, "
           "and what rights does a defendant have at trial?",
}


@pytest.fixture
async def routed(start_router, start_expert):
    from router_svc.classifier import Classifier

    classifier = Classifier.load()
    experts = {name: await start_expert(name, system_prompt=f"You are the {name} expert.")
               for name in (*CLEAR_PROMPTS, "general")}
    router = await start_router({name: [e.address] for name, e in experts.items()}, classifier=classifier,
                                min_confidence=0.0)
    return router, experts, classifier


async def test_clear_prompts_reach_the_right_expert(routed, channels) -> None:
    router, experts, classifier = routed
    stub = pb_grpc.RouterStub(channels(router.address))
    for expected, prompt in CLEAR_PROMPTS.items():
        classified = await stub.Classify(pb.ClassifyRequest(prompt=prompt))
        assert classified.expert == expected, (prompt, list(classified.scores))
        assert classified.classifier_version == classifier.version

        call = stub.Generate(pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=2)))
        frames = [frame async for frame in call]
        metadata = dict(await call.initial_metadata())
        assert (metadata["x-expert"], metadata["x-classifier-version"]) == (expected, classifier.version)
        assert frames[-1].usage.completion_tokens == 2
        assert experts[expected].engine.stats.finished == 1
