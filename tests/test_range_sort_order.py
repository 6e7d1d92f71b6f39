"""Range sort order, ties included, exactly as etcd 3.5.1 (Go 1.16 ``sort.Sort``) gives it.

Go's ``sort.Sort`` is not stable, so for 7+ results the order of elements that
compare equal (same version, same value, same create/mod revision from one txn)
depends on the sort algorithm itself. These tests load a real etcd with data full
of ties and check that ``go_sort`` over the key-ordered results reproduces every
sorted Range etcd answers, then that shim answers the same Ranges identically.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import pytest

from shim.mvcc.gosort import go_sort, go_sort_reverse
from shim.pb import kv_pb2, rpc_pb2, rpc_pb2_grpc
from tests.support import EtcdServer, ShimServer

RangeRequest = rpc_pb2.RangeRequest
KeyValue = kv_pb2.KeyValue

SEED = 20211014
# Below 7 Go's sort is an insertion sort (stable); up to 12 a shell pass plus an
# insertion sort; above 12 quicksort, with a ninther pivot above 40 elements.
SIZES = (7, 8, 11, 12, 13, 16, 21, 27, 33, 40, 41, 45, 52, 60)
ROUNDS = 3
VALUES = (b"", b"a", b"b", b"bb")

# etcd's Less functions (server/etcdserver/apply.go): bytes.Compare / int comparisons.
LESS: dict[int, Callable[[KeyValue, KeyValue], bool]] = {
    RangeRequest.KEY: lambda x, y: x.key < y.key,
    RangeRequest.VERSION: lambda x, y: x.version < y.version,
    RangeRequest.CREATE: lambda x, y: x.create_revision < y.create_revision,
    RangeRequest.MOD: lambda x, y: x.mod_revision < y.mod_revision,
    RangeRequest.VALUE: lambda x, y: x.value < y.value,
}
TARGETS = tuple(LESS)
ORDERS = (RangeRequest.ASCEND, RangeRequest.DESCEND)


@dataclass
class Dataset:
    prefix: bytes
    size: int
    txns: list[list[tuple[bytes, bytes]]]  # each inner list is one Txn of puts

    @property
    def range_end(self) -> bytes:
        return self.prefix[:-1] + bytes([self.prefix[-1] + 1])


def _make_datasets() -> list[Dataset]:
    rng = random.Random(SEED)
    datasets = []
    for size in SIZES:
        for round_ in range(ROUNDS):
            prefix = f"sort/{size:02d}-{round_}/".encode()
            names = rng.sample(range(1000), size)
            keys = [prefix + f"k{name:03d}".encode() for name in names]
            txns: list[list[tuple[bytes, bytes]]] = []
            # Create the keys in small txns (ties on create and mod revision)...
            pending = keys[:]
            rng.shuffle(pending)
            while pending:
                step = rng.randint(1, 6)
                batch, pending = pending[:step], pending[step:]
                txns.append([(key, rng.choice(VALUES)) for key in batch])
            # ...then rewrite random subsets a few times (ties on version and mod).
            for _ in range(rng.randint(1, 4)):
                chosen = rng.sample(keys, rng.randint(1, size))
                while chosen:
                    step = rng.randint(1, 8)
                    batch, chosen = chosen[:step], chosen[step:]
                    txns.append([(key, rng.choice(VALUES)) for key in batch])
            datasets.append(Dataset(prefix, size, txns))
    return datasets


DATASETS = _make_datasets()


def _load(stub: rpc_pb2_grpc.KVStub) -> None:
    for dataset in DATASETS:
        for txn in dataset.txns:
            stub.Txn(
                rpc_pb2.TxnRequest(
                    success=[
                        rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))
                        for key, value in txn
                    ]
                ),
                timeout=10,
            )


@pytest.fixture(scope="module")
def etcd_kv(etcd: EtcdServer) -> Iterator[rpc_pb2_grpc.KVStub]:
    with grpc.insecure_channel(etcd.endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        _load(stub)
        yield stub


@pytest.fixture(scope="module")
def shim_kv(shim_module: ShimServer) -> Iterator[rpc_pb2_grpc.KVStub]:
    with grpc.insecure_channel(shim_module.endpoint) as channel:
        stub = rpc_pb2_grpc.KVStub(channel)
        _load(stub)
        yield stub


def _range(stub: rpc_pb2_grpc.KVStub, dataset: Dataset, target: int, order: int) -> list[KeyValue]:
    resp = stub.Range(
        RangeRequest(
            key=dataset.prefix, range_end=dataset.range_end, sort_target=target, sort_order=order
        ),
        timeout=10,
    )
    assert resp.count == dataset.size
    return list(resp.kvs)


def _keys(kvs: list[KeyValue]) -> list[bytes]:
    return [kv.key for kv in kvs]


def _cases() -> Iterator[tuple[Dataset, int, int]]:
    for dataset in DATASETS:
        for target in TARGETS:
            for order in ORDERS:
                yield dataset, target, order
            if target != RangeRequest.KEY:
                # A non-key target with no order means ASCEND in etcd.
                yield dataset, target, RangeRequest.NONE


def test_go_sort_reproduces_etcd_order(etcd_kv: rpc_pb2_grpc.KVStub) -> None:
    cases = differs_from_stable = 0
    for dataset, target, order in _cases():
        in_key_order = _range(etcd_kv, dataset, RangeRequest.KEY, RangeRequest.NONE)
        assert _keys(in_key_order) == sorted(_keys(in_key_order))
        got = _range(etcd_kv, dataset, target, order)

        expected = list(in_key_order)
        if order == RangeRequest.DESCEND:
            go_sort_reverse(expected, LESS[target])
        else:
            go_sort(expected, LESS[target])
        where = f"{dataset.prefix!r} target={target} order={order}"
        assert _keys(got) == _keys(expected), where
        assert got == expected, where

        stable = sorted(
            in_key_order,
            key=lambda kv, t=target: _STABLE_KEYS[t](kv),
            reverse=order == RangeRequest.DESCEND,
        )
        cases += 1
        differs_from_stable += _keys(stable) != _keys(got)
    assert cases == len(DATASETS) * 14
    # The data must actually exercise the instability, or this test proves nothing.
    assert differs_from_stable > cases // 4, (differs_from_stable, cases)


_STABLE_KEYS: dict[int, Callable[[KeyValue], object]] = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def test_shim_range_order_matches_etcd(
    etcd_kv: rpc_pb2_grpc.KVStub, shim_kv: rpc_pb2_grpc.KVStub
) -> None:
    for dataset, target, order in _cases():
        want = _range(etcd_kv, dataset, target, order)
        got = _range(shim_kv, dataset, target, order)
        assert got == want, f"{dataset.prefix!r} target={target} order={order}"


def test_go_sort_small_example() -> None:
    # Measured on etcd 3.5.1: s/0..s/6 with values 1,1,1,1,1,1,0 sorted by VALUE ASCEND.
    values = [b"1", b"1", b"1", b"1", b"1", b"1", b"0"]
    order = list(range(7))
    go_sort(order, lambda i, j: values[i] < values[j])
    assert order == [6, 1, 2, 3, 4, 5, 0]


def test_go_sort_sorts_and_reverse_flips_less() -> None:
    rng = random.Random(SEED)
    for size in range(0, 300):
        items = [rng.randrange(6) for _ in range(size)]
        asc = list(items)
        go_sort(asc, lambda x, y: x < y)
        assert asc == sorted(items)
        desc = list(items)
        go_sort_reverse(desc, lambda x, y: x < y)
        assert desc == sorted(items, reverse=True)
