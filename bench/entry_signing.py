"""What signed origins cost per entry: signing on the node that writes, checking on each node
that receives (shim/replication/signing.py, Ed25519 from `cryptography`).

In-process, on this tree's install: the writer's part (``entry_signing.signed``: body digest,
message hash, signature, chain) and the receiver's part (``admission.admit`` of a signed entry
minus ``admit`` of the same entry under an origin from before signatures, which checks
everything but the signature), for a 256 B value written whole and for a ~2 KB Pod changed by
field operations.

    .venv/bin/python -m bench.entry_signing
"""

from __future__ import annotations

import json
import timeit

from shim.pb import replication_pb2 as pb
from shim.replication.admission import IngestLimits, admit
from shim.replication.entry_signing import signed
from shim.replication.merge import Entry
from shim.replication.ops import Op, SetField
from shim.replication.policy import Policy
from shim.replication.signing import NO_CHAIN, Signer
from shim.replication.wire import to_wire

ROUNDS = 2000


def entries(origin: str) -> dict[str, Entry]:
    pod = json.dumps({
        "metadata": {"name": "web", "namespace": "default", "uid": "u1",
                     "labels": {f"l{i}": "x" * 20 for i in range(20)}},
        "spec": {"replicas": 3, "template": "t" * 1200}, "status": {"ready": 2},
    }).encode()
    ops: list[Op] = [SetField(("status", "ready"), 3), SetField(("spec", "replicas"), 4)]
    return {
        "256 B value": Entry(origin, 1, 1 << 40, b"/bench/k", False, b"v" * 256, 0, None,
                             None, None),
        f"{len(pod)} B Pod, 2 field ops": Entry(
            origin, 1, 1 << 40, b"/registry/pods/default/web", False, pod, 0, ops, "u1", "u1"),
    }


def per_entry_us(action: object) -> float:
    return timeit.timeit(action, number=ROUNDS) / ROUNDS * 1e6  # type: ignore[arg-type]


def main() -> None:
    signer = Signer()
    policy = Policy.load()
    limits = IngestLimits(1572864)
    legacy = "0" * 32  # an origin as node ids were, checked without a signature
    for name, entry in entries(signer.origin).items():
        sign_us = per_entry_us(lambda entry=entry: signed(entry, signer, NO_CHAIN))
        wire = to_wire(signed(entry, signer, NO_CHAIN))
        plain = pb.Entry()
        plain.CopyFrom(wire)
        plain.origin, plain.sig = legacy, b""
        assert isinstance(admit(wire, policy, limits), Entry)
        assert isinstance(admit(plain, policy, limits), Entry)
        with_sig = per_entry_us(lambda wire=wire: admit(wire, policy, limits))
        without = per_entry_us(lambda plain=plain: admit(plain, policy, limits))
        print(json.dumps({
            "entry": name, "sign_us": round(sign_us, 1),
            "admit_signed_us": round(with_sig, 1), "admit_unsigned_us": round(without, 1),
            "verify_us": round(with_sig - without, 1),
            "wire_bytes_signed": wire.ByteSize(), "wire_bytes_unsigned": plain.ByteSize(),
        }))


if __name__ == "__main__":
    main()
