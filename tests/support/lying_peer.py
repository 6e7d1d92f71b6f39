"""A peer that speaks shim's Link protocol from a test: it holds a valid token and sends
whatever entries a test makes it send (well-formed or lying), the way a compromised or buggy
node would. Only the sending direction is used: it asks the node for none of its entries.

    with LyingPeer(node.endpoint) as peer:
        peer.send(peer.entry(b"/k", b"v"))
        notice = peer.wait_refused(seq)          # the node's reason, sent back on the link
        assert peer.status() is None             # the link is still up
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from types import TracebackType
from typing import Any

import grpc

from shim.pb import replication_pb2 as pb
from shim.pb import replication_pb2_grpc
from shim.replication.policy import Policy
from shim.replication.signing import (
    NO_CHAIN,
    Signer,
    body_digest,
    chain,
    head_message,
    message_hash,
)
from shim.replication.wire import PROTOCOL

from .replication import TOKEN

LOGICAL_BITS = 16
HEARTBEAT_SECONDS = 1.0


def hlc_now(ahead_ms: int = 0) -> int:
    """A hybrid-clock stamp of the wall clock (plus ``ahead_ms``), as nodes stamp entries."""
    return (time.time_ns() // 1_000_000 + ahead_ms) << LOGICAL_BITS


def wire_message(msg: pb.Entry) -> bytes:
    """What an origin signs, or chains, for the entry ``msg`` as it travels."""
    digest = bytes(msg.digest) if msg.pruned else body_digest(
        msg.value, msg.ops if msg.has_ops else None, msg.secret or None)
    return message_hash(msg.origin, msg.seq, msg.hlc, msg.key, msg.deleted, msg.lease,
                        msg.base_uid or None, msg.uid or None, msg.kind, digest)


def sign_run(signer: Signer, *entries: pb.Entry, before: bytes = NO_CHAIN) -> bytes:
    """Make ``entries`` (consecutive seqs of one origin) one run signed the way nodes sign
    now: no signature of their own, the chain ``before`` the first on it, and ``signer``'s
    signature of the chain at the last on it. Answers that chain."""
    value = before
    for msg in entries:
        msg.sig = b""
        value = chain(value, wire_message(msg))
    entries[0].prev_chain = before
    last = entries[-1]
    last.head_sig = signer.sign(head_message(last.origin, last.seq, value))
    return value


class LyingPeer:
    """One Link stream to a node, opened with a valid token and the node's merge policy."""

    def __init__(
        self, endpoint: str, *, token: str = TOKEN, name: str = "lying-peer",
        node_id: str | None = None, signer: Signer | None = None,
    ) -> None:
        self.node_id = node_id or secrets.token_hex(16)
        # Its own origin, as a node's: a key pair's public key; its entries are signed.
        self.signer = signer or Signer()
        self.origin = self.signer.origin
        self.seq = 0
        self.cursor = 0
        self._channel = grpc.insecure_channel(endpoint)
        self._outbox: queue.Queue[pb.LinkMessage | None] = queue.Queue()
        self._call = replication_pb2_grpc.ReplicationStub(self._channel).Link(
            iter(self._outbox.get, None)
        )
        self._notices: queue.Queue[pb.Refused] = queue.Queue()
        self._refused: dict[tuple[str, int], str] = {}
        self._ended = threading.Event()
        self._status: tuple[grpc.StatusCode, str] | None = None
        self._outbox.put(pb.LinkMessage(hello=pb.Hello(
            node_id=self.node_id, name=name, token=token, policy_digest=Policy.load().digest,
            send=True, receive=False, protocol=PROTOCOL, hlc=hlc_now(), origin=self.origin,
        )))
        reply = next(self._call)
        assert reply.WhichOneof("kind") == "hello", f"no Hello from the node: {reply}"
        self.peer_id = reply.hello.node_id
        self._outbox.put(pb.LinkMessage(start=pb.Start(cursor=0)))
        self._reader = threading.Thread(target=self._read, name="link-peer", daemon=True)
        self._reader.start()
        # A silent link is dropped after a few seconds: beat as a node does.
        self._beater = threading.Thread(target=self._beat, name="link-peer-beat", daemon=True)
        self._beater.start()

    def _beat(self) -> None:
        while not self._ended.wait(HEARTBEAT_SECONDS):
            self._outbox.put(pb.LinkMessage(batch=pb.Batch(
                cursor=self.cursor, high=self.cursor, hlc=hlc_now()
            )))

    def _read(self) -> None:
        try:
            for msg in self._call:
                if msg.WhichOneof("kind") == "refused":
                    self._notices.put(msg.refused)
        except grpc.RpcError as exc:
            self._status = (exc.code(), exc.details() or "")
        else:
            self._status = (grpc.StatusCode.OK, "")
        finally:
            self._ended.set()

    # -- building entries ------------------------------------------------------------------

    def entry(
        self, key: bytes, value: bytes = b"", *, ops: Any = None, raw_ops: bytes | None = None,
        hlc: int | None = None, seq: int | None = None, signer: Signer | None = None,
        **fields: Any,
    ) -> pb.Entry:
        """The next entry of this peer's own origin (or with the fields given), signed with
        its key unless ``sig`` is given: ``ops`` as a JSON-able list of operations (in the
        form nodes send them), or ``raw_ops`` as bytes sent as they are."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        msg = pb.Entry(
            origin=fields.pop("origin", self.origin), seq=seq,
            hlc=hlc_now() if hlc is None else hlc, key=key, value=value, **fields,
        )
        if ops is not None or raw_ops is not None:
            msg.has_ops = True
            msg.ops = raw_ops if raw_ops is not None else json.dumps(
                ops, separators=(",", ":")).encode()
        if "sig" not in fields:
            msg.sig = self.sign(msg, signer)
        return msg

    def sign(self, msg: pb.Entry, signer: Signer | None = None) -> bytes:
        """This peer's signature of ``msg`` (valid only under its own origin), or
        ``signer``'s."""
        return (signer or self.signer).sign(wire_message(msg))

    def sign_run(
        self, *entries: pb.Entry, before: bytes = NO_CHAIN, signer: Signer | None = None
    ) -> bytes:
        """``sign_run`` with ``signer`` or this peer's key."""
        return sign_run(signer or self.signer, *entries, before=before)

    # -- sending ---------------------------------------------------------------------------

    def send(self, *entries: pb.Entry, cursor: int | None = None, high: int | None = None) -> None:
        """One batch; the cursor moves by the number of entries unless given."""
        if cursor is None:
            self.cursor += len(entries)
            cursor = self.cursor
        self._outbox.put(pb.LinkMessage(batch=pb.Batch(
            entries=list(entries), cursor=cursor, high=cursor if high is None else high,
            hlc=hlc_now(),
        )))

    def tell_holds(self, *vector: pb.OriginSeq) -> None:
        """A Have: what this peer says it holds."""
        self._outbox.put(pb.LinkMessage(have=pb.Have(vector=list(vector))))

    # -- what the node answered ------------------------------------------------------------

    def wait_refused(self, seq: int, origin: str | None = None, timeout: float = 15.0) -> str:
        """The reason the node gave for refusing entry (origin, seq)."""
        wanted = (origin or self.origin, seq)
        deadline = time.monotonic() + timeout
        while wanted not in self._refused:
            left = deadline - time.monotonic()
            if left <= 0 or (self._ended.is_set() and self._notices.empty()):
                raise AssertionError(
                    f"the node did not refuse entry {wanted} (refused: {self._refused}, "
                    f"link: {self.status()})"
                )
            try:
                notice = self._notices.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            self._refused[(notice.origin, notice.seq)] = notice.reason
        return self._refused[wanted]

    def status(self) -> tuple[grpc.StatusCode, str] | None:
        """How the node ended the link (code, message); None while it is up."""
        return self._status if self._ended.is_set() else None

    def wait_closed(self, timeout: float = 15.0) -> tuple[grpc.StatusCode, str]:
        assert self._ended.wait(timeout), "the node kept the link open"
        assert self._status is not None
        return self._status

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._reader.join(5)
        self._beater.join(5)
        self._channel.close()

    def __enter__(self) -> LyingPeer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
