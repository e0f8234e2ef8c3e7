"""TLS and mutual TLS on a real expert, with certificates generated for this test module; and the
switch that turns server reflection off.

Every refused connection must be a handshake failure (UNAVAILABLE) that leaves the server up:
each test ends with a good request on the same server.
"""

from __future__ import annotations

import contextlib
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from expert_svc.server import start
from service_base.tls import channel_credentials
from tests.certs import make_pki
from tests.helpers import drain, request, synthetic_config

DEADLINE_S = 5.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.asynccontextmanager
async def tls_expert(pki, *, mutual: bool):
    cfg = synthetic_config(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca.cert) if mutual else None,
    )
    expert = await start(cfg)
    try:
        yield expert
    finally:
        await expert.stop(grace=0.2)


async def generate(channel: grpc.aio.Channel, prompt: str = "over tls") -> list[pb.GenerateResponse]:
    call = pb_grpc.ExpertStub(channel).Generate(request(prompt, max_tokens=3), timeout=DEADLINE_S)
    return await drain(call)


async def assert_refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channel, "should not pass")
    # A handshake failure, reported at once, not a hang until the deadline.
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert time.monotonic() - started < DEADLINE_S - 1
    return info.value


async def assert_serves(expert, pki, *, client_cert: bool) -> None:
    creds = channel_credentials(
        str(pki.ca.cert),
        str(pki.client.cert) if client_cert else None,
        str(pki.client.key) if client_cert else None,
    )
    async with grpc.aio.secure_channel(expert.address, creds) as channel:
        frames = await generate(channel)
    assert len(frames) == 3 and frames[-1].finish_reason == pb.FINISH_REASON_LENGTH


async def test_tls_serves_a_client_that_trusts_the_ca(pki):
    async with tls_expert(pki, mutual=False) as expert:
        await assert_serves(expert, pki, client_cert=False)
        # localhost is in the certificate's SANs as well as 127.0.0.1.
        creds = channel_credentials(str(pki.ca.cert))
        async with grpc.aio.secure_channel(f"localhost:{expert.port}", creds) as channel:
            assert len(await generate(channel)) == 3


async def test_tls_refuses_plaintext_and_untrusted_clients_and_stays_up(pki):
    async with tls_expert(pki, mutual=False) as expert:
        async with grpc.aio.insecure_channel(expert.address) as channel:
            await assert_refused(channel)
        # A client that trusts another CA rejects the server's certificate.
        async with grpc.aio.secure_channel(
            expert.address, channel_credentials(str(pki.rogue_ca.cert))
        ) as channel:
            await assert_refused(channel)
        await assert_serves(expert, pki, client_cert=False)


async def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(pki):
    async with tls_expert(pki, mutual=True) as expert:
        await assert_serves(expert, pki, client_cert=True)


async def test_mutual_tls_refuses_missing_and_rogue_client_certificates_and_stays_up(pki):
    async with tls_expert(pki, mutual=True) as expert:
        async with grpc.aio.secure_channel(
            expert.address, channel_credentials(str(pki.ca.cert))
        ) as channel:
            await assert_refused(channel)
        rogue = channel_credentials(str(pki.ca.cert), str(pki.rogue_client.cert), str(pki.rogue_client.key))
        async with grpc.aio.secure_channel(expert.address, rogue) as channel:
            await assert_refused(channel)
        async with grpc.aio.insecure_channel(expert.address) as channel:
            await assert_refused(channel)
        await assert_serves(expert, pki, client_cert=True)


async def test_mutual_tls_health_and_info_need_the_client_certificate_too(pki):
    async with tls_expert(pki, mutual=True) as expert:
        async with grpc.aio.secure_channel(
            expert.address, channel_credentials(str(pki.ca.cert))
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.ExpertStub(channel).GetInfo(pb.GetInfoRequest(), timeout=DEADLINE_S)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = channel_credentials(str(pki.ca.cert), str(pki.client.cert), str(pki.client.key))
        async with grpc.aio.secure_channel(expert.address, creds) as channel:
            got = await pb_grpc.ExpertStub(channel).GetInfo(pb.GetInfoRequest(), timeout=DEADLINE_S)
        assert got.name == "test" and got.engine == "synthetic"


async def test_reflection_can_be_turned_off_while_health_and_generate_stay():
    expert = await start(synthetic_config(reflection=False))
    try:
        async with grpc.aio.insecure_channel(expert.address) as channel:
            replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=DEADLINE_S
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await replies.read()
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert len(await generate(channel)) == 3
    finally:
        await expert.stop(grace=0.2)
