"""Prometheus metrics on --metrics-address, and JSON logs without secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path

from shim.pb import rpc_pb2
from tests.support.client import Client
from tests.support.metrics import scrape
from tests.support.net import free_port
from tests.support.shim_server import ShimServer


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
