"""Answers to single-key Ranges at the newest revision, kept in memory until a commit changes
the key.

A Range of one key with no options is answered from here without a SQLite read (etcd itself
answers every read from memory). An answer is kept only while it is the key's current one
and only if it is exact for the revision every reader has been told of:

- the store publishes each committed batch on the event loop before answering its writers,
  and ``published`` forgets the keys it changed (and moves ``revision`` on);
- the writer says which revision it is committing before its COMMIT can be seen
  (``committing``): while that is newer than what was published, a reader may already have
  seen the new rows, so nothing is answered from here (a later answer must not show an older
  revision) and nothing read is kept;
- an answer read at a snapshot is kept only when that snapshot is the published revision;
- the writer says auth may be enabled from before the COMMIT that enables it
  (``auth_on``): nothing is answered from here until a COMMIT disables it again.

Every call is made on the event loop thread. Only the store of a process that owns its
writer keeps one: a serving process of ``--processes N`` or a server sharing its database
with others learns of commits too late to keep answers exact.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from shim.mvcc.events import Revision
from shim.pb.rpc_pb2 import RangeRequest

DEFAULT_MAX_BYTES = 16 << 20


def cacheable(req: RangeRequest) -> bool:
    """Whether ``req`` asks for one key's current version as stored (the answer kept here)."""
    return not (
        req.range_end or req.revision > 0 or req.keys_only or req.count_only
        or req.min_mod_revision or req.max_mod_revision
        or req.min_create_revision or req.max_create_revision
        or req.sort_target != RangeRequest.KEY
    )


class CurrentValues:
    """Each key's Range answer (the response after its header), newest used last."""

    def __init__(
        self,
        revision: int,
        committing: Callable[[], int],
        auth_on: Callable[[], bool],
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.revision = revision  # the newest revision published
        self._committing = committing  # the newest revision the writer has begun to commit
        self._auth_on = auth_on  # whether auth may be enabled (reads then need their checks)
        self._max_bytes = max_bytes
        self._answers: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0

    def get(self, key: bytes) -> bytes | None:
        """The answer for ``key`` at ``self.revision``, or None (read it)."""
        if self._committing() != self.revision or self._auth_on():
            return None
        found = self._answers.get(key)
        if found is not None:
            self._answers.move_to_end(key)
        return found

    def keep(self, key: bytes, answer: bytes, read_at: int) -> None:
        """Keep ``answer`` for ``key``, read at revision ``read_at``, if it is exact now."""
        if read_at != self.revision or self._committing() != self.revision:
            return
        size = len(key) + len(answer)
        if size > self._max_bytes // 64:
            return  # a few large values must not push out everything else
        previous = self._answers.pop(key, None)
        if previous is not None:
            self._bytes -= len(key) + len(previous)
        self._answers[key] = answer
        self._bytes += size
        while self._bytes > self._max_bytes:
            old_key, old = self._answers.popitem(last=False)
            self._bytes -= len(old_key) + len(old)

    def published(self, committed: list[Revision]) -> None:
        """A committed batch, published before its writers are answered."""
        if not committed:
            return
        answers = self._answers
        for revision in committed:
            for change in revision.changes:
                dropped = answers.pop(change.kv.key, None)
                if dropped is not None:
                    self._bytes -= len(change.kv.key) + len(dropped)
        self.revision = committed[-1].revision
