"""TLS credential loading and the expert's TLS flags: every mistake is a ValueError naming the file."""

from __future__ import annotations

import grpc
import pytest

from expert_svc.__main__ import main
from expert_svc.config import ExpertConfig, check_files, config_from_args
from service_base.tls import channel_credentials, server_credentials
from tests.certs import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_valid_files_give_grpc_credentials(pki):
    assert isinstance(server_credentials(str(pki.server.cert), str(pki.server.key)), grpc.ServerCredentials)
    mutual = server_credentials(str(pki.server.cert), str(pki.server.key), str(pki.ca.cert), True)
    assert isinstance(mutual, grpc.ServerCredentials)
    assert isinstance(channel_credentials(), grpc.ChannelCredentials)
    client = channel_credentials(str(pki.ca.cert), str(pki.client.cert), str(pki.client.key))
    assert isinstance(client, grpc.ChannelCredentials)


@pytest.mark.parametrize(
    ("make_args", "needle"),
    [
        (lambda p, tmp: (str(tmp / "nope.crt"), str(p.server.key)), "does not exist"),
        (lambda p, tmp: (str(tmp), str(p.server.key)), "is a directory"),
        (lambda p, tmp: (str(tmp / "plain.txt"), str(p.server.key)), "is not a PEM file"),
        (lambda p, tmp: (str(p.server.cert), str(p.mismatched_key)), "does not belong to the certificate"),
        (lambda p, tmp: (str(p.server.key), str(p.server.key)), "cannot load certificate"),
        (lambda p, tmp: (str(p.server.cert), ""), "needs both a certificate and its private key"),
        (lambda p, tmp: (str(p.server.cert), str(p.server.key), str(tmp / "nope-ca.crt")), "client CA"),
        (lambda p, tmp: (str(p.server.cert), str(p.server.key), str(p.ca.key)), "no usable CA certificate"),
        (lambda p, tmp: (str(p.server.cert), str(p.server.key), None, True), "needs the CA that signs them"),
    ],
)
def test_server_credentials_errors_name_the_problem(pki, tmp_path, make_args, needle):
    (tmp_path / "plain.txt").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=needle):
        server_credentials(*make_args(pki, tmp_path))


def test_unreadable_file_is_a_clear_error(pki, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode; the unreadable case cannot be made here")
    locked = tmp_path / "locked.key"
    locked.write_bytes(pki.server.key.read_bytes())
    locked.chmod(0)
    with pytest.raises(ValueError, match="cannot be read"):
        server_credentials(str(pki.server.cert), str(locked))


def test_channel_credentials_errors(pki, tmp_path):
    with pytest.raises(ValueError, match="needs its private key"):
        channel_credentials(str(pki.ca.cert), str(pki.client.cert))
    with pytest.raises(ValueError, match="server CA .* does not exist"):
        channel_credentials(str(tmp_path / "missing.crt"))
    with pytest.raises(ValueError, match="does not belong"):
        channel_credentials(str(pki.ca.cert), str(pki.client.cert), str(pki.server.key))


def test_flags_build_a_mutual_tls_config(pki):
    cfg = config_from_args(
        [
            "--engine", "synthetic", "--listen", "127.0.0.1:0", "--name", "code",
            "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
            "--tls-client-ca", str(pki.ca.cert),
            "--max-prompt-bytes", "1000", "--max-message-bytes", "65536", "--no-reflection",
        ]
    )
    assert cfg.tls_enabled and cfg.mutual_tls and not cfg.reflection
    assert (cfg.max_prompt_bytes, cfg.max_message_bytes) == (1000, 65536)
    plain = config_from_args(["--engine", "synthetic", "--listen", "127.0.0.1:0", "--name", "code"])
    assert not plain.tls_enabled and not plain.mutual_tls and plain.reflection


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"tls_cert": "CERT"}, "go together"),
        ({"tls_key": "KEY"}, "go together"),
        ({"tls_client_ca": "CA"}, "needs --tls-cert and --tls-key"),
        ({"tls_cert": "CERT", "tls_key": "OTHER_KEY"}, "does not belong"),
    ],
)
def test_config_rejects_incomplete_or_wrong_tls(pki, fields, needle):
    paths = {"CERT": str(pki.server.cert), "KEY": str(pki.server.key), "CA": str(pki.ca.cert),
             "OTHER_KEY": str(pki.mismatched_key)}
    with pytest.raises(ValueError, match=needle):
        check_files(ExpertConfig(name="x", engine="synthetic", **{k: paths[v] for k, v in fields.items()}))


def test_cli_exits_2_with_the_reason(pki, capsys):
    rc = main(["--engine", "synthetic", "--listen", "127.0.0.1:0", "--name", "x",
               "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.client.key)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "expert_svc: error:" in err and "does not belong to the certificate" in err
