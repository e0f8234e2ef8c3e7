"""Token authentication (router_svc.auth) without a server, and the router's TLS settings."""
from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from router_svc.__main__ import build_parser
from router_svc.auth import (
    TokenAuth,
    TokenBucket,
    bearer_token,
    entries_from_mapping,
    load_tokens,
    rejecting_handler,
)
from router_svc.config import ConfigError, RouterConfig, UpstreamExpert, check_files, from_sources
from tests.certs import make_pki

ALICE = "alice-token-0123456789"
BOB = "bob-token-abcdefghijkl"
GENERATE = "/expert_router.v1.Router/Generate"
CLASSIFY = "/expert_router.v1.Router/Classify"


class FakeClock:
    """Test-only monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(*entries: dict):
    return entries_from_mapping({"tokens": list(entries)})


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_token_file_yaml_round_trip(tmp_path: Path) -> None:
    digest = hashlib.sha256(BOB.encode()).hexdigest()
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - {{name: alice, token: {ALICE}, rate: 2.5, rpcs: [Classify]}}\n"
                    f"  - {{name: bob, token_sha256: {digest}}}\n")
    tokens = load_tokens(str(path))
    alice, bob = tokens.entries
    assert (alice.name, alice.rate, alice.burst, alice.rpcs) == ("alice", 2.5, 3, frozenset({"Classify"}))
    assert bob.rate is None and bob.rpcs == {"Generate", "Classify", "ListExperts"}
    assert tokens.find(ALICE) is alice and tokens.find(BOB) is bob
    assert tokens.find(ALICE + "x") is None and tokens.find("") is None
    assert ALICE not in repr(alice)  # the digest is kept out of reprs, and the token is never stored


@pytest.mark.parametrize(("data", "fragment"), [
    ({"tokens": []}, "non-empty list"),
    ({"users": []}, "one key, 'tokens'"),
    ({"tokens": [{"name": "a", "token": "short"}]}, "at least 16 characters"),
    ({"tokens": [{"name": "a", "token": "has a space in it ok"}]}, "without spaces"),
    ({"tokens": [{"name": "a", "token": ALICE, "token_sha256": "00" * 32}]}, "exactly one of token"),
    ({"tokens": [{"name": "a", "token_sha256": "abc"}]}, "64 hex digits"),
    ({"tokens": [{"name": "a", "token": ALICE}, {"name": "a", "token": BOB}]}, "used twice"),
    ({"tokens": [{"name": "a", "token": ALICE}, {"name": "b", "token": ALICE}]}, "listed twice"),
    ({"tokens": [{"name": "a", "token": ALICE, "rpcs": ["Delete"]}]}, "rpcs: expected a non-empty list"),
    ({"tokens": [{"name": "a", "token": ALICE, "rate": 0}]}, "rate: expected requests per second > 0"),
    ({"tokens": [{"name": "a", "token": ALICE, "burst": 3}]}, "only meaningful with rate"),
    ({"tokens": [{"name": "a", "token": ALICE, "colour": "red"}]}, "unknown key(s) colour"),
])
def test_bad_token_files_name_the_problem_and_never_the_token(data, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        entries_from_mapping(data)
    assert fragment in str(info.value)
    assert ALICE not in str(info.value) and BOB not in str(info.value)


def test_unparsable_token_file_does_not_echo_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"tokens:\n  - name: a\n    token: {ALICE}\n   bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_tokens(str(path))
    assert "not valid YAML (line" in str(info.value) and ALICE not in str(info.value)


@pytest.mark.parametrize(("metadata", "fragment"), [
    ((), "missing credentials"),
    ((("authorization", "Basic dXNlcjpwYXNz"),), "malformed authorization"),
    ((("authorization", "Bearer "),), "malformed authorization"),
    ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "2 authorization metadata entries"),
])
def test_missing_or_malformed_headers_say_what_to_send(metadata, fragment) -> None:
    rejection = bearer_token(metadata)
    assert rejection.code == grpc.StatusCode.UNAUTHENTICATED
    assert fragment in rejection.details and "authorization: Bearer <token>" in rejection.details


def test_bearer_scheme_is_case_insensitive() -> None:
    assert bearer_token((("authorization", f"bearer  {ALICE} "),)) == ALICE


def test_check_decides_each_case() -> None:
    auth = TokenAuth(table({"name": "alice", "token": ALICE, "rpcs": ["Classify"]}, {"name": "bob", "token": BOB}))
    assert auth.check(CLASSIFY, bearer(ALICE)) is None
    assert auth.check(GENERATE, bearer(BOB)) is None
    denied = auth.check(GENERATE, bearer(ALICE))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    assert denied.details == "token 'alice' may not call Generate (it may call: Classify)"
    unknown = auth.check(GENERATE, bearer("nobody-knows-this-token"))
    assert unknown.code == grpc.StatusCode.UNAUTHENTICATED and "not valid" in unknown.details
    assert auth.check(GENERATE, ()).code == grpc.StatusCode.UNAUTHENTICATED
    # Probes and reflection need no token.
    assert auth.check("/grpc.health.v1.Health/Check", ()) is None
    assert auth.check("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", ()) is None
    # Any other service is closed, even to a valid token.
    assert auth.check("/other.Service/Call", bearer(BOB)).code == grpc.StatusCode.PERMISSION_DENIED


def test_rate_limit_is_a_token_bucket_with_a_retry_hint() -> None:
    clock = FakeClock()
    auth = TokenAuth(table({"name": "alice", "token": ALICE, "rate": 2, "burst": 3}), clock=clock)
    assert [auth.check(GENERATE, bearer(ALICE)) for _ in range(3)] == [None, None, None]
    over = auth.check(GENERATE, bearer(ALICE))
    assert over.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(over.trailing_metadata) == {"retry-after-ms": "500"}
    assert "over its rate limit (2 requests/s, burst 3)" in over.details
    clock.now += 0.25
    assert dict(auth.check(GENERATE, bearer(ALICE)).trailing_metadata) == {"retry-after-ms": "250"}
    clock.now += 0.25
    assert auth.check(GENERATE, bearer(ALICE)) is None
    # A reload with the same limit keeps the bucket (no fresh burst); a changed limit starts over.
    auth.replace(table({"name": "alice", "token": ALICE, "rate": 2, "burst": 3}))
    assert auth.check(GENERATE, bearer(ALICE)) is not None
    auth.replace(table({"name": "alice", "token": ALICE, "rate": 2, "burst": 5}))
    assert auth.check(GENERATE, bearer(ALICE)) is None


def test_token_bucket_refills_up_to_its_burst() -> None:
    bucket = TokenBucket(10.0, 2, now=0.0)
    assert bucket.take(0.0) == 0 and bucket.take(0.0) == 0
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(100.0) == 0 and bucket.take(100.0) == 0 and bucket.take(100.0) > 0


def test_rejecting_handler_keeps_the_rpc_kind_and_parses_nothing() -> None:
    from router_svc.auth import Rejection

    rejection = Rejection(grpc.StatusCode.UNAUTHENTICATED, "no", "missing")
    stream = grpc.unary_stream_rpc_method_handler(lambda r, c: None, request_deserializer=bytes.decode)
    handler = rejecting_handler(stream, rejection)
    assert handler.response_streaming and not handler.request_streaming
    assert handler.request_deserializer is None
    assert not rejecting_handler(None, rejection).response_streaming


# TLS settings ------------------------------------------------------------------------------------

EXPERTS = (UpstreamExpert("general", ("127.0.0.1:1",)),)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_settings_are_checked_at_load(pki) -> None:
    ok = RouterConfig(EXPERTS, tls_cert=str(pki.server.cert), tls_key=str(pki.server.key),
                      tls_client_ca=str(pki.ca.cert), upstream_tls_ca=str(pki.ca.cert),
                      upstream_tls_cert=str(pki.client.cert), upstream_tls_key=str(pki.client.key))
    assert ok.tls and ok.mutual_tls and ok.upstream_tls
    cases = [
        ({"tls_cert": str(pki.server.cert)}, "go together"),
        ({"tls_client_ca": str(pki.ca.cert)}, "needs tls_cert and tls_key"),
        ({"upstream_tls_cert": str(pki.client.cert)}, "go together"),
        ({"upstream_tls_cert": str(pki.client.cert), "upstream_tls_key": str(pki.client.key)},
         "needs upstream_tls_ca"),
        ({"tls_cert": str(pki.server.cert), "tls_key": str(pki.mismatched_key)}, "does not belong"),
        ({"upstream_tls_ca": str(pki.ca.cert) + ".missing"}, "does not exist"),
    ]
    for fields, fragment in cases:
        with pytest.raises(ConfigError) as info:
            check_files(RouterConfig(EXPERTS, **fields))
        assert fragment in str(info.value), fields


def test_building_a_config_reads_no_file(pki, tmp_path: Path) -> None:
    """Validation is pure: paths that do not exist pass construction, and check_files names them."""
    missing = str(tmp_path / "nowhere.pem")
    cfg = RouterConfig(EXPERTS, tls_cert=missing, tls_key=missing, upstream_tls_ca=missing)
    with pytest.raises(ConfigError, match=f"TLS certificate '{missing}' does not exist"):
        check_files(cfg)
    with pytest.raises(ConfigError, match=f"server CA '{missing}' does not exist"):
        check_files(cfg.with_overrides(tls_cert=None, tls_key=None))


def test_security_flags_and_yaml_keys(pki, tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    (tmp_path / "tls").mkdir()
    for name in ("server.crt", "server.key"):
        (tmp_path / "tls" / name).write_bytes((pki.server.cert if name.endswith("crt") else pki.server.key).read_bytes())
    config.write_text("experts: {general: '127.0.0.1:1'}\ntls_cert: tls/server.crt\ntls_key: tls/server.key\n"
                      "reflection: false\nauth_tokens: tokens.yaml\n")
    cfg = from_sources(build_parser().parse_args(["--config", str(config)]))
    assert cfg.tls_cert == str(tmp_path / "tls" / "server.crt")  # relative to the file's folder
    assert cfg.reflection is False and cfg.auth_tokens == str(tmp_path / "tokens.yaml")
    args = build_parser().parse_args([
        "--expert", "general=127.0.0.1:1", "--no-reflection", "--max-prompt-bytes", "1000",
        "--max-message-bytes", "65536", "--upstream-tls-ca", str(pki.ca.cert),
        "--upstream-tls-cert", str(pki.client.cert), "--upstream-tls-key", str(pki.client.key)])
    cfg = from_sources(args)
    assert (cfg.reflection, cfg.max_prompt_bytes, cfg.max_message_bytes) == (False, 1000, 65536)
    assert cfg.upstream_tls and cfg.upstream_tls_cert == str(pki.client.cert)
    assert from_sources(build_parser().parse_args(["--expert", "general=127.0.0.1:1"])).reflection is True
