"""What admission works out once and the writer then trusts: the chain of a signed run, and
the size check's shortcut for entries far below the largest request (in-process, real
signatures)."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from shim.pb import replication_pb2 as pb
from shim.pb.rpc_pb2 import PutRequest
from shim.replication.admission import IngestLimits, admit_batch
from shim.replication.entry_signing import chained, message_of
from shim.replication.policy import Policy
from shim.replication.quarantine import Refusal
from shim.replication.signing import Signer, chain, message_hash
from tests.support.lying_peer import sign_run

POLICY = Policy.load()


def _entries(signer: Signer, count: int, first_seq: int = 1) -> list[pb.Entry]:
    return [pb.Entry(origin=signer.origin, seq=first_seq + n, hlc=1_000 + n,
                     key=b"/run/%d" % n, value=b"v%d" % n) for n in range(count)]


def test_a_runs_chain_worked_out_on_admission_is_kept_only_from_the_chain_held_here() -> None:
    """The writer stores each entry's place in its origin's chain as this node computes it.
    Admission chained the run from the chain its sender named: the writer keeps that when it
    starts from the chain this node holds, and chains the entry again from its own when not
    (an origin that signed two histories)."""
    signer = Signer()
    before = secrets.token_bytes(32)
    run = _entries(signer, 3, first_seq=5)
    sign_run(signer, *run, before=before)
    entries, refused = admit_batch(run, POLICY, IngestLimits(1 << 20))
    assert refused == [] and len(entries) == 3

    held = before
    for entry in entries:
        expected = chain(held, message_of(entry))
        assert entry.chain == expected  # admission's own work
        kept = chained(entry, held)
        assert kept is entry  # not hashed again
        held = kept.chain

    other = secrets.token_bytes(32)
    again = chained(entries[1], other)
    assert again.chain == chain(other, message_of(entries[1])) != entries[1].chain


LIMIT = 4096
RAFT = 17  # etcd's raft wrapper around a request (api.validate.RAFT_WRAPPER_BYTES)


@pytest.mark.parametrize("lease", [0, 1, 2**62, -1])
@pytest.mark.parametrize("key_length", [1, 200])
def test_an_entry_is_admitted_up_to_the_largest_request_and_refused_a_byte_past_it(
    lease: int, key_length: int
) -> None:
    """The exact size (a PutRequest of its key, value and lease, plus the raft wrapper) is
    what decides, whatever shortcut admission takes for entries far below the limit."""
    signer = Signer()
    key = b"k" * key_length
    for value_length in range(LIMIT - key_length - 60, LIMIT - key_length):
        msg = pb.Entry(origin=signer.origin, seq=1, hlc=1_000, key=key,
                       value=b"v" * value_length, lease=lease)
        size = PutRequest(key=key, value=msg.value, lease=lease).ByteSize()
        sign_run(signer, msg)
        entries, refused = admit_batch([msg], POLICY, IngestLimits(LIMIT))
        if size + RAFT > LIMIT:
            assert entries == [] and isinstance(refused[0], Refusal)
            assert "exceeds the largest request" in refused[0].reason
        else:
            assert refused == [] and len(entries) == 1


@pytest.mark.parametrize("base_uid, uid, kind", [(None, None, ""), ("u-1", "u-2", ""),
                                                 (None, None, "auth"), ("", "ü", ""),
                                                 (None, None, "k" * 500)])
def test_what_an_origin_signs_is_laid_out_as_every_version_reads_it(
    base_uid: str | None, uid: str | None, kind: str
) -> None:
    """Nodes of different versions verify each other's entries: the signed message is the
    SHA-256 of the domain, seq, stamp and lease as big-endian 64-bit numbers, the delete flag
    as one byte, then origin, base uid, uid, kind and key each as a 4-byte length and bytes,
    then the body's digest."""
    origin, digest = Signer().origin, secrets.token_bytes(32)

    def framed(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    for seq, hlc, lease, deleted, key in [(1, 2, 0, False, b"/k"),
                                          (2**63 - 1, 2**62, -5, True, b"\0" * 300)]:
        layout = (b"shim entry 1\0" + seq.to_bytes(8, "big") + hlc.to_bytes(8, "big")
                  + lease.to_bytes(8, "big", signed=True) + bytes([deleted])
                  + framed(origin.encode()) + framed((base_uid or "").encode())
                  + framed((uid or "").encode()) + framed(kind.encode()) + framed(key) + digest)
        assert message_hash(origin, seq, hlc, key, deleted, lease, base_uid, uid, kind,
                            digest) == hashlib.sha256(layout).digest()
