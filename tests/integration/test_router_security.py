"""The router's security settings against real servers: TLS and mutual TLS on its port, mutual TLS
to the experts, bearer tokens with per-rpc permissions and rate limits, and reflection switched off.

Certificates are made for this module by tests/certs.py. Every refusal is followed by a good request
on the same router: a refused client never takes the server down.
"""
from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from expert_router.v1 import expert_router_pb2 as pb
from expert_router.v1 import expert_router_pb2_grpc as pb_grpc
from service_base.tls import channel_credentials
from tests.certs import make_pki

DEADLINE_S = 5.0
FULL = "full-access-token-00000001"
CLASSIFY_ONLY = "classify-only-token-000002"
LIMITED = "rate-limited-token-0000003"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def generate(channel: grpc.aio.Channel, metadata=None, **fields) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(prompt="hello", sampling=pb.SamplingParams(max_tokens=3), **fields)
    call = pb_grpc.RouterStub(channel).Generate(request, metadata=metadata, timeout=DEADLINE_S)
    return [frame async for frame in call]


async def assert_generates(channel: grpc.aio.Channel, metadata=None, **fields) -> None:
    frames = await generate(channel, metadata, **fields)
    assert frames[-1].usage.completion_tokens == 3


async def assert_handshake_refused(channel: grpc.aio.Channel) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
    assert time.monotonic() - started < DEADLINE_S - 1  # refused at once, not a hang


def client_credentials(pki, *, cert: bool = False, rogue: bool = False) -> grpc.ChannelCredentials:
    issued = pki.rogue_client if rogue else pki.client
    return channel_credentials(str(pki.ca.cert), str(issued.cert) if cert else None,
                               str(issued.key) if cert else None)


async def test_router_serves_tls(pki, start_router, start_expert) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, tls_cert=str(pki.server.cert),
                                tls_key=str(pki.server.key))
    async with grpc.aio.insecure_channel(router.address) as plaintext:
        await assert_handshake_refused(plaintext)
    untrusting = channel_credentials(str(pki.rogue_ca.cert))
    async with grpc.aio.secure_channel(router.address, untrusting) as channel:
        await assert_handshake_refused(channel)
    for target in (router.address, f"localhost:{router.port}"):
        async with grpc.aio.secure_channel(target, client_credentials(pki)) as channel:
            await assert_generates(channel)


async def test_router_mutual_tls_requires_a_client_certificate(pki, start_router, start_expert) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, tls_cert=str(pki.server.cert),
                                tls_key=str(pki.server.key), tls_client_ca=str(pki.ca.cert))
    for credentials in (client_credentials(pki), client_credentials(pki, cert=True, rogue=True)):
        async with grpc.aio.secure_channel(router.address, credentials) as channel:
            await assert_handshake_refused(channel)
    async with grpc.aio.secure_channel(router.address, client_credentials(pki, cert=True)) as channel:
        await assert_generates(channel)
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_router_to_expert_over_mutual_tls(pki, start_router, start_expert) -> None:
    expert = await start_expert("general", tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                                tls_client_ca=str(pki.ca.cert))
    secured = await start_router({"general": [expert.address]}, upstream_tls_ca=str(pki.ca.cert),
                                 upstream_tls_cert=str(pki.client.cert), upstream_tls_key=str(pki.client.key),
                                 tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                                 tls_client_ca=str(pki.ca.cert))
    async with grpc.aio.secure_channel(secured.address, client_credentials(pki, cert=True)) as channel:
        await assert_generates(channel)
        listed = await pb_grpc.RouterStub(channel).ListExperts(pb.ListExpertsRequest())
        assert listed.experts[0].healthy
    # A router without its client certificate cannot reach the expert: UNAVAILABLE naming the expert.
    no_cert = await start_router({"general": [expert.address]}, upstream_tls_ca=str(pki.ca.cert),
                                 max_attempts=1)
    async with grpc.aio.insecure_channel(no_cert.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await generate(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "expert 'general' is unavailable" in info.value.details()


def dns_only_certificate(pki, directory: Path, dns_name: str) -> tuple[Path, Path]:
    """A server certificate from the test CA naming only ``dns_name`` (no IP address)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "dns-only.crt", directory / "dns-only.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_dns_replicas_are_verified_against_the_dns_name(pki, tmp_path: Path, start_router,
                                                              start_expert, channels) -> None:
    cert, key = dns_only_certificate(pki, tmp_path, "general.experts.test")
    expert = await start_expert("general", tls_cert=str(cert), tls_key=str(key))

    async def resolver(host: str, port: int) -> list[str]:  # test-only DNS: the name is the expert
        assert host == "general.experts.test"
        return [expert.address]  # dialled by IP, which the certificate does not name

    router = await start_router({"general": f"dns:///general.experts.test:{expert.port}"}, resolver=resolver,
                                upstream_tls_ca=str(pki.ca.cert))
    await assert_generates(channels(router.address))
    by_ip = await start_router({"general": [expert.address]}, upstream_tls_ca=str(pki.ca.cert), max_attempts=1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channels(by_ip.address))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the IP is not in the certificate


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n"
        f"  - {{name: full, token: {FULL}}}\n"
        f"  - {{name: classifier, token: {CLASSIFY_ONLY}, rpcs: [Classify]}}\n"
        f"  - {{name: limited, token: {LIMITED}, rate: 1, burst: 2}}\n")
    return path


async def test_tokens_authenticate_authorize_and_rate_limit(token_file, start_router, start_expert,
                                                            channels, caplog) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, auth_tokens=str(token_file), retry_after_ms=999)
    channel = channels(router.address)
    stub = pb_grpc.RouterStub(channel)
    await assert_generates(channel, bearer(FULL))

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListExperts(pb.ListExpertsRequest())
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in info.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channel, bearer(CLASSIFY_ONLY))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "token 'classifier' may not call Generate (it may call: Classify)"
    classified = await stub.Classify(pb.ClassifyRequest(prompt="solve x"), metadata=bearer(CLASSIFY_ONLY))
    assert classified.expert

    await assert_generates(channel, bearer(LIMITED))
    await assert_generates(channel, bearer(LIMITED))
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channel, bearer(LIMITED))
    assert time.perf_counter() - started < 0.5
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "token 'limited' is over its rate limit (1 requests/s, burst 2)" in info.value.details()
    assert 0 < int(dict(info.value.trailing_metadata())["retry-after-ms"]) <= 1000
    await assert_generates(channel, bearer(FULL))  # other tokens are not limited by it
    assert expert.engine.stats.started == 4  # no refused call reached the expert

    # Probes and reflection need no token.
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "expert_router.v1.Router" in await list_services(channel)
    assert not any(token in caplog.text for token in (FULL, CLASSIFY_ONLY, LIMITED))
    samples = {s.labels["reason"]: s.value for metric in router.metrics.registry.collect()
               if metric.name == "router_auth_rejections" for s in metric.samples if s.name.endswith("_total")}
    assert samples == {"missing": 1, "denied": 1, "rate_limited": 1}


async def test_reload_swaps_the_token_file(token_file, start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, auth_tokens=str(token_file))
    channel = channels(router.address)
    await assert_generates(channel, bearer(FULL))
    new_token = "rotated-token-000000000004"
    token_file.write_text(f"tokens:\n  - {{name: rotated, token: {new_token}}}\n")
    await router.apply(router.cfg)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await generate(channel, bearer(FULL))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await assert_generates(channel, bearer(new_token))
    token_file.write_text("tokens: []\n")  # a bad file is refused and the running tokens stay
    with pytest.raises(ValueError, match="non-empty list"):
        await router.apply(router.cfg)
    await assert_generates(channel, bearer(new_token))


async def list_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                     timeout=DEADLINE_S)
    async for response in call:
        return [service.name for service in response.list_services_response.service]
    return []


async def test_reflection_can_be_turned_off(start_router, start_expert, channels) -> None:
    expert = await start_expert("general")
    on = await start_router({"general": [expert.address]})
    assert "expert_router.v1.Router" in await list_services(channels(on.address))
    off = await start_router({"general": [expert.address]}, reflection=False)
    channel = channels(off.address)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await list_services(channel)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    await assert_generates(channel)


async def test_message_size_limits_are_explicit(start_router, start_expert) -> None:
    from router_svc.server import server_options
    from router_svc.upstream import channel_options

    expert = await start_expert("general")
    router = await start_router({"general": [expert.address]}, max_message_bytes=65536, max_prompt_bytes=1000)
    options = dict(server_options(router.cfg))
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 65536
    upstream = dict(channel_options(router.cfg.max_message_bytes))
    assert upstream["grpc.max_receive_message_length"] == upstream["grpc.max_send_message_length"] == 65536


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--tls-cert", "{server_cert}", "--tls-key", "{mismatched}"], "does not belong to the certificate"),
    (["--upstream-tls-ca", "{missing}"], "does not exist"),
    (["--auth-tokens", "{bad_tokens}"], "token 'weak'.token: expected a string of at least 16 characters"),
], ids=["key not matching its certificate", "missing CA file", "bad token file"])
@pytest.mark.slow
async def test_bad_security_files_stop_the_start_with_status_2(flags, fragment, pki, tmp_path: Path) -> None:
    import asyncio
    import sys

    bad_tokens = tmp_path / "tokens.yaml"
    bad_tokens.write_text("tokens:\n  - {name: weak, token: 'short'}\n")
    values = {"server_cert": pki.server.cert, "mismatched": pki.mismatched_key, "missing": tmp_path / "nope.pem",
              "bad_tokens": bad_tokens}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router_svc", "--workers", "1", "--expert", "general=127.0.0.1:1",
        *(flag.format(**values) for flag in flags), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert fragment in stderr.decode()
    assert "short" not in stderr.decode()  # a token is never echoed
