"""No entry can wedge a link or a key (issue 17, cases 3 and 4): a peer holding a valid token
sends malformed entries, operations against the merge policy, values over the size limits and
stamps far ahead; real `shim serve` processes refuse each with its reason, keep the link up,
hold far-ahead stamps apart, and set apart an entry that cannot be folded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import apsw
import grpc

from shim.pb import replication_pb2 as pb
from tests.support import ShimServer
from tests.support.lying_peer import LyingPeer, hlc_now
from tests.support.replication import (
    get,
    node_args,
    put,
    status,
    wait_converged,
    wait_for,
)

Factory = Callable[..., ShimServer]
KEY = b"/registry/pods/default/web"
MAX_INT64 = 2**63 - 1


def pod(uid: str = "u1", **spec: Any) -> bytes:
    return json.dumps({
        "metadata": {"name": "web", "namespace": "default", "uid": uid,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1},
        "spec": {"replicas": 1, **spec},
    }).encode()


def read(server: ShimServer, key: bytes = KEY) -> Any:
    value = get(server.endpoint, key)
    return None if value is None else json.loads(value)


def test_bad_entries_are_refused_with_their_reason_and_the_link_goes_on(
    shim_factory: Factory,
) -> None:
    node = shim_factory(extra_args=node_args("n1"))
    put(node.endpoint, KEY, pod())
    refused: list[tuple[dict[str, Any], str]] = [
        # Case 3: harmless on arrival, a TypeError when the key is folded again.
        ({"ops": [["order", ["metadata", "finalizers"], None, 5]]}, "the order must be a list"),
        # Case 4: the policy's identity and first-write-wins fields.
        ({"ops": [["set", ["metadata", "uid"], "u2"]]}, "metadata.uid (identity) cannot"),
        ({"ops": [["fww", ["metadata", "uid"], "u2"]]}, "metadata.uid (identity) cannot"),
        ({"ops": [["set", ["metadata", "name"], "evil"]]},
         "metadata.name (first-write-wins) cannot"),
        ({"ops": [["del", ["metadata", "creationTimestamp"]]]},
         "metadata.creationTimestamp (first-write-wins) cannot"),
        ({"ops": [["add", ["metadata", "generation"], "1"]]}, "the delta must be a finite"),
        ({"ops": [["add", ["spec", "replicas"], 1]]}, "spec.replicas (lww) cannot"),
        ({"ops": [["set", ["spec", 5], 1]]}, "the path must be a list"),
        ({"ops": [["set", [["spec"]], 1]]}, "the path must be a list"),
        ({"ops": [["set", ["spec", "replicas"]]]}, "1 arguments, wants 2"),
        ({"ops": [["grow", ["spec"], 1]]}, "unknown operation 'grow'"),
        ({"ops": [["sadd", ["metadata", "finalizers", "x"], "y"]]},
         "metadata.finalizers.x is inside metadata.finalizers (set)"),
        ({"ops": [["kset", ["status", "conditions"], "name", {"name": "x"}]]},
         "keyed by 'type', not 'name'"),
        ({"raw_ops": b"not json"}, "operations are not JSON"),
        # Operations by reference: one, naming an earlier entry of the origin by its seq.
        ({"ops": [["since", 1], ["set", ["spec", "replicas"], 2]]},
         "operations by reference are the entry's only operation"),
        ({"ops": [["since", 2**40]]}, "name an earlier entry of its origin"),
        ({"ops": [["since", "1"]]}, "(since): the entry must be a sequence number"),
        ({"ops": [["since", 0]]}, "(since): the entry must be a sequence number"),
        ({"ops": [["set", ["spec", "replicas"], 2]], "uid": "u1", "base_uid": "u0"},
         "keeps the incarnation"),
        # Size limits: the client API's --max-request-bytes (1.5 MiB by default).
        ({"value": b"x" * (1800 * 1024)}, "exceeds the largest request"),
        ({"kind": "gossip"}, "unknown kind 'gossip'"),
        ({"deleted": True, "value": b"left over"}, "a delete carries no value"),
        # Numbers no table column holds: such an entry has no place in its origin's sequence
        # (the origin's later entries would wait for its seq for good), so this one's seq is
        # the next one again.
        ({"hlc": 2**64 - 1}, "the clock stamp must be"),
        ({"seq": 2**64 - 1}, "the sequence number must be"),
    ]
    with LyingPeer(node.endpoint) as peer:
        for fields, reason in refused:
            fields = dict(fields)
            ops = {k: fields.pop(k) for k in ("ops", "raw_ops") if k in fields}
            uids = {"uid": "u1", "base_uid": "u1"} if ops else {}
            if "hlc" in fields:
                fields["seq"] = peer.seq + 1
            entry = peer.entry(KEY, fields.pop("value", pod(replicas=9)), **ops,
                               **{**uids, **fields})
            peer.send(entry)
            said = peer.wait_refused(entry.seq)
            assert reason in said, f"{fields or ops}: {said!r}"
            assert peer.status() is None, "the node closed the link"
        # The same link then carries an honest edit, and a whole `metadata` set keeps the
        # object's identity and first-write-wins fields.
        honest = peer.entry(KEY, pod(replicas=3), ops=[["set", ["spec", "replicas"], 3]],
                            uid="u1", base_uid="u1")
        peer.send(honest)
        wait_for(lambda: read(node)["spec"]["replicas"], lambda n: n == 3, "the honest edit")
        # An edit over it by reference: the node holds what it names, so takes it as it is.
        peer.send(peer.entry(KEY, pod(replicas=4), ops=[["since", honest.seq]], uid="u1",
                             base_uid="u1"))
        wait_for(lambda: read(node)["spec"]["replicas"], lambda n: n == 4, "the edit by reference")
        peer.send(peer.entry(KEY, pod(), uid="u1", base_uid="u1", ops=[
            ["set", ["metadata"], {"name": "evil", "uid": "u9", "labels": {"a": "b"}}]]))
        meta = wait_for(lambda: read(node)["metadata"], lambda m: "labels" in m,
                        "the metadata edit")
        assert meta == {"name": "web", "namespace": "default", "uid": "u1",
                        "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"a": "b"}}
        assert peer.status() is None
    quarantine = status(node)["quarantine"]
    assert quarantine["total"] == quarantine["refused"] == len(refused)
    text = node.log_path.read_text(errors="replace")
    assert "Traceback" not in text and "Unexpected <class" not in text
    assert text.count("refused from") == len(refused)  # one line each


def test_a_batch_whose_cursor_no_table_holds_ends_the_link_with_a_clear_status(
    shim_factory: Factory,
) -> None:
    node = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(node.endpoint) as peer:
        peer.send(peer.entry(b"/k", b"v"), cursor=2**64 - 1, high=2**64 - 1)
        code, message = peer.wait_closed()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "out of range (at most 2^63-1)" in message and "class" not in message
    with LyingPeer(node.endpoint) as peer:  # the node goes on linking
        peer.send(peer.entry(b"/k", b"v"))
        wait_for(lambda: get(node.endpoint, b"/k"), lambda v: v == b"v", "an honest entry")
    assert "Traceback" not in node.log_path.read_text(errors="replace")


def test_a_vector_no_table_holds_ends_the_link_with_a_clear_status(
    shim_factory: Factory,
) -> None:
    """A Have whose version vector names a position beyond 2^63-1 (no honest node has one)."""
    node = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(node.endpoint) as peer:
        peer.tell_holds(pb.OriginSeq(origin=peer.origin, seq=2**64 - 1))
        code, message = peer.wait_closed()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "a version vector: seq" in message and "out of range (at most 2^63-1)" in message
    assert "class" not in message
    with LyingPeer(node.endpoint) as peer:  # the node goes on linking
        peer.send(peer.entry(b"/k", b"v"))
        wait_for(lambda: get(node.endpoint, b"/k"), lambda v: v == b"v", "an honest entry")
    assert "Traceback" not in node.log_path.read_text(errors="replace")


def test_a_far_future_stamp_never_hides_later_writes(shim_factory: Factory) -> None:
    n1 = shim_factory(extra_args=node_args("n1"))
    n2 = shim_factory(extra_args=node_args("n2", joins=[n1]))
    with LyingPeer(n1.endpoint) as peer:
        # Stamped 2^63-1: held apart for good (it is forwarded, and held, on n2 too).
        peer.send(peer.entry(b"/forever", b"from the future", hlc=MAX_INT64))
        # Stamped 2 s ahead (the bound is 0.5 s): held until the clock gets there, then it
        # supersedes what was written meanwhile, by the documented rule (later stamp wins).
        peer.send(peer.entry(b"/soon", b"from 2 s ahead", hlc=hlc_now(ahead_ms=2000)))
        for node in (n1, n2):
            wait_for(lambda node=node: status(node)["entries"]["held"], lambda n: n >= 1,
                     f"{node.name} to hold the far-future entry")
        put(n2.endpoint, b"/forever", b"honest")
        put(n2.endpoint, b"/soon", b"honest")
        wait_converged([n1, n2], expect=lambda s: s.get(b"/forever", (b"",))[0] == b"honest"
                       and s.get(b"/soon", (b"",))[0] == b"from 2 s ahead")
        assert peer.status() is None
    for node in (n1, n2):
        assert get(node.endpoint, b"/forever") == b"honest"
        assert status(node)["entries"]["held"] == 1


def test_an_entry_that_cannot_be_folded_is_set_apart_and_the_key_goes_on(
    shim_factory: Factory,
) -> None:
    """An entry stored before ingest checked operations (an older version wrote it) that fails
    when its key is folded again: set apart, and the key and the link go on."""
    node = shim_factory(extra_args=node_args("n1"))
    put(node.endpoint, KEY, pod())
    with LyingPeer(node.endpoint) as peer:
        poison = peer.entry(KEY, pod(replicas=2), ops=[["set", ["spec", "replicas"], 2]],
                            uid="u1", base_uid="u1")
        peer.send(poison)
        wait_for(lambda: read(node)["spec"]["replicas"], lambda n: n == 2, "the edit")
    node.stop()
    db = apsw.Connection(str(node.database))
    with db:
        db.execute("UPDATE repl_entry SET ops = ? WHERE origin = ? AND seq = ?",
                   ('[["order",["metadata","finalizers"],null,5]]', peer.origin, poison.seq))
    db.close()
    node.start()
    with LyingPeer(node.endpoint, node_id=peer.node_id, signer=peer.signer) as again:
        again.seq = poison.seq
        # Stamped before the poison: the key is folded again, the poison with it.
        late = again.entry(KEY, pod(), ops=[["set", ["spec", "paused"], True]], uid="u1",
                           base_uid="u1", hlc=poison.hlc - 1)
        again.send(late)
        wait_for(lambda: read(node)["spec"].get("paused"), lambda p: p is True,
                 "the late edit to apply")
        assert again.status() is None
        # An auth object no auth store can read passes the ingest checks (its kind and key
        # are right) and fails when applied: set apart too.
        again.send(again.entry(b"user/mallory", b"not an object", kind="auth"))
        wait_for(lambda: status(node)["quarantine"]["set_apart"], lambda n: n == 2,
                 "the auth entry to be set apart")
        assert again.status() is None
    assert read(node)["spec"]["replicas"] == 1  # without the set-apart edit
    put(node.endpoint, KEY, pod(replicas=4))
    assert read(node)["spec"]["replicas"] == 4
    reasons = [q["reason"] for q in status(node)["quarantine"]["latest"]]
    assert "stored operations" in reasons[1] and "applying it failed" in reasons[0], reasons


def test_an_entry_that_fails_to_apply_is_set_apart_once_and_its_batch_applies(
    shim_factory: Factory,
) -> None:
    """A batch is merged under one savepoint; when an entry of it raises as it applies, the
    batch is done again entry by entry: the entries around it apply, it alone is set apart,
    and it is counted and logged once."""
    node = shim_factory(extra_args=node_args("n1"))
    with LyingPeer(node.endpoint) as peer:
        before = peer.entry(b"/batch/before", b"1")
        bad = peer.entry(b"user/mallory", b"not an object", kind="auth")
        after = peer.entry(b"/batch/after", b"2")
        edit = peer.entry(b"/batch/before", b"3")  # the same key again, later in the batch
        peer.send(before, bad, after, edit)
        wait_for(lambda: status(node)["quarantine"]["set_apart"], lambda n: n >= 1,
                 "the auth entry to be set apart")
        assert get(node.endpoint, b"/batch/before") == b"3"
        assert get(node.endpoint, b"/batch/after") == b"2"
        assert peer.status() is None
    quarantine = status(node)["quarantine"]
    assert quarantine["set_apart"] == 1, quarantine
    assert node.log_path.read_text().count("user/mallory") == 1
