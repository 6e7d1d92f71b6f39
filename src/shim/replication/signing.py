"""Verifiable origins: every entry is signed by the run of the node that wrote it.

A node makes an Ed25519 key pair every time it starts; its origin for that run is the public
key itself (43 characters of base64url), so the origin is self-certifying: any node verifies an
entry of any origin, relayed or not, without a key being distributed, and no other node can
write under it (the private key never leaves the process, not even to its database). An
entry's signature covers a hash of everything a node keeps of it (``message_hash``): the
header (origin, seq, stamp, key, delete flag, lease, incarnations, kind) and a digest of its
body (value, operations as sent, secret). A stub (an entry pruned by retention, or refused)
keeps the body digest, so it still verifies.

Each node also keeps, per origin, a hash chain of the entries it holds (``chain``): two nodes
whose chains differ at the same seq hold different entries there, which only an origin that
signs two different entries under one (origin, seq) can cause (equivocation).

Origins from before signatures (a node id: 32 hex characters) are legacy: their entries carry
no signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ORIGIN_CHARS = 43  # 32 bytes of public key in base64url without padding
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32
NO_CHAIN = bytes(DIGEST_BYTES)  # the chain before an origin's first entry
_DOMAIN = b"shim entry 1\0"


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def body_digest(value: bytes, ops: bytes | None, secret: str | None) -> bytes:
    """The digest of an entry's body: its value, its operations as sent, its secret."""
    body = _field(value) + (b"\1" + _field(ops) if ops is not None else b"\0")
    body += _field((secret or "").encode())
    return hashlib.sha256(body).digest()


def message_hash(
    origin: str, seq: int, hlc: int, key: bytes, deleted: bool, lease: int,
    base_uid: str | None, uid: str | None, kind: str, digest: bytes,
) -> bytes:
    """What a signature signs: the entry's header and its body's digest."""
    header = struct.pack(">QQq?", seq, hlc, lease, deleted)
    for text in (origin, base_uid or "", uid or "", kind):
        header += _field(text.encode())
    return hashlib.sha256(_DOMAIN + header + _field(key) + digest).digest()


def chain(previous: bytes, message: bytes) -> bytes:
    """An origin's chain after one more entry."""
    return hashlib.sha256(previous + message).digest()


def is_signed_origin(origin: str) -> bool:
    return len(origin) == ORIGIN_CHARS and public_key(origin) is not None


def public_key(origin: str) -> Ed25519PublicKey | None:
    try:
        raw = base64.urlsafe_b64decode(origin + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32:
        return None
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None


def verifies(origin: str, message: bytes, signature: bytes) -> bool:
    key = public_key(origin)
    if key is None or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


class Signer:
    """This run's key pair; its public key is the origin."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        raw = self._key.public_key().public_bytes_raw()
        self.origin = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)
