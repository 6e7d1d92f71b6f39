"""The HTTP/JSON gateway (``--listen-client-http-urls``), with curl, side by side with etcd 3.5.

Every request goes to a real etcd's client URL and to shim's gateway, in the same order, so
revisions agree; the answers are compared byte for byte (status, content type, body) after
normalizing only the cluster and member IDs and the raft term (see support.curl.normalized).
Lease IDs are given explicitly so that they agree too.
"""

from __future__ import annotations

import base64
import functools
import json
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import REPO_ROOT, Client, EtcdServer, ShimServer, free_port
from tests.support.curl import CurlStream, HttpAnswer, curl, normalized
from tests.support.waits import wait_until


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class Pair:
    """etcd's and shim's HTTP endpoints."""

    def __init__(self, etcd: str, shim: str) -> None:
        self.etcd = etcd
        self.shim = shim

    def both(self, path: str, body: str | bytes | None = "", method: str = "POST",
             headers: tuple[str, ...] = ()) -> tuple[HttpAnswer, HttpAnswer]:
        return (curl(self.etcd + path, body, method, headers),
                curl(self.shim + path, body, method, headers))

    def same(self, path: str, body: str | bytes | None = "", method: str = "POST") -> HttpAnswer:
        """Send to both; the answers must match. Returns shim's."""
        on_etcd, on_shim = self.both(path, body, method)
        assert on_shim.status == on_etcd.status, (path, body, on_etcd, on_shim)
        assert on_shim.headers.get("content-type") == on_etcd.headers.get("content-type"), (
            path, body, on_etcd.headers, on_shim.headers)
        assert normalized(on_shim.body) == normalized(on_etcd.body), (path, body)
        return on_shim


@pytest.fixture(scope="module")
def gateway_shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShimServer]:
    port = free_port()
    server = ShimServer(
        tmp_path_factory.mktemp("shim"),
        extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{port}"],
    )
    server.http_url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    with server:
        yield server


@pytest.fixture(scope="module")
def pair(etcd: EtcdServer, gateway_shim: ShimServer) -> Pair:
    return Pair(f"http://{etcd.endpoint}", gateway_shim.http_url)  # type: ignore[attr-defined]


# --- unary requests ---------------------------------------------------------------------------

KV_REQUESTS: list[tuple[str, str]] = [
    ("/v3/kv/put", json.dumps({"key": b64("foo"), "value": b64("bar")})),
    ("/v3/kv/put", json.dumps({"key": b64("foo"), "value": b64("baz"), "prev_kv": True})),
    ("/v3/kv/put", json.dumps({"key": b64("foo/a"), "value": b64("<&>\u2028")})),
    ("/v3/kv/range", json.dumps({"key": b64("foo")})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "range_end": b64("fop")})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "rangeEnd": b64("fop"), "countOnly": True})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "range_end": b64("fop"), "limit": "1"})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "range_end": b64("fop"),
                                 "limit": 9223372036854775807})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "range_end": b64("fop"),
                                 "sort_order": "DESCEND", "sort_target": "MOD"})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "range_end": b64("fop"), "sort_order": 2})),
    ("/v3/kv/range", json.dumps({"key": b64("nothing")})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "revision": "2"})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "revision": "100"})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "keys_only": True, "unknown_field": 1})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "limit": None, "range_end": None})),
    ("/v3/kv/range", json.dumps({"key": [102, 111, 111]})),
    ("/v3/kv/range", json.dumps({"key": b64("foo")}) + " trailing garbage"),
    ("/v3/kv/range", "null"),
    ("/v3/kv/range", ""),
    ("/v3/kv/txn", json.dumps({
        "compare": [{"key": b64("foo"), "result": "EQUAL", "target": "VALUE",
                     "value": b64("baz")}],
        "success": [{"request_range": {"key": b64("foo")}},
                    {"request_put": {"key": b64("t1"), "value": b64("1")}},
                    {"request_txn": {"success": [{"request_put": {"key": b64("t2")}}]}}],
        "failure": [{"request_delete_range": {"key": b64("foo")}}],
    })),
    ("/v3/kv/txn", json.dumps({
        "compare": [{"key": b64("foo"), "result": "GREATER", "target": "VERSION",
                     "version": "10"}],
        "failure": [{"request_delete_range": {"key": b64("t1"), "prev_kv": True}},
                    {"request_range": {"key": b64("foo"), "limit": "9223372036854775807"}}],
    })),
    ("/v3/kv/txn", json.dumps({"compare": [{"key": b64("foo"), "result": 7, "target": "MOD",
                                            "mod_revision": "0"}]})),
    ("/v3/kv/deleterange", json.dumps({"key": b64("t2"), "prev_kv": True})),
    ("/v3/kv/deleterange", json.dumps({"key": b64("none")})),
    ("/v3/kv/compaction", json.dumps({"revision": "3"})),
    ("/v3/kv/compaction", json.dumps({"revision": "3"})),
    ("/v3/kv/range", json.dumps({"key": b64("foo"), "revision": "2"})),
    ("/v3/lease/grant", json.dumps({"TTL": "60", "ID": "7"})),
    ("/v3/lease/grant", json.dumps({"TTL": 60, "ID": "7"})),
    ("/v3/kv/put", json.dumps({"key": b64("leased"), "lease": "7"})),
    ("/v3/lease/timetolive", json.dumps({"ID": "7", "keys": True})),
    ("/v3/kv/lease/timetolive", json.dumps({"ID": "8"})),
    ("/v3/lease/leases", "{}"),
    ("/v3/kv/lease/leases", "{}"),
    ("/v3/lease/revoke", json.dumps({"ID": "7"})),
    ("/v3/kv/lease/revoke", json.dumps({"ID": "7"})),
    ("/v3/lease/grant", json.dumps({"TTL": "9223372036854775807", "ID": "9"})),
    ("/v3/maintenance/alarm", "{}"),
    ("/v3beta/kv/range", json.dumps({"key": b64("foo")})),
]

BAD_REQUESTS: list[tuple[str, str]] = [
    ("/v3/kv/range", "{}"),
    ("/v3/kv/range", json.dumps({"key": ""})),
    ("/v3/kv/range", "garbage"),
    ("/v3/kv/range", '{"key": '),
    ("/v3/kv/range", '{"key" "Zm9v"}'),
    ("/v3/kv/range", '{"key": "Zm9v",}'),
    ("/v3/kv/range", '{"key": tru}'),
    ("/v3/kv/range", '{"key": "a\\qb"}'),
    ("/v3/kv/range", "[1]"),
    ("/v3/kv/range", '"text"'),
    ("/v3/kv/range", json.dumps({"key": 123})),
    ("/v3/kv/range", json.dumps({"key": True})),
    ("/v3/kv/range", json.dumps({"key": {}})),
    ("/v3/kv/range", json.dumps({"key": [300]})),
    ("/v3/kv/range", json.dumps({"key": "Zm9"})),
    ("/v3/kv/range", json.dumps({"key": "a=b="})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v!"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": "abc"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": "1.5"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": 1e3})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": ""})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": True})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": [1]})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": "9223372036854775808"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "limit": -9223372036854775809})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "serializable": "true"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "keys_only": 1})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "sort_order": True})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "sort_order": "SIDEWAYS"})),
    ("/v3/kv/range", json.dumps({"key": "Zm9v", "sort_order": 5000000000})),
    ("/v3/kv/txn", json.dumps({"compare": {"key": "Zm9v"}})),
    ("/v3/kv/txn", json.dumps({"compare": [5]})),
    ("/v3/kv/txn", json.dumps({"success": [{"request_put": {"key": "Zm9v"}},
                                           {"request_put": {"key": "Zm9v"}}]})),
    ("/v3/kv/txn", json.dumps({"success": [{}]})),
    ("/v3/kv/put", json.dumps({"key": "Zm9v", "value": "eA==", "ignore_value": True})),
    ("/v3/kv/put", json.dumps({"key": "Zm9v", "lease": "12345"})),
    ("/v3/lease/revoke", json.dumps({"ID": "424242"})),
    ("/v3/kv/nope", "{}"),
    ("/v3/nope", "{}"),
    ("/nope", "{}"),
]


def test_answers_match_etcd_byte_for_byte(pair: Pair) -> None:
    for path, body in KV_REQUESTS:
        pair.same(path, body)


@pytest.mark.parametrize(("path", "body"), BAD_REQUESTS)
def test_bad_requests_get_etcds_error_bodies(pair: Pair, path: str, body: str) -> None:
    answer = pair.same(path, body)
    assert answer.status >= 400
    if path.startswith("/v3/kv/") and path != "/v3/kv/nope":
        error = json.loads(answer.body)
        assert set(error) == {"error", "code", "message"} and error["error"] == error["message"]


UNCLEAN_PATHS = [
    "/v3//kv/range", "/v3/./kv/range?x=1&y='2'", "/v3/kv/../kv/range", "/v3", "//health",
    "/a/../../b", "/v3beta//kv/range", "/v3beta", "/v3/", "/v3/kv/range/", "/x/./",
]


@pytest.mark.parametrize("method", ["POST", "GET", "HEAD"])
def test_paths_go_would_clean_are_redirected_as_etcd_does(pair: Pair, method: str) -> None:
    """etcd's gateway sits behind Go's ServeMux, which answers a path with "//", "." or ".."
    (and "/v3" without its slash) with a 301 to the path it serves; a client following it
    gets there (as a GET, which the gateway then refuses, as etcd's does)."""
    for path in UNCLEAN_PATHS:
        head = method == "HEAD"
        extra = ("--path-as-is", "--head") if head else ("--path-as-is",)
        on_etcd, on_shim = (
            curl(base + path, None if head else '{"key": "YQ=="}', method, extra=extra)
            for base in (pair.etcd, pair.shim)
        )
        seen = (path, method, on_etcd, on_shim)
        assert on_shim.status == on_etcd.status, seen
        for header in ("content-type", "location", "content-length"):
            assert on_shim.headers.get(header) == on_etcd.headers.get(header), (header, *seen)
        assert on_shim.body == on_etcd.body, seen


def test_a_proxys_absolute_form_target_is_served_as_its_path(pair: Pair) -> None:
    """`POST http://host/v3/kv/range HTTP/1.1`, as a client sends it through an HTTP proxy:
    the path is what counts, as in Go's server (it once read as an unknown path)."""
    for target in ("http://example.com/v3/kv/range", "HTTP://example.com//v3/kv/range?x=1"):
        on_etcd, on_shim = (
            curl(base + "/ignored", '{"key": "YQ=="}', extra=("--request-target", target))
            for base in (pair.etcd, pair.shim)
        )
        seen = (target, on_etcd, on_shim)
        assert on_shim.status == on_etcd.status, seen
        assert on_shim.headers.get("location") == on_etcd.headers.get("location"), seen
        assert normalized(on_shim.body) == normalized(on_etcd.body), seen


def _raw_answer(base: str, method: str, target: str) -> tuple[bytes, list[bytes]]:
    """The status line and Location headers of `method target` sent as written (curl
    rewrites odd targets, and opens a tunnel for CONNECT)."""
    host, port = base.removeprefix("http://").split(":")
    body = b'{"key":"YQ=="}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
    lines = answer.split(b"\r\n\r\n")[0].split(b"\r\n")
    return lines[0], [line for line in lines if line.lower().startswith(b"location:")]


def _status_of_connect(base: str, target: str) -> int:
    return int(_raw_answer(base, "CONNECT", target)[0].split(b" ", 2)[1])


@pytest.mark.parametrize(("method", "target"), [
    ("GET", "http:/version"), ("POST", "ftp://h/v3/kv/range"), ("GET", "http://h"),
    ("GET", "http://h?x"), ("GET", "version"), ("GET", "*"), ("GET", "127.0.0.1:1"),
    ("OPTIONS", "*"), ("POST", "http://h//v3/kv/range"),
])
def test_request_targets_are_read_as_gos_server_reads_them(
    pair: Pair, method: str, target: str
) -> None:
    """Absolute forms of any scheme are served by their path (an empty one redirected to
    "/"); a target that is neither that nor a path is a 400, as Go's url.ParseRequestURI
    refuses it."""
    assert _raw_answer(pair.shim, method, target) == _raw_answer(pair.etcd, method, target)


def test_connect_requests_are_answered_without_a_tunnel(
    pair: Pair, gateway_shim: ShimServer
) -> None:
    """CONNECT gets etcd's answers (its target is not cleaned; an authority is a 404), but for
    /metrics, where etcd's 200 would open a tunnel that HTTP/1.1 sends nothing more on: 405,
    where shim once sent the 200's head and then logged a failed connection."""
    for target in ("/v3/kv/range", "/version", "/health", "/nope", "/v3//kv/range",
                   "127.0.0.1:2379"):
        assert _status_of_connect(pair.shim, target) == _status_of_connect(pair.etcd, target), (
            target)
    assert _status_of_connect(pair.shim, "/metrics") == 405
    log = gateway_shim.log_path.read_text()
    assert "ERROR" not in log, log[-2000:]


def test_head_requests_get_etcds_headers_and_no_body(
    pair: Pair, gateway_shim: ShimServer
) -> None:
    """HEAD: the status and headers a GET would get (the body's length, no body), as Go's
    server answers; shim's server once logged each as a failed connection (h11 refused to
    send the body)."""
    for path in ("/health", "/version", "/v3/kv/range", "/nope", "//x"):
        on_etcd, on_shim = (
            curl(base + path, None, "HEAD", extra=("--head",)) for base in (pair.etcd, pair.shim)
        )
        seen = (path, on_etcd, on_shim)
        assert on_shim.status == on_etcd.status and on_shim.body == b"", seen
        for header in ("content-type", "content-length", "location"):
            assert on_shim.headers.get(header) == on_etcd.headers.get(header), (header, *seen)
    log = gateway_shim.log_path.read_text()
    assert "ERROR" not in log, log[-2000:]


def test_wrong_methods_and_preflight(pair: Pair) -> None:
    for path, method in (("/v3/kv/range", "GET"), ("/v3/kv/put", "PUT"), ("/health", "POST"),
                         ("/version", "POST"), ("/v3/kv/range", "OPTIONS")):
        pair.same(path, None, method)
    on_etcd, on_shim = pair.both("/v3/kv/range", None, "GET")
    assert on_shim.headers["access-control-allow-origin"] == "*"
    assert on_shim.headers.get("allow") == on_etcd.headers.get("allow")


def test_health_version_and_metrics(pair: Pair) -> None:
    pair.same("/health", None, "GET")
    on_etcd, on_shim = pair.both("/version", None, "GET")
    assert on_shim.status == 200
    # shim answers as the etcd release it follows (newer than the 3.5.1 it is tested with).
    assert set(json.loads(on_shim.body)) == set(json.loads(on_etcd.body))
    assert json.loads(on_shim.body)["etcdcluster"] == "3.5.0"
    metrics = curl(pair.shim + "/metrics", None, "GET")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert b"shim_revision " in metrics.body


def test_health_fails_on_an_alarm_as_etcd(pair: Pair) -> None:
    """A member that refuses writes is not healthy; ?exclude= names alarms to overlook."""
    alarm = json.dumps({"action": "ACTIVATE", "memberID": "1", "alarm": "NOSPACE"})
    pair.same("/v3/maintenance/alarm", alarm)
    try:
        answer = pair.same("/health", None, "GET")
        assert answer.status == 503
        assert answer.body == b'{"health":"false","reason":"ALARM NOSPACE"}\n'
        assert pair.same("/health?exclude=NOSPACE", None, "GET").status == 200
        assert pair.same("/health?exclude=CORRUPT&serializable=true", None, "GET").status == 503
    finally:
        pair.same("/v3/maintenance/alarm", alarm.replace("ACTIVATE", "DEACTIVATE"))
    assert pair.same("/health", None, "GET").status == 200


def test_livez_and_readyz_as_etcd_3_5_21(pair: Pair) -> None:
    """etcd serves these since 3.5.11 (the etcd under test is older): its formats, by hand."""
    get = functools.partial(curl, body=None, method="GET")
    live = get(pair.shim + "/livez")
    assert (live.status, live.body) == (200, b"ok\n")
    assert live.headers["content-type"] == "text/plain; charset=utf-8"
    assert get(pair.shim + "/livez?verbose").body == b"[+]serializable_read ok\nok\n"
    assert get(pair.shim + "/readyz?verbose&exclude=non_learner").body == (
        b"[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n")
    assert get(pair.shim + "/readyz/linearizable_read").body == b"ok\n"
    assert get(pair.shim + "/readyz/nope").status == 404
    assert curl(pair.shim + "/readyz", None, "POST").status == 405
    corrupt = json.dumps({"action": "ACTIVATE", "memberID": "1", "alarm": "CORRUPT"})
    assert curl(pair.shim + "/v3/maintenance/alarm", corrupt).status == 200
    try:
        ready = get(pair.shim + "/readyz")
        assert ready.status == 503
        assert ready.body == (b"[-]data_corruption failed: alarm activated: CORRUPT\n"
                              b"[+]serializable_read ok\n[+]linearizable_read ok\n"
                              b"[+]non_learner ok\n\n")
        assert get(pair.shim + "/readyz?exclude=data_corruption").status == 200
        assert get(pair.shim + "/readyz/data_corruption").status == 503
        assert get(pair.shim + "/livez").status == 200  # alive, if not ready
        assert get(pair.shim + "/health").body == (
            b'{"health":"false","reason":"ALARM CORRUPT"}\n')
    finally:
        curl(pair.shim + "/v3/maintenance/alarm", corrupt.replace("ACTIVATE", "DEACTIVATE"))
    assert get(pair.shim + "/readyz").status == 200


def test_listen_metrics_urls_serve_metrics_and_health_only(
    etcd_factory: Any, shim_factory: Any
) -> None:
    """etcd's --listen-metrics-urls (kubeadm probes /health and /readyz there, Prometheus
    scrapes /metrics): the same paths answer, and nothing else does."""
    etcd_port, shim_port = free_port(), free_port()
    etcd_factory(extra_args=[f"--listen-metrics-urls=http://127.0.0.1:{etcd_port}"])
    shim = shim_factory(extra_args=["--listen-metrics-urls", f"http://127.0.0.1:{shim_port}"])
    on = Pair(f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{shim_port}")
    on.same("/health", None, "GET")
    on.same("/health?exclude=NOSPACE&serializable=true", None, "GET")
    for path, method in (("/v3/kv/range", "POST"), ("/version", "GET"), ("/nope", "GET"),
                         ("/health", "POST")):
        on.same(path, "{}" if method == "POST" else None, method)
    with Client(shim.endpoint) as client:  # counted wherever /metrics is served, as etcd
        client.kv.Put(pb.PutRequest(key=b"counted", value=b"v"))
    scraped = curl(on.shim + "/metrics", None, "GET")
    assert scraped.status == 200 and b"\netcd_server_has_leader 1.0\n" in scraped.body
    assert (b'grpc_server_handled_total{grpc_code="OK",grpc_method="Put",'
            b'grpc_service="etcdserverpb.KV",grpc_type="unary"} 1.0') in scraped.body
    ready = curl(on.shim + "/readyz?verbose", None, "GET")
    assert ready.status == 200 and ready.body.endswith(b"[+]non_learner ok\nok\n")


def test_member_list_has_etcds_fields(pair: Pair, gateway_shim: ShimServer) -> None:
    """The URLs differ (each server has its own); every field etcd fills, shim fills."""
    on_etcd, on_shim = pair.both("/v3/cluster/member/list", "{}")
    assert on_shim.status == on_etcd.status == 200
    [etcd_member] = json.loads(on_etcd.body)["members"]
    [shim_member] = json.loads(on_shim.body)["members"]
    assert list(shim_member) == list(etcd_member) == ["ID", "name", "peerURLs", "clientURLs"]
    # Links ride the gRPC client port: that is where peers reach shim.
    grpc_url = f"http://{gateway_shim.endpoint}"
    assert shim_member["peerURLs"] == shim_member["clientURLs"] == [grpc_url]


def test_request_size_limits_match_etcd(pair: Pair) -> None:
    too_large = json.dumps({"key": b64("big"), "value": b64(b"x" * 1_600_000)})
    over_grpc = json.dumps({"key": b64("big"), "value": b64(b"x" * 2_200_000)})
    assert pair.same("/v3/kv/put", too_large).status == 400
    assert pair.same("/v3/kv/put", over_grpc).status == 429
    # Beyond what any accepted message could need in JSON: refused before it is decoded.
    huge = curl(pair.shim + "/v3/kv/put", b'{"key":"' + b"A" * 9_000_000 + b'"}')
    assert huge.status == 429
    assert json.loads(huge.body)["code"] == 8


def test_lock_and_election_match_etcd(pair: Pair) -> None:
    pair.same("/v3/lease/grant", json.dumps({"TTL": "60", "ID": "77"}))
    lock = pair.same("/v3/lock/lock", json.dumps({"name": b64("gw-lock"), "lease": "77"}))
    key = json.loads(lock.body)["key"]
    pair.same("/v3/lock/unlock", json.dumps({"key": key}))
    election = b64("gw-election")
    pair.same("/v3/election/leader", json.dumps({"name": election}))  # nobody: an error
    campaign = pair.same("/v3/election/campaign", json.dumps(
        {"name": election, "lease": "77", "value": b64("first")}))
    leader = json.loads(campaign.body)["leader"]
    pair.same("/v3/election/proclaim", json.dumps({"leader": leader, "value": b64("second")}))
    pair.same("/v3/election/leader", json.dumps({"name": election}))
    on_etcd = CurlStream(pair.etcd + "/v3/election/observe", json.dumps({"name": election}))
    on_shim = CurlStream(pair.shim + "/v3/election/observe", json.dumps({"name": election}))
    with on_etcd, on_shim:
        assert normalized(on_shim.next_line()) == normalized(on_etcd.next_line())
    pair.same("/v3/election/resign", json.dumps({"leader": leader}))
    pair.same("/v3/lease/revoke", json.dumps({"ID": "77"}))


def test_auth_over_the_gateway_matches_etcd(
    etcd_factory: Any, tmp_path: Path
) -> None:
    """Users, roles and enabling through JSON, then requests with the Authorization header
    as the token, as etcd's gateway passes it on (fresh servers: auth stays on)."""
    port = free_port()
    with ShimServer(tmp_path / "shim", extra_args=[
        "--listen-client-http-urls", f"http://127.0.0.1:{port}",
    ]):
        pair = Pair(f"http://{etcd_factory().endpoint}", f"http://127.0.0.1:{port}")
        pair.same("/v3/auth/status", "{}")
        pair.same("/v3/auth/enable", "{}")  # no root user yet: an error
        pair.same("/v3/auth/user/add", json.dumps({"name": "root", "password": "pw"}))
        pair.same("/v3/auth/role/add", json.dumps({"name": "root"}))
        pair.same("/v3/auth/user/grant", json.dumps({"user": "root", "role": "root"}))
        pair.same("/v3/auth/enable", "{}")
        put = json.dumps({"key": b64("k"), "value": b64("v")})
        refused = pair.same("/v3/kv/put", put)  # no token: "user name is empty"
        assert json.loads(refused.body)["message"] == "etcdserver: user name is empty"
        pair.same("/v3/auth/authenticate", json.dumps({"name": "root", "password": "no"}))
        tokens = [
            json.loads(answer.body)["token"]
            for answer in pair.both("/v3/auth/authenticate",
                                    json.dumps({"name": "root", "password": "pw"}))
        ]
        answers = [
            curl(url + "/v3/kv/put", put, "POST", (f"Authorization: {token}",))
            for url, token in zip((pair.etcd, pair.shim), tokens, strict=True)
        ]
        assert [a.status for a in answers] == [200, 200]
        assert normalized(answers[1].body) == normalized(answers[0].body)
        forged = pair.both("/v3/kv/put", put, headers=("Authorization: forged",))
        assert forged[1].status == forged[0].status
        assert normalized(forged[1].body) == normalized(forged[0].body)
        assert json.loads(forged[1].body)["message"] == "etcdserver: invalid auth token"
        # A stream refused before its first reply: the error object alone, no newline after.
        snapshot = pair.same("/v3/maintenance/snapshot", "{}")
        assert snapshot.body.startswith(b'{"error":{') and snapshot.body.endswith(b"}}")


# --- streams ----------------------------------------------------------------------------------


def watch_both(pair: Pair, body: str) -> tuple[CurlStream, CurlStream]:
    return CurlStream(pair.etcd + "/v3/watch", body), CurlStream(pair.shim + "/v3/watch", body)


def test_watch_stream_matches_etcd(pair: Pair) -> None:
    create = json.dumps({"create_request": {"key": b64("w/"), "range_end": b64("w0"),
                                            "prev_kv": True}})
    on_etcd, on_shim = watch_both(pair, create + json.dumps({"progress_request": {}}))
    with on_etcd, on_shim:
        assert [normalized(x) for x in on_shim.lines(2)] == [
            normalized(x) for x in on_etcd.lines(2)]
        pair.same("/v3/kv/put", json.dumps({"key": b64("w/1"), "value": b64("one")}))
        pair.same("/v3/kv/put", json.dumps({"key": b64("w/1"), "value": b64("two")}))
        pair.same("/v3/kv/deleterange", json.dumps({"key": b64("w/1")}))
        etcd_lines = on_etcd.lines(3)
        assert [normalized(x) for x in on_shim.lines(3)] == [normalized(x) for x in etcd_lines]
        assert b'"type":"DELETE"' in etcd_lines[2]


def test_watch_from_int64_min_is_canceled_as_compacted(pair: Pair) -> None:
    create = json.dumps({"create_request": {"key": b64("foo"),
                                            "start_revision": "-9223372036854775808"}})
    on_etcd, on_shim = watch_both(pair, create)
    with on_etcd, on_shim:
        etcd_lines = on_etcd.lines(2)
        assert b'"canceled":true' in etcd_lines[1]
        assert [normalized(x) for x in on_shim.lines(2)] == [normalized(x) for x in etcd_lines]


@pytest.mark.parametrize("body", ["garbage", json.dumps({"create_request": {"key": 5}}),
                                  json.dumps({"create_request": {"filters": ["NOPE"]}})])
def test_watch_refuses_a_bad_first_message_as_etcd(pair: Pair, body: str) -> None:
    pair.same("/v3/watch", body)


def test_watch_keeps_going_after_a_bad_later_message(pair: Pair) -> None:
    body = json.dumps({"create_request": {"key": b64("later")}}) + " garbage"
    with CurlStream(pair.shim + "/v3/watch", body) as stream:
        assert b'"created":true' in stream.next_line()
        curl(pair.shim + "/v3/kv/put", json.dumps({"key": b64("later"), "value": b64("v")}))
        curl(pair.etcd + "/v3/kv/put", json.dumps({"key": b64("later"), "value": b64("v")}))
        assert b'"events"' in stream.next_line()


def test_watch_over_a_websocket_matches_etcd(pair: Pair) -> None:
    """etcd's wsproxy: GET /v3/watch upgraded to a websocket, each message a request, each
    answer line a text message (a browser's way to watch); both servers answer the same."""
    from websockets.sync.client import connect

    seen = []
    for base in (pair.etcd, pair.shim):
        with connect(base.replace("http://", "ws://") + "/v3/watch") as socket:
            socket.send(json.dumps({"create_request": {"key": b64("ws"), "prev_kv": True}}))
            created = socket.recv(timeout=10)
            curl(base + "/v3/kv/put", json.dumps({"key": b64("ws"), "value": b64("1")}))
            socket.send(json.dumps({"progress_request": {}}))  # the second message
            event = socket.recv(timeout=10)
            progress = socket.recv(timeout=10)
        seen.append([normalized(str(m).encode()) for m in (created, event, progress)])
    assert seen[1] == seen[0]
    assert b'"created":true' in seen[1][0] and b'"events"' in seen[1][1]
    # A path nobody serves still upgrades (wsproxy takes every /v3/ path): the answer's line.
    nope = []
    for base in (pair.etcd, pair.shim):
        with connect(base.replace("http://", "ws://") + "/v3/nope") as socket:
            nope.append(socket.recv(timeout=10))
    assert nope[1] == nope[0]
    # A handshake gorilla refuses: not a GET.
    upgrade = ("Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    on_etcd, on_shim = pair.both("/v3/watch", "{}", "POST", upgrade)
    assert (on_shim.status, on_shim.body) == (on_etcd.status, on_etcd.body) == (
        405, b"Method Not Allowed\n")


def test_keepalive_stream_matches_etcd(pair: Pair) -> None:
    pair.same("/v3/lease/grant", json.dumps({"TTL": "30", "ID": "99"}))
    body = json.dumps({"ID": "99"}) + "\n" + json.dumps({"ID": "99"}) + json.dumps({"ID": "1"})
    on_etcd = CurlStream(pair.etcd + "/v3/lease/keepalive", body)
    on_shim = CurlStream(pair.shim + "/v3/lease/keepalive", body)
    with on_etcd, on_shim:
        etcd_lines = on_etcd.rest()
        assert len(etcd_lines) == 3
        assert [normalized(x) for x in on_shim.rest()] == [normalized(x) for x in etcd_lines]
    # No request: the stream ends at once, empty, and without the gRPC reply's metadata.
    on_etcd, on_shim = pair.both("/v3/lease/keepalive", "")
    assert on_shim.status == on_etcd.status == 200 and on_shim.body == on_etcd.body == b""
    for header in ("transfer-encoding", "grpc-metadata-content-type", "content-type"):
        assert on_shim.headers.get(header) == on_etcd.headers.get(header), header
    pair.same("/v3/lease/keepalive", "x")
    pair.same("/v3/lease/revoke", json.dumps({"ID": "99"}))


# --- a gateway client from PyPI -------------------------------------------------------------


def test_etcd3gw_put_get_watch_lease(tmp_path: Path) -> None:
    from etcd3gw.client import Etcd3Client

    port = free_port()  # a server of its own: the shared one must stay in step with etcd
    with ShimServer(tmp_path / "shim",
                    extra_args=["--listen-client-http-urls", f"http://127.0.0.1:{port}"]):
        etcd3gw_session(Etcd3Client(host="127.0.0.1", port=port))


def etcd3gw_session(client: Any) -> None:
    assert client.put("gw/key", "value")
    assert client.get("gw/key") == [b"value"]
    client.put("gw/watched", "1")
    [(_, meta)] = client.get("gw/watched", metadata=True)
    # From the revision of that put: the event comes from history, however late the watch
    # request (sent by etcd3gw's own thread) arrives.
    events, cancel = client.watch("gw/watched", start_revision=int(meta["mod_revision"]))
    try:
        with ThreadPoolExecutor(1) as pool:
            event = pool.submit(next, events).result(timeout=10)
        assert (event["kv"]["key"], event["kv"]["value"]) == (b"gw/watched", b"1")
    finally:
        cancel()
    lease = client.lease(ttl=30)
    assert client.put("gw/leased", "v", lease=lease)
    assert lease.refresh() == 30
    assert lease.keys() == [b"gw/leased"]
    assert lease.revoke()
    assert client.get("gw/leased") == []
    assert client.status()["version"]
    [member] = client.members()
    assert member["peerURLs"] and member["clientURLs"]


def test_garbage_on_the_port_gets_400_and_nothing_breaks(pair: Pair) -> None:
    host, port = pair.shim.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert curl(pair.shim + "/v3/kv/range", json.dumps({"key": b64("foo")})).status == 200


def test_gateway_with_several_serving_processes(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ShimServer(tmp_path / "shim", extra_args=[
        "--processes", "2", "--listen-client-http-urls", url,
    ]):
        for i in range(4):  # connections land on either serving process
            assert curl(url + "/v3/kv/put", json.dumps(
                {"key": b64(f"p/{i}"), "value": b64("v")})).status == 200
        listing = json.loads(curl(url + "/v3/kv/range", json.dumps(
            {"key": b64("p/"), "range_end": b64("p0")})).body)
        assert listing["count"] == "4"
        # One process's counters would pass for the server's: not served (yet).
        assert curl(url + "/metrics", None, "GET").status == 501


# --- the README's commands --------------------------------------------------------------------

README_HTTP = "127.0.0.1:2378"  # the gateway address the README uses


def readme_gateway_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## HTTP/JSON gateway", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_gateway_commands(tmp_path: Path) -> None:
    """The README's commands as a user types them, on free ports instead of 2379/2378."""
    commands = readme_gateway_commands()
    serve, *requests = commands
    http = f"127.0.0.1:{free_port()}"
    assert serve.startswith("shim serve ") and README_HTTP in serve
    flags = serve.removeprefix("shim serve ").replace(README_HTTP, http).split()
    with ShimServer(tmp_path / "shim", extra_args=flags):
        for command in requests:
            argv = shlex.split(command.replace(README_HTTP, http))
            assert argv[0] == "curl"
            if "/v3/watch" in command:  # a stream: its first line, then stop it
                body = argv[argv.index("-d") + 1]
                url = next(arg for arg in argv if arg.startswith("http"))
                with CurlStream(url, body) as stream:
                    assert json.loads(stream.next_line())["result"]["created"] is True
                continue
            done = subprocess.run(argv, capture_output=True, timeout=30, check=True)
            if "/readyz" in command:
                assert done.stdout.endswith(b"\nok\n"), done.stdout
            elif "/metrics" not in command:
                answer = json.loads(done.stdout)
                assert "error" not in answer, (command, answer)


def _raw_websocket(port: int, path: str) -> socket.socket:
    """A websocket client that does the handshake by hand and then reads nothing (a small
    receive buffer, so the server's sends back up)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def _masked_text_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(
        byte ^ mask[i % 4] for i, byte in enumerate(payload))


def test_a_websocket_that_reads_nothing_does_not_hold_the_stop(tmp_path: Path) -> None:
    """The server stops within its grace even when a websocket client has stopped reading
    and the watch's events are backed up behind it (the close frame cannot leave)."""
    port = free_port()
    with ShimServer(tmp_path / "shim", extra_args=[
        "--listen-client-http-urls", f"http://127.0.0.1:{port}",
    ]) as server:
        sock = _raw_websocket(port, "/v3/watch")
        try:
            sock.sendall(_masked_text_frame(b'{"create_request":{"key":"Ymln"}}'))
            big = json.dumps({"key": b64("big"), "value": b64(b"x" * 512 * 1024)})
            for _ in range(20):  # far more than the socket buffers hold
                assert curl(f"http://127.0.0.1:{port}/v3/kv/put", big).status == 200
            started = time.monotonic()
            server.terminate()
            wait_until(lambda: not server.running, 30, "the server to stop")
            assert time.monotonic() - started < 12
            assert server.stop() == 0
            assert "Traceback" not in server.log_tail()
        finally:
            sock.close()


def test_a_websocket_message_over_the_limit_closes_the_socket(pair: Pair) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(pair.shim.replace("http://", "ws://") + "/v3/watch") as socket_:
        socket_.send(b"x" * 9_000_000)  # past 4x the gRPC limit: no request is that big
        with pytest.raises(ConnectionClosed) as closed:
            socket_.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_a_watch_over_a_kept_alive_connection_ends_at_the_stop(tmp_path: Path) -> None:
    """An HTTP client that keeps its connection (Patroni's urllib3 pool does) does not hold
    the stop: its watch ends at once with the error object etcd's gateway sends when its
    server goes (UNAVAILABLE, 503), and the connection is closed rather than kept for a next
    request until the end of the 10 s grace (which made a restart under Patroni take 11 s)."""
    port = free_port()
    with ShimServer(tmp_path / "shim", extra_args=[
        "--listen-client-http-urls", f"http://127.0.0.1:{port}",
    ]) as server:
        body = b'{"create_request":{"key":"L2E="}}'
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            received = b""
            while b'"created":true' not in received:
                received += sock.recv(65536)
            started = time.monotonic()
            server.terminate()
            while chunk := sock.recv(65536):  # until the server closes the connection
                received += chunk
            assert time.monotonic() - started < 5  # the grace is 10 s
        last_chunk = received[:-len(b"\r\n0\r\n\r\n")].rsplit(b"\r\n", 1)[1]
        error = json.loads(last_chunk)["error"]
        assert (error["grpc_code"], error["http_code"], error["http_status"]) == (
            14, 503, "Service Unavailable")
        assert received.endswith(b"\r\n0\r\n\r\n")
        wait_until(lambda: not server.running, 10, "the server to stop")
        assert server.stop() == 0


def test_an_idle_websocket_is_ended_at_the_stop(tmp_path: Path) -> None:
    """A websocket is a stream: the stop ends it at once, as it ends watch streams, rather
    than waiting out its grace for a request that may never come."""
    port = free_port()
    with ShimServer(tmp_path / "shim", extra_args=[
        "--listen-client-http-urls", f"http://127.0.0.1:{port}",
    ]) as server:
        sock = _raw_websocket(port, "/v3/watch")  # and no request on it
        try:
            started = time.monotonic()
            server.terminate()
            wait_until(lambda: not server.running, 30, "the server to stop")
            assert time.monotonic() - started < 5  # the grace is 10 s
            assert server.stop() == 0
        finally:
            sock.close()
