"""Prometheus metrics on --metrics-address, and JSON logs without secrets."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from shim.pb import rpc_pb2
from tests.support import EtcdServer
from tests.support.client import Client
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.shim_server import ShimServer
from tests.support.waits import wait_until


def test_metrics_count_requests_commits_watches_and_replication(tmp_path: Path) -> None:
    metrics_a = f"127.0.0.1:{free_port()}"
    metrics_b = f"127.0.0.1:{free_port()}"
    token = "very-secret-token"
    with ShimServer(
        tmp_path / "a",
        extra_args=["--name", "a", "--metrics-address", metrics_a, "--log-format", "json"],
        env={"SHIM_BOOTSTRAP_TOKEN": token},  # the environment keeps it out of `ps`
    ) as a:
        with ShimServer(
            tmp_path / "b",
            extra_args=["--name", "b", "--metrics-address", metrics_b, "--join",
                        f"http://{a.endpoint}", "--log-format", "json"],
            env={"SHIM_TOKEN": token},
        ) as b, Client(a.endpoint) as client:
            watch = client.watch.Watch(iter([rpc_pb2.WatchRequest(
                create_request=rpc_pb2.WatchCreateRequest(key=b"/m/", range_end=b"/m0"))]))
            assert next(watch).created
            for i in range(5):
                client.kv.Put(rpc_pb2.PutRequest(key=f"/m/{i}".encode(), value=b"v"))
            client.kv.Range(rpc_pb2.RangeRequest(key=b"/m/0"))
            for _ in range(5):
                next(watch)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                on_b = scrape(metrics_b)
                if on_b.get(_labelled(on_b, "shim_replication_entries_total", "applied")) == 5:
                    break
                time.sleep(0.1)
            on_a = scrape(metrics_a)
            watch.cancel()

            assert on_a['shim_grpc_request_duration_seconds_count{method="Put"}'] == 5
            assert on_a['shim_grpc_request_duration_seconds_count{method="Range"}'] == 1
            assert on_a["shim_commit_batch_requests_sum"] >= 5  # puts, plus the link's writes
            assert on_a["shim_commit_duration_seconds_count"] >= 1
            assert on_a["shim_watch_events_sent_total"] == 5
            assert on_a["shim_watchers"] == 1
            assert on_a["shim_revision"] == 6
            assert on_a["shim_replication_links"] == 1
            assert on_a["shim_db_size_bytes"] > 0
            assert on_b[_labelled(on_b, "shim_replication_entries_total", "applied")] == 5
            assert on_b["shim_revision"] == 6
            assert any(k.startswith("shim_replication_lag_seconds_count") for k in on_b)
        logs = a.log_path.read_text() + b.log_path.read_text()
    assert token not in logs
    for line in logs.splitlines():
        if line.startswith("=== "):
            continue  # the test harness's record of the command line
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= record.keys()


def _labelled(samples: dict[str, float], name: str, outcome: str) -> str:
    for key in samples:
        if key.startswith(name + "{") and f'outcome="{outcome}"' in key:
            return key
    return f"{name}{{missing outcome={outcome}}}"


def _types(text: str) -> dict[str, str]:
    """Each metric family's type, from the exposition's '# TYPE' lines."""
    return {parts[2]: parts[3] for parts in (line.split() for line in text.splitlines())
            if len(parts) == 4 and parts[:2] == ["#", "TYPE"]}


def _label_names(text: str) -> dict[str, set[frozenset[str]]]:
    names: dict[str, set[frozenset[str]]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series = line.rpartition(" ")[0]
            family, _, labels = series.partition("{")
            keys = frozenset(part.split("=")[0] for part in labels.rstrip("}").split(",")
                             if part)
            names.setdefault(family, set()).add(keys)
    return names


def test_etcds_metrics_under_etcds_names(tmp_path: Path, etcd: EtcdServer) -> None:
    """The series etcd's alerts and dashboards read: the same names, types and labels as a
    real etcd's /metrics, with shim's values (its own leader; requests counted by status)."""
    address = f"127.0.0.1:{free_port()}"
    with ShimServer(tmp_path / "s", extra_args=[
        "--metrics-address", address, "--quota-backend-bytes", "100000000",
    ]) as shim, Client(shim.endpoint) as client:
        for i in range(3):
            client.kv.Put(rpc_pb2.PutRequest(key=f"/e/{i}".encode(), value=b"v"))
        with pytest.raises(grpc.RpcError):
            client.kv.Put(rpc_pb2.PutRequest(key=b"", value=b"v"))  # InvalidArgument
        watch = client.watch.Watch(iter([rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"/e/"))]))
        assert next(watch).created
        watch.cancel()
        kv = 'grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"'
        bidi = 'grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"'
        canceled = f'grpc_server_handled_total{{grpc_code="Canceled",{bidi}}}'
        wait_until(lambda: scrape(address).get(canceled), 20,  # counted as the stream ends
                   "the canceled watch to be counted")
        on_shim = scrape(address)
        assert on_shim[f"grpc_server_started_total{{{kv}}}"] == 4
        assert on_shim[f'grpc_server_handled_total{{grpc_code="OK",{kv}}}'] == 3
        assert on_shim[f'grpc_server_handled_total{{grpc_code="InvalidArgument",{kv}}}'] == 1
        assert on_shim[f"grpc_server_started_total{{{bidi}}}"] == 1
        assert on_shim[canceled] == 1
        assert on_shim["etcd_server_has_leader"] == on_shim["etcd_server_is_leader"] == 1
        assert on_shim["etcd_server_leader_changes_seen_total"] == 0
        assert on_shim["etcd_server_quota_backend_bytes"] == 100000000
        assert on_shim["etcd_debugging_mvcc_current_revision"] == 4
        assert on_shim['etcd_server_version{server_version="3.5.21"}'] == 1
        total = on_shim["etcd_mvcc_db_total_size_in_bytes"]
        assert total >= on_shim["etcd_mvcc_db_total_size_in_use_in_bytes"] > 0
        assert on_shim["etcd_disk_backend_commit_duration_seconds_count"] >= 3
        shim_text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    with Client(etcd.endpoint) as client:  # so etcd has counted a Put and a Watch too
        client.kv.Put(rpc_pb2.PutRequest(key=b"/e/0", value=b"v"))
        watch = client.watch.Watch(iter([rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(key=b"/e/"))]))
        assert next(watch).created
        watch.cancel()
    etcd_text = urllib.request.urlopen(f"http://{etcd.endpoint}/metrics", timeout=5).read()
    etcd_types, shim_types = _types(etcd_text.decode()), _types(shim_text)
    etcd_labels, shim_labels = _label_names(etcd_text.decode()), _label_names(shim_text)
    ours = [name for name in shim_types if name.startswith(("etcd_", "grpc_"))]
    assert not [name for name in shim_types if name.endswith("_created")]
    assert len(ours) >= 10
    for name in ours:
        assert shim_types[name] == etcd_types.get(name), name
    for family in shim_labels:
        if family.startswith(("etcd_", "grpc_")):
            assert shim_labels[family] <= etcd_labels.get(family, set()), family
