"""Verifiable origins: every entry is signed by the run of the node that wrote it.

A node makes an Ed25519 key pair every time it starts; its origin for that run is the public
key itself (43 characters of base64url), so the origin is self-certifying: any node verifies an
entry of any origin, relayed or not, without a key being distributed, and no other node can
write under it (the private key never leaves the process, not even to its database). What is
signed about an entry is a hash of everything a node keeps of it (``message_hash``): the
header (origin, seq, stamp, key, delete flag, lease, incarnations, kind) and a digest of its
body (value, operations as sent, secret). A stub (an entry pruned by retention, or refused)
keeps the body digest, so it still verifies.

Each origin's entries form a hash chain (``chain``: each link hashes the one before and the
entry's message). The origin signs the chain (``head_message``) at the last entry of each of
its write batches, and every ``resolve.SIGN_EVERY`` entries within one: one signature covers
every entry up to it, so a receiver checks a run of an origin's entries with one signature
(``admission.admit_batch``, ``runs``). Nodes from before this signed each entry's message
(``Entry.sig``); such entries still verify one by one.

Two nodes whose chains differ at the same seq hold different entries there, which only an
origin that signs two different histories can cause (equivocation).

Origins from before signatures (a node id: 32 hex characters) are legacy: their entries carry
no signature.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import struct

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

ORIGIN_CHARS = 43  # 32 bytes of public key in base64url without padding
SIGNATURE_BYTES = 64
DIGEST_BYTES = 32
NO_CHAIN = bytes(DIGEST_BYTES)  # the chain before an origin's first entry
_DOMAIN = b"shim entry 1\0"
_HEAD_DOMAIN = b"shim head 1\0"


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
    return hashlib.sha256(b"".join((
        _DOMAIN, _NUMBERS.pack(seq, hlc, lease, deleted), _repeated_text(origin),
        _field(base_uid.encode()) if base_uid else _NO_TEXT,
        _field(uid.encode()) if uid else _NO_TEXT, _repeated_text(kind), _field(key), digest,
    ))).digest()


_NUMBERS = struct.Struct(">QQq?")
_NO_TEXT = _field(b"")


def _repeated_text(text: str) -> bytes:
    """A text field that repeats from entry to entry (an origin, a kind), framed once when it
    is as short as an origin: a peer's entries are hashed before their fields are checked,
    and a long text must not stay in memory."""
    if len(text) <= ORIGIN_CHARS:
        return _short_text(text)
    return _field(text.encode())


@functools.lru_cache(maxsize=1024)
def _short_text(text: str) -> bytes:
    return _field(text.encode())


def head_message(origin: str, seq: int, chain_value: bytes) -> bytes:
    """What an origin signs once for many entries: its chain at ``seq``, which commits to
    every entry of the origin up to there."""
    return _HEAD_DOMAIN + struct.pack(">Q", seq) + _field(origin.encode()) + chain_value


def chain(previous: bytes, message: bytes) -> bytes:
    """An origin's chain after one more entry."""
    return hashlib.sha256(previous + message).digest()


def is_signed_origin(origin: str) -> bool:
    return len(origin) == ORIGIN_CHARS and public_key(origin) is not None


@functools.lru_cache(maxsize=4096)
def public_key(origin: str) -> VerifyKey | None:
    """The key an origin is (None: not a public key); kept, since every entry of a batch
    usually has one of a few origins."""
    try:
        raw = base64.urlsafe_b64decode(origin + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 32:
        return None
    return VerifyKey(raw)


def verifies(origin: str, message: bytes, signature: bytes) -> bool:
    key = public_key(origin)
    if key is None or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(message, signature)
    except BadSignatureError:
        return False
    return True


class Signer:
    """This run's key pair; its public key is the origin."""

    def __init__(self) -> None:
        self._key = SigningKey.generate()
        raw = bytes(self._key.verify_key)
        self.origin = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature
