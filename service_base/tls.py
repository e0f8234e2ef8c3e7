"""TLS and mutual-TLS credentials for gRPC servers and channels, loaded from PEM files.

Used by the expert and the router. Files are checked before gRPC sees them: gRPC accepts a
mismatched key or a file that is not PEM at construction time and only fails later, at every
handshake, with a log line far from the cause. Here such mistakes are a ValueError at startup
that names the file and says what is wrong with it.
"""

from __future__ import annotations

import os
import ssl

import grpc

__all__ = ["channel_credentials", "read_pem", "server_credentials"]


def read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    """Read a PEM file; raises ValueError when it is missing, unreadable, empty or not PEM."""
    path = os.fspath(path)
    if not path:
        raise ValueError(f"{what}: no file given")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValueError(f"{what} {path!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path!r} is a directory, not a PEM file") from None
    except OSError as exc:
        raise ValueError(f"{what} {path!r} cannot be read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{what} {path!r} is not a PEM file (no '-----BEGIN' line)")
    return data


def _check_key_pair(cert_file: str, key_file: str, what: str) -> None:
    # The standard library's OpenSSL both parses the two files and checks that the key belongs to
    # the certificate; gRPC itself would only fail at the first handshake.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "MISMATCH" in reason.upper():
            raise ValueError(
                f"{what}: the private key {key_file!r} does not belong to the certificate {cert_file!r}"
            ) from None
        raise ValueError(
            f"{what}: cannot load certificate {cert_file!r} with key {key_file!r} ({reason}); "
            "expected a PEM certificate (chain) and its unencrypted PEM private key"
        ) from None


def _check_ca(ca_file: str, what: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{what} {ca_file!r} holds no usable CA certificate ({exc.reason or exc})") from None


def server_credentials(
    cert_file: str,
    key_file: str,
    client_ca_file: str | None = None,
    require_client_cert: bool = False,
) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`.

    With `client_ca_file`, client certificates signed by that CA are verified; with
    `require_client_cert` too, a client without one fails the handshake (mutual TLS).
    """
    if not cert_file or not key_file:
        raise ValueError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
    if require_client_cert and not client_ca_file:
        raise ValueError("requiring client certificates needs the CA that signs them (--tls-client-ca)")
    cert = read_pem(cert_file, "TLS certificate")
    key = read_pem(key_file, "TLS private key")
    _check_key_pair(cert_file, key_file, "server TLS")
    ca = None
    if client_ca_file:
        ca = read_pem(client_ca_file, "client CA")
        _check_ca(client_ca_file, "client CA")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=bool(require_client_cert)
    )


def channel_credentials(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """Credentials for `grpc.secure_channel` / `grpc.aio.secure_channel`.

    `ca_file` verifies the server (default: the system's roots); `cert_file` and `key_file`
    together are this client's certificate for servers that require one.
    """
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs its private key and the other way round")
    ca = None
    if ca_file:
        ca = read_pem(ca_file, "server CA")
        _check_ca(ca_file, "server CA")
    cert = key = None
    if cert_file and key_file:
        cert = read_pem(cert_file, "client certificate")
        key = read_pem(key_file, "client private key")
        _check_key_pair(cert_file, key_file, "client TLS")
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
