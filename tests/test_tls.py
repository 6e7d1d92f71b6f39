"""TLS on the gRPC port and on replication links, with certificates made at test time."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from shim.app import datastore_ssl
from shim.config import ServerConfig
from shim.pb import rpc_pb2, rpc_pb2_grpc
from shim.tls import ServerTls, server_ssl_context
from tests.support.certs import CertificateAuthority
from tests.support.curl import CURL, curl
from tests.support.etcd import etcdctl
from tests.support.net import free_port
from tests.support.process import child_env
from tests.support.shim_server import OUTSIDE_CHECKOUT
from tests.support.tls_shim import TlsShim


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def test_clients_need_a_certificate_signed_by_the_trusted_ca(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    with TlsShim(tmp_path / "a", ca, []) as node:
        assert node.etcdctl("put", "/tls/k", "v").stdout.strip() == "OK"
        assert node.etcdctl("get", "/tls/k", "--print-value-only").stdout.strip() == "v"

        # etcdctl without a client certificate: refused
        no_cert = etcdctl(
            f"https://{node.endpoint}",
            "--cacert",
            str(ca.cert_path),
            "--command-timeout=3s",
            "get",
            "/tls/k",
            check=False,
        )
        assert no_cert.returncode != 0

        # a certificate from another CA: refused
        stranger = CertificateAuthority(tmp_path / "other-pki", "another CA").issue("mallory")
        with node.channel(stranger) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"/tls/k"), timeout=3)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        # plaintext against the TLS port: refused
        with grpc.insecure_channel(node.endpoint) as channel, pytest.raises(grpc.RpcError):
            rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"/tls/k"), timeout=3)

        # a valid certificate from Python: works, and MemberList shows an https URL
        with node.channel() as channel:
            got = rpc_pb2_grpc.KVStub(channel).Range(rpc_pb2.RangeRequest(key=b"/tls/k"))
            assert got.kvs[0].value == b"v"
            members = rpc_pb2_grpc.ClusterStub(channel).MemberList(rpc_pb2.MemberListRequest())
            assert members.members[0].clientURLs[0].startswith("https://")


def test_replication_links_run_over_mutual_tls(tmp_path: Path, ca: CertificateAuthority) -> None:
    with TlsShim(tmp_path / "parent", ca, ["--bootstrap-token", "t0ken"]) as parent:
        peer = ca.issue("child-peer")
        join_args = [
            "--join", f"https://{parent.endpoint}", "--token", "t0ken",
            "--peer-trusted-ca-file", str(ca.cert_path),
        ]
        child_args = [*join_args, "--peer-cert-file", str(peer.cert),
                      "--peer-key-file", str(peer.key)]
        with TlsShim(tmp_path / "child", ca, child_args) as child:
            child.etcdctl("put", "/tls/from-child", "1")
            parent.etcdctl("put", "/tls/from-parent", "2")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                on_parent = parent.etcdctl("get", "/tls/", "--prefix", "--keys-only").stdout.split()
                on_child = child.etcdctl("get", "/tls/", "--prefix", "--keys-only").stdout.split()
                if on_parent == on_child == ["/tls/from-child", "/tls/from-parent"]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail(f"no convergence over TLS: parent {on_parent}, child {on_child}")

        # A node without a peer certificate cannot link to a parent that requires one: its
        # attempt ends (the "link to ... down" line) without a link, and nothing crossed.
        with TlsShim(tmp_path / "lone", ca, join_args) as lone:
            lone.etcdctl("put", "/tls/lonely", "3")
            attempt = f"link to https://{parent.endpoint} down"
            deadline = time.monotonic() + 20
            while attempt not in lone.log_tail(200) and time.monotonic() < deadline:
                time.sleep(0.1)
            log = lone.log_tail(200)
            assert attempt in log, log
            assert "linked to" not in log, log
            keys = parent.etcdctl("get", "/tls/lonely", "--keys-only").stdout.split()
            assert keys == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cert-file", "{cert}"], "TLS needs both --cert-file and --key-file"),
        (["--cert-file", "{missing}", "--key-file", "{key}"], "No such file"),
        (
            ["--cert-file", "{cert}", "--key-file", "{key}", "--client-cert-auth"],
            "--client-cert-auth needs --trusted-ca-file",
        ),
        (["--listen-address", "https://127.0.0.1:0"], "needs --cert-file and --key-file"),
        (
            ["--cert-file", "{key}", "--key-file", "{cert}", "--trusted-ca-file", "{notpem}"],
            "not a PEM file",
        ),
    ],
)
def test_bad_tls_flags_exit_2_with_one_line(
    tmp_path: Path, ca: CertificateAuthority, args: list[str], message: str
) -> None:
    files = ca.issue("server")
    notpem = tmp_path / "notpem.txt"
    notpem.write_text("hello")
    values = {
        "cert": files.cert,
        "key": files.key,
        "missing": tmp_path / "nope.crt",
        "notpem": notpem,
    }
    argv = [a.format(**values) for a in args]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "shim",
            "serve",
            "--datastore-endpoint",
            f"sqlite://{tmp_path}/x.db",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=OUTSIDE_CHECKOUT,
        env=child_env({}),
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shim: ") and message in lines[0], lines


def test_gateway_serves_https_with_the_same_certificates(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}/v3/kv/put"
    body = '{"key": "dGxz", "value": "dg=="}'
    with TlsShim(tmp_path / "gw", ca, ["--listen-client-http-urls", url.rsplit("/v3", 1)[0]]) \
            as node:
        files = node.client_files
        answer = curl(url, body, extra=("--cacert", str(ca.cert_path), "--cert",
                                        str(files.cert), "--key", str(files.key)))
        assert answer.status == 200 and b'"revision":"2"' in answer.body
        # --client-cert-auth holds on the gateway's port too.
        refused = subprocess.run([CURL, "-sS", "--cacert", str(ca.cert_path), "-X", "POST", url,
                                  "-d", body], capture_output=True, timeout=30)
        assert refused.returncode != 0
        assert node.etcdctl("get", "tls", "--print-value-only").stdout.strip() == "v"


def test_certificates_without_key_identifiers_are_taken_as_etcd_takes_them(
    ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test CA's certificates carry no Authority Key Identifier, as those of simple tools
    often don't; etcd (Go), the gRPC port (BoringSSL) and libpq take them. Python 3.13's
    default context refuses them (OpenSSL's strict X.509 mode), so the gateway's context and
    the one shim dials PostgreSQL with turn that mode off. The default context is made
    strict here as 3.13 makes it, so this fails without that on any Python; on 3.13 the
    handshakes of test_gateway_serves_https_with_the_same_certificates and test_postgres_tls
    fail without it too (seen 2026-12-08)."""
    default_context = ssl.create_default_context

    def as_python_3_13(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        context = default_context(*args, **kwargs)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        return context

    monkeypatch.setattr(ssl, "create_default_context", as_python_3_13)
    files = ca.issue("no-key-identifiers")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    gateway = server_ssl_context(ServerTls(files.cert, files.key, ca.cert_path, True))
    datastore = datastore_ssl(ServerConfig(
        datastore_cafile=ca.cert_path, datastore_certfile=files.cert, datastore_keyfile=files.key
    ))
    assert datastore is not None
    for context in (gateway, datastore):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert not context.verify_flags & ssl.VERIFY_X509_STRICT
