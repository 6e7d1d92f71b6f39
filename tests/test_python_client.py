"""An ordinary Python etcd client from PyPI, aetcd (asyncio, grpc.aio), driving shim.

aetcd ships its own generated etcd protos and registers them in protobuf's default
descriptor pool under other file names than shim.pb does ("kv.proto" against
"mvccpb/kv.proto"), so the two cannot be imported into one process ("duplicate symbol
'mvccpb.KeyValue'"). The client therefore runs as a program of its own in a child Python,
which is also how a user runs it; it prints what it observed as JSON. The same program runs
against a real etcd, which proves the expectations.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from shim.pb import rpc_pb2 as pb
from tests.support import Client, ServerProcess

CLIENT_PROGRAM = r'''
import asyncio
import json
import sys

import aetcd


def text(value):
    return value.decode() if value is not None else None


async def next_events(watch, count, timeout=10):
    events = []

    async def collect():
        async for event in watch:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(collect(), timeout)
    return events


async def main(host, port):
    out = {}
    async with aetcd.Client(host=host, port=port, timeout=10) as client:
        put = await client.put(b"/py/a", b"1")
        got = await client.get(b"/py/a")
        out["put"] = [put.header.revision, got.header.revision]
        out["get"] = [text(got.value), got.version, got.create_revision, got.mod_revision]
        out["get_missing"] = await client.get(b"/py/missing") is None
        await client.put(b"/py/b", b"2")
        await client.put(b"/py/c", b"3")
        await client.put(b"/py0", b"outside")
        listed = await client.get_prefix(b"/py/")
        out["prefix"] = [[text(kv.key), text(kv.value)] for kv in listed]
        out["prefix_count"] = listed.count
        replaced = await client.put(b"/py/a", b"1b", prev_kv=True)
        out["prev_kv"] = text(replaced.prev_kv.value)

        tx = client.transactions
        created, _ = await client.transaction(
            compare=[tx.version(b"/py/t") == 0], success=[tx.put(b"/py/t", b"x")], failure=[]
        )
        again, responses = await client.transaction(
            compare=[tx.version(b"/py/t") == 0],
            success=[tx.put(b"/py/t", b"y")],
            failure=[tx.get(b"/py/t")],
        )
        out["txn"] = [created, again, text(responses[0][0][0])]
        deleted = await client.delete(b"/py/c", prev_kv=True)
        out["delete"] = [deleted.deleted, text(deleted.prev_kv.value)]

        watch = await client.watch_prefix(b"/py/w/", prev_kv=True)
        pending = asyncio.ensure_future(next_events(watch, 3))
        await client.put(b"/py/w/1", b"one")
        await client.put(b"/py/w/1", b"two")
        await client.delete(b"/py/w/1")
        events = await pending
        await watch.cancel()
        out["watch"] = [
            [e.kind, text(e.kv.key), text(e.kv.value), e.kv.version,
             # aetcd wraps an unset prev_kv too: only a real one has a mod revision.
             text(e.prev_kv.value) if e.prev_kv and e.prev_kv.mod_revision else None]
            for e in events
        ]

        lease = await client.lease(30)
        await client.put(b"/py/l/1", b"leased", lease=lease)
        await client.put(b"/py/l/2", b"leased", lease=lease.id)
        out["lease_keys"] = sorted(text(k) for k in await lease.keys())
        out["lease_ttl"] = [lease.ttl, await lease.granted_ttl(), await lease.remaining_ttl()]
        refreshed = await lease.refresh()
        out["lease_refresh"] = [refreshed.ID == lease.id, refreshed.TTL]
        await lease.revoke()
        out["after_revoke"] = [
            await client.get(b"/py/l/1") is None, await lease.remaining_ttl()
        ]

        short = await client.lease(2)
        await client.put(b"/py/e/1", b"short-lived", lease=short)
        expiry = await client.watch(b"/py/e/1", prev_kv=True)
        [gone] = await next_events(expiry, 1, timeout=15)
        await expiry.cancel()
        out["expiry"] = [gone.kind, text(gone.prev_kv.value), await client.get(b"/py/e/1") is None]

        status = await client.status()
        out["version"] = status.version

        first = await client.put(b"/py/k", b"1")
        await client.put(b"/py/k", b"2")
        await client.compact(first.header.revision + 1)
        try:
            old = await asyncio.wait_for(
                client.watch(b"/py/k", start_revision=first.header.revision), 5
            )
            await next_events(old, 1, timeout=5)
            out["compacted_watch"] = ["no error"]
        except aetcd.RevisionCompactedError as error:
            out["compacted_watch"] = [
                "RevisionCompactedError", error.compacted_revision - first.header.revision
            ]
        except (asyncio.TimeoutError, aetcd.WatchTimeoutError) as error:
            out["compacted_watch"] = [f"hung: {type(error).__name__}"]
    print(json.dumps(out))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
'''


@pytest.fixture(params=["etcd", "shim"])
def server(request: pytest.FixtureRequest) -> ServerProcess:
    """The module's real etcd, then a fresh shim."""
    return request.getfixturevalue("etcd" if request.param == "etcd" else "shim")


def run_client(endpoint: str) -> dict[str, Any]:
    host, port = endpoint.rsplit(":", 1)
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_PROGRAM, host, port],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, f"aetcd program failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_aetcd_put_get_watch_lease(server: ServerProcess) -> None:
    endpoint = server.endpoint  # type: ignore[attr-defined]
    with Client(endpoint) as client:
        # The module's etcd may be shared: start from an empty /py tree on both servers.
        client.kv.DeleteRange(pb.DeleteRangeRequest(key=b"/py", range_end=b"/pz"))
    out = run_client(endpoint)

    put_revision, get_header = out["put"]
    assert get_header == put_revision
    assert out["get"] == ["1", 1, put_revision, put_revision]
    assert out["get_missing"] is True
    assert out["prefix"] == [["/py/a", "1"], ["/py/b", "2"], ["/py/c", "3"]]
    assert out["prefix_count"] == 3
    assert out["prev_kv"] == "1"
    assert out["txn"] == [True, False, "x"]
    assert out["delete"] == [1, "3"]
    assert out["watch"] == [
        ["PUT", "/py/w/1", "one", 1, None],
        ["PUT", "/py/w/1", "two", 2, "one"],
        ["DELETE", "/py/w/1", "", 0, "two"],
    ]
    assert out["lease_keys"] == ["/py/l/1", "/py/l/2"]
    granted, granted_info, remaining = out["lease_ttl"]
    assert granted == granted_info == 30 and 28 <= remaining <= 30
    assert out["lease_refresh"] == [True, 30]
    assert out["after_revoke"] == [True, -1]
    assert out["expiry"] == ["DELETE", "short-lived", True]
    major, minor, *_ = (int(part) for part in out["version"].split("."))
    assert (major, minor) == (3, 5)
    # A watch from a compacted revision fails with the compaction point (one past the
    # start revision here) instead of hanging.
    assert out["compacted_watch"] == ["RevisionCompactedError", 1]

    # What the client wrote is what the server holds.
    with Client(endpoint) as client:
        stored = client.kv.Range(pb.RangeRequest(key=b"/py/", range_end=b"/py0"), timeout=10)
    assert {kv.key: kv.value for kv in stored.kvs} == {
        b"/py/a": b"1b", b"/py/b": b"2", b"/py/k": b"2", b"/py/t": b"x"
    }
