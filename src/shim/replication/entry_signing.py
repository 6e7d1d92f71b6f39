"""Signing and checking ``entry.Entry`` values (the primitives are in ``signing``)."""

from __future__ import annotations

from shim.replication.entry import Entry
from shim.replication.signing import Signer, body_digest, chain, head_message, message_hash


def ops_bytes(entry: Entry) -> bytes | None:
    """The entry's operations as they travel (one canonical form on every node)."""
    text = entry.ops_text()
    return None if text is None else text.encode()


def digest_of(entry: Entry) -> bytes:
    """The entry's body digest: kept by a stub, computed from the body otherwise."""
    if entry.digest:
        return entry.digest
    return body_digest(entry.value, ops_bytes(entry), entry.secret)


def message_of(entry: Entry, digest: bytes | None = None) -> bytes:
    return message_hash(
        entry.origin, entry.seq, entry.hlc, entry.key, entry.deleted, entry.lease,
        entry.base_uid, entry.uid, entry.kind, digest if digest is not None else digest_of(entry),
    )


def signed(entry: Entry, signer: Signer, previous: bytes) -> Entry:
    """``entry`` signed by this run's key, with its digest and its place in the chain."""
    digest = digest_of(entry)
    message = message_of(entry, digest)
    return entry.copy_with(sig=signer.sign(message), digest=digest,
                           chain=chain(previous, message))


def sealed(entry: Entry, previous: bytes) -> Entry:
    """``entry`` with its digest and its place in the chain, for an origin that signs its
    chain (``head_signature``) rather than each entry."""
    digest = digest_of(entry)
    message = message_of(entry, digest)
    return entry.copy_with(digest=digest, chain=chain(previous, message), message=message)


def head_signature(signer: Signer, seq: int, chain_value: bytes) -> bytes:
    """This run's signature of its chain at ``seq``: it covers every entry up to there."""
    return signer.sign(head_message(signer.origin, seq, chain_value))


def chained(entry: Entry, previous: bytes) -> Entry:
    """``entry`` (signed, with its digest) with its place in its origin's chain here. The
    check that admitted it chained it already when it did so from ``previous`` (a run's
    entries, ``admission``): that chain is kept rather than hashed again."""
    if entry.chain and entry.prev_chain == previous:
        return entry
    return entry.copy_with(chain=chain(previous, entry.message or message_of(entry)))
