"""shim serving TLS with certificates made at test time (tests/support/certs.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .certs import CertFiles, CertificateAuthority
from .etcd import etcdctl
from .shim_server import ShimServer


def credentials(ca: Path, client: CertFiles | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client.key.read_bytes() if client else None,
        certificate_chain=client.cert.read_bytes() if client else None,
    )


class TlsShim(ShimServer):
    """A shim serving TLS; ready once health answers over TLS with a client certificate."""

    def __init__(self, workdir: Path, ca: CertificateAuthority, extra_args: list[str]) -> None:
        self.ca = ca
        self.server_files = ca.issue(f"server-{workdir.name}")
        self.client_files = ca.issue(f"client-{workdir.name}")
        super().__init__(
            workdir,
            extra_args=[
                "--cert-file",
                str(self.server_files.cert),
                "--key-file",
                str(self.server_files.key),
                "--trusted-ca-file",
                str(ca.cert_path),
                "--client-cert-auth",
                *extra_args,
            ],
        )

    def channel(self, client: CertFiles | None = None) -> grpc.Channel:
        creds = credentials(self.ca.cert_path, client or self.client_files)
        return grpc.secure_channel(self.endpoint, creds)

    def is_ready(self) -> bool:
        with self.channel() as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            except grpc.RpcError:
                return False
            return True

    def etcdctl(
        self, *args: str, client: CertFiles | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[Any]:
        files = client or self.client_files
        return etcdctl(
            f"https://{self.endpoint}",
            "--cacert",
            str(self.ca.cert_path),
            "--cert",
            str(files.cert),
            "--key",
            str(files.key),
            "--command-timeout=3s",
            *args,
            check=check,
        )
