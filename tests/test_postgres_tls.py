"""TLS to PostgreSQL with k3s's flags: --datastore-cafile/--datastore-certfile/--datastore-keyfile,
against a real PostgreSQL server that has TLS on (certificates made at test time)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shim.pb import rpc_pb2
from tests.support.certs import CertificateAuthority
from tests.support.client import Client
from tests.support.postgres import PostgresServer
from tests.support.process import child_env
from tests.support.shim_server import OUTSIDE_CHECKOUT, ShimServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("pg-pki"))


@pytest.fixture(scope="module")
def tls_postgres(pki: CertificateAuthority) -> Iterator[PostgresServer]:
    files = pki.issue("postgres-server")
    server = PostgresServer()
    # PostgreSQL reads its key as its own user, and refuses a key others can read.
    cert, key = server.workdir / "server.crt", server.workdir / "server.key"
    shutil.copy(files.cert, cert)
    shutil.copy(files.key, key)
    for path in (cert, key):
        if server.owner is not None:
            os.chown(path, server.owner.pw_uid, server.owner.pw_gid)
    key.chmod(0o600)
    server.settings.update({"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)})
    with server:
        yield server


def _endpoint(server: PostgresServer) -> str:
    # No sslmode in the URL: the TLS flags decide.
    return server.url(server.new_database_name()).replace("?sslmode=disable", "")


def test_shim_talks_tls_to_postgres_and_verifies_it(
    tmp_path: Path, pki: CertificateAuthority, tls_postgres: PostgresServer
) -> None:
    client_files = pki.issue("shim-client")
    args = ["--datastore-cafile", str(pki.cert_path), "--datastore-certfile",
            str(client_files.cert), "--datastore-keyfile", str(client_files.key)]
    endpoint = _endpoint(tls_postgres)
    with ShimServer(tmp_path / "s", datastore_endpoint=endpoint, extra_args=args) as node, \
            Client(node.endpoint) as client:
        client.kv.Put(rpc_pb2.PutRequest(key=b"/pg-tls", value=b"encrypted in transit"))
        got = client.kv.Range(rpc_pb2.RangeRequest(key=b"/pg-tls"))
        assert got.kvs[0].value == b"encrypted in transit"
        rows = tls_postgres.execute(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
            "WHERE a.application_name = 'shim'"
        )
        assert rows and all(row[0] is True for row in rows), rows


def test_a_postgres_server_signed_by_another_ca_is_refused(
    tmp_path: Path, tls_postgres: PostgresServer
) -> None:
    stranger = CertificateAuthority(tmp_path / "other", "another CA")
    result = subprocess.run(
        [sys.executable, "-m", "shim", "serve", "--listen-address", "127.0.0.1:0",
         "--datastore-endpoint", _endpoint(tls_postgres),
         "--datastore-cafile", str(stranger.cert_path)],
        capture_output=True, text=True, timeout=60, cwd=OUTSIDE_CHECKOUT, env=child_env({}),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shim: "), lines
    assert "certificate verify failed" in lines[0], lines
    assert tls_postgres.superuser_password not in result.stderr
