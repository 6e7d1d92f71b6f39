"""A large Range answer (a LIST) reuses the memory of the one before it.

A LIST's answer passes through several buffers its size (the rows read, the joined answer,
gRPC's copy); the server keeps freed ones for the next answer instead of taking fresh pages
from the kernel each time (shim/allocator.py), and reads the database through a memory map
(``PRAGMA mmap_size``) instead of copying its pages in.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from shim.pb import rpc_pb2 as pb
from shim.pb import rpc_pb2_grpc
from tests.support import ShimServer
from tests.support.procfs import minor_faults

OBJECTS = 240
VALUE = 100 * 1024  # 24 MB in all: below glibc's largest mmap threshold (32 MB)
PAGE = 4096


def test_repeated_lists_take_no_fresh_memory(tmp_path: Path) -> None:
    with ShimServer(tmp_path / "shim") as server, grpc.insecure_channel(
        server.endpoint, options=[("grpc.max_receive_message_length", -1)]
    ) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for n in range(OBJECTS):
            kv.Put(pb.PutRequest(key=b"/big/%04d" % n, value=bytes([n % 251]) * VALUE),
                   timeout=10)
        lst = pb.RangeRequest(key=b"/big/", range_end=b"/big0")

        def list_all() -> None:
            got = kv.Range(lst, timeout=30)
            assert [kv.value[:1] for kv in got.kvs] == [bytes([n % 251]) for n in range(OBJECTS)]

        list_all()  # the first one takes its buffers
        assert server.pid is not None
        before = minor_faults(server.pid)
        for _ in range(3):
            list_all()
        per_list = (minor_faults(server.pid) - before) / 3
        maps = Path(f"/proc/{server.pid}/maps").read_text()
    # Fresh pages for every buffer would be about three faults per page of the answer.
    answer_pages = OBJECTS * VALUE // PAGE
    assert per_list < answer_pages / 4, (per_list, answer_pages)
    # The database is read through its mapping (not only its -shm file, mapped in any case).
    assert any(line.endswith(f" {server.database}") for line in maps.splitlines()), maps


def test_an_answer_over_the_clients_limit_is_its_error_and_no_error_of_the_servers(
    tmp_path: Path,
) -> None:
    """A Range or Txn answer larger than the client's receive limit (4 MiB by default): the
    client refuses it (RESOURCE_EXHAUSTED, as against etcd) and resets the call; the server
    notes at debug level at most that the answer was not sent, never an ERROR with grpcio's
    traceback (which it logged before, once per such request)."""
    big = pb.RangeRequest(key=b"/huge/", range_end=b"/huge0")
    with ShimServer(tmp_path / "shim") as server, grpc.insecure_channel(
        server.endpoint
    ) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        for n in range(3):
            kv.Put(pb.PutRequest(key=b"/huge/%d" % n, value=b"x" * (1400 << 10)), timeout=10)
        for call in (
            lambda: kv.Range(big, timeout=30),
            lambda: kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=big)]), timeout=30),
        ):
            for _ in range(3):
                try:
                    call()
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                else:
                    raise AssertionError("an answer over 4 MiB was taken")
    # Stopped: every request's handling, and what it logged, is over.
    log = server.log_path.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
