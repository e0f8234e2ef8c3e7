"""Classify, ListExperts, health and reflection on the router, with its experts down."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc


@pytest.fixture
async def router_without_experts(start_router, unused_address):
    return await start_router({"math": [unused_address()], "code": [unused_address(), unused_address()],
                               "general": [unused_address()]})


async def test_classify_works_with_experts_down(router_without_experts, channels) -> None:
    stub = pb_grpc.RouterStub(channels(router_without_experts.address))
    response = await stub.Classify(pb.ClassifyRequest(prompt="Solve this integral"))
    assert (response.expert, response.fallback, response.classifier_version) == ("math", False, "fake-1")
    assert response.scores[0].expert == "math"
    assert len(response.scores) == 6
    assert sum(s.score for s in response.scores) == pytest.approx(1.0, abs=1e-4)
    assert all(a.score >= b.score for a, b in zip(response.scores, response.scores[1:]))

    unsure = await stub.Classify(pb.ClassifyRequest(messages=[pb.ChatMessage(role="user", content="hello")]))
    assert (unsure.expert, unsure.fallback) == ("general", True)
    # "law" is a label of the classifier but not a configured expert here.
    not_configured = await stub.Classify(pb.ClassifyRequest(prompt="Is this contract valid in court?"))
    assert (not_configured.expert, not_configured.fallback) == ("general", True)
    assert not_configured.scores[0].expert == "law"

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_experts_shows_them_unhealthy(router_without_experts, channels) -> None:
    listed = await pb_grpc.RouterStub(channels(router_without_experts.address)).ListExperts(
        pb.ListExpertsRequest())
    assert [e.name for e in listed.experts] == ["math", "code", "general"]
    assert [e.fallback for e in listed.experts] == [False, False, True]
    assert not any(e.healthy for e in listed.experts)
    assert [len(e.replicas) for e in listed.experts] == [1, 2, 1]
    assert all(not r.healthy and r.outstanding == 0 and r.address.startswith("127.0.0.1:")
               for e in listed.experts for r in e.replicas)


async def test_list_experts_counts_outstanding_requests(start_router, start_expert, channels) -> None:
    expert = await start_expert("general", tokens_per_second=20.0)
    router = await start_router({"general": [expert.address]})
    stub = pb_grpc.RouterStub(channels(router.address))
    call = stub.Generate(pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(max_tokens=200)))
    await call.read()
    listed = await stub.ListExperts(pb.ListExpertsRequest())
    assert listed.experts[0].healthy and listed.experts[0].replicas[0].outstanding == 1
    call.cancel()


async def test_health_and_reflection(router_without_experts, channels) -> None:
    channel = channels(router_without_experts.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "expert_router.v1.Router"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="expert_router.v1.Router"))
    await call.done_writing()
    listed, described = [response async for response in call]
    names = {service.name for service in listed.list_services_response.service}
    assert {"expert_router.v1.Router", "grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto

    await router_without_experts.stop(0)
    assert (await router_without_experts.health.Check(
        health_pb2.HealthCheckRequest(service="expert_router.v1.Router"), None)
    ).status == health_pb2.HealthCheckResponse.NOT_SERVING
