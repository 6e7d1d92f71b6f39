"""TLS for the gRPC port (clients and replication links) and for links this node dials.

Flag names follow etcd: ``--cert-file``/``--key-file`` turn TLS on for the port,
``--trusted-ca-file`` + ``--client-cert-auth`` require every client (peers included) to present
a certificate signed by that CA. Links this node dials to ``https://`` URLs verify the peer
with ``--peer-trusted-ca-file`` and present ``--peer-cert-file``/``--peer-key-file``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from shim.config import ConfigError


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    trusted_ca_file: Path | None = None
    client_cert_auth: bool = False

    def credentials(self) -> grpc.ServerCredentials:
        cert = read_pem(self.cert_file, "--cert-file")
        key = read_pem(self.key_file, "--key-file")
        ca = read_pem(self.trusted_ca_file, "--trusted-ca-file") if self.trusted_ca_file else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=self.client_cert_auth
        )


@dataclass(frozen=True, slots=True)
class PeerTls:
    """How this node dials https:// links."""

    trusted_ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        ca = (
            read_pem(self.trusted_ca_file, "--peer-trusted-ca-file")
            if self.trusted_ca_file
            else None
        )
        cert = read_pem(self.cert_file, "--peer-cert-file") if self.cert_file else None
        key = read_pem(self.key_file, "--peer-key-file") if self.key_file else None
        return grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )


def server_tls(
    cert_file: Path | None,
    key_file: Path | None,
    trusted_ca_file: Path | None,
    client_cert_auth: bool,
) -> ServerTls | None:
    if cert_file is None and key_file is None:
        if client_cert_auth or trusted_ca_file is not None:
            raise ConfigError(
                "--client-cert-auth and --trusted-ca-file need --cert-file and --key-file"
            )
        return None
    if cert_file is None or key_file is None:
        raise ConfigError("TLS needs both --cert-file and --key-file")
    if client_cert_auth and trusted_ca_file is None:
        raise ConfigError(
            "--client-cert-auth needs --trusted-ca-file (the CA that signs client certificates)"
        )
    tls = ServerTls(cert_file, key_file, trusted_ca_file, client_cert_auth)
    tls.credentials()  # read the files now: a missing one is a start-up error
    return tls


def peer_tls(
    trusted_ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> PeerTls:
    if (cert_file is None) != (key_file is None):
        raise ConfigError("--peer-cert-file and --peer-key-file go together")
    tls = PeerTls(trusted_ca_file, cert_file, key_file)
    tls.credentials()
    return tls


def read_pem(path: Path | None, flag: str) -> bytes:
    assert path is not None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"{flag} {path}: not a PEM file")
    return data


def verifying_as_etcd(context: ssl.SSLContext) -> ssl.SSLContext:
    """``context`` checking certificates as etcd (Go), the gRPC port (BoringSSL) and libpq do.

    Python 3.13 turned on OpenSSL's strict X.509 mode in ``create_default_context``: it
    refuses, say, a certificate without an Authority Key Identifier, which simple tools leave
    out and those three accept. Chains, dates, names and usages are checked as before; only
    the extra strictness goes, so the gateway takes the certificates the gRPC port takes."""
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return context


def server_ssl_context(tls: ServerTls) -> ssl.SSLContext:
    """The same certificates and client-certificate rule for an HTTP listener (the gateway)."""
    context = verifying_as_etcd(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.trusted_ca_file is not None:
        context.load_verify_locations(str(tls.trusted_ca_file))
    context.verify_mode = ssl.CERT_REQUIRED if tls.client_cert_auth else ssl.CERT_NONE
    return context
