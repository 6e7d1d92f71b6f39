"""What signed origins cost per entry: signing on the node that writes, checking on each node
that receives (shim/replication/signing.py, Ed25519 from `pynacl`: libsodium).

In-process, on this tree's install: the writer's part (``entry_signing.signed``: body digest,
message hash, signature, chain) and the receiver's part (``admission.admit`` of a signed entry
minus ``admit`` of the same entry under an origin from before signatures, which checks
everything but the signature), for a 256 B value written whole and for a ~2 KB Pod changed by
field operations; then the same signed once for a run (``entry_signing.sealed`` per entry, and
``admission.admit_batch`` of a run of 500 entries with one signature, per entry).

    .venv/bin/python -m bench.entry_signing
"""

from __future__ import annotations

import dataclasses
import json
import timeit

from shim.pb import replication_pb2 as pb
from shim.replication.admission import IngestLimits, admit, admit_batch
from shim.replication.entry import Entry
from shim.replication.entry_signing import head_signature, sealed, signed
from shim.replication.ops import Op, SetField
from shim.replication.policy import Policy
from shim.replication.signing import NO_CHAIN, Signer
from shim.replication.wire import to_wire

ROUNDS = 2000
RUN = 500  # entries of one origin in a batch


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


def _run(entry: Entry, signer: Signer) -> list[pb.Entry]:
    """``RUN`` consecutive entries like ``entry``, signed once at the end, as a link sends
    them."""
    wire, previous = [], NO_CHAIN
    for seq in range(1, RUN + 1):
        one = sealed(dataclasses.replace(entry, seq=seq), previous)
        previous = one.chain
        wire.append(to_wire(one))
    wire[0].prev_chain = NO_CHAIN
    wire[-1].head_sig = head_signature(signer, RUN, previous)
    return wire


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
        seal_us = per_entry_us(lambda entry=entry: sealed(entry, NO_CHAIN))
        run = _run(entry, signer)
        admitted, refused = admit_batch(run, policy, limits)
        assert len(admitted) == RUN and not refused
        run_us = timeit.timeit(lambda run=run: admit_batch(run, policy, limits),
                               number=ROUNDS // RUN * 10) / (ROUNDS // RUN * 10) / RUN * 1e6
        print(json.dumps({
            "entry": name, "sign_us": round(sign_us, 1),
            "seal_us (chain, no signature)": round(seal_us, 1),
            f"admit_run_of_{RUN}_us (one signature)": round(run_us, 1),
            "admit_signed_us": round(with_sig, 1), "admit_unsigned_us": round(without, 1),
            "verify_us": round(with_sig - without, 1),
            "wire_bytes_signed": wire.ByteSize(), "wire_bytes_unsigned": plain.ByteSize(),
        }))


if __name__ == "__main__":
    main()
