"""A replicated change of one key (``Entry``), as every part of replication passes it around.

The merge (``merge``) folds entries into a key's state; links, storage, signing and the wire
only carry them, so they import this module and not the merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from shim.replication.ops import Op
from shim.replication.ops import dumps as dumps_ops

Stamp = tuple[int, str, int]  # (hlc, origin, seq): the order entries are folded in


AUTH = "auth"  # the kind of the entries that carry auth objects


@dataclass(frozen=True, slots=True)
class Entry:
    """One replicated change of one key, immutable, identified by (origin, seq)."""

    origin: str
    seq: int
    hlc: int
    key: bytes
    deleted: bool
    value: bytes  # the writer's whole new value (empty for a delete)
    lease: int
    ops: list[Op] | None  # field operations against the writer's base; None: whole value
    base_uid: str | None  # incarnation the writer saw (None: absent or no identity)
    uid: str | None  # incarnation written (None for deletes and values without identity)
    # "" for a key-value write; AUTH for an auth object (user, role, setting: shim.auth),
    # whose key names the object and whose value is its state, merged by the auth store.
    kind: str = ""
    secret: str | None = None  # an auth user's password hash (never in ``value``)
    # Pruned by retention: only its place in its origin's sequence is left (no value, no
    # operations); stored and forwarded, never folded.
    pruned: bool = False
    # The origin's signature (empty for origins from before signatures) and the body digest
    # (shim.replication.signing); ``chain``: the origin's hash chain up to this entry, as
    # the node that holds it computed it.
    sig: bytes = b""
    digest: bytes = b""
    chain: bytes = b""
    # Origins that sign their chain, not each entry (``sig`` empty): the origin's signature
    # of its chain at this entry, on the entries it signed (``signing.head_message``).
    head_sig: bytes = b""
    # What ``sig`` signs, or what ``chain`` takes in (``signing.message_hash``), when a check
    # computed it already; never stored or sent.
    message: bytes = field(default=b"", compare=False, repr=False)
    # The origin's chain before this entry as the check computed it (from what the sender
    # sent), and the proof that the origin wrote it when it travels alone (``tail``: message
    # hashes up to a ``head_sig``). Kept only with an equivocation's versions.
    prev_chain: bytes = field(default=b"", compare=False, repr=False)
    tail: bytes = field(default=b"", compare=False, repr=False)
    # ``ops`` in their one JSON form (``ops.dumps``) when the code that made or read the
    # entry had it: signing, storing and sending it then never encode the operations again.
    ops_json: str | None = field(default=None, compare=False, repr=False)

    @property
    def stamp(self) -> Stamp:
        return (self.hlc, self.origin, self.seq)

    def ops_text(self) -> str | None:
        """``ops`` as they are signed, stored and sent (one canonical JSON form)."""
        if self.ops is None:
            return None
        return self.ops_json if self.ops_json is not None else dumps_ops(self.ops)

    def copy_with(self, **changes: Any) -> Entry:
        """``dataclasses.replace`` at half its cost: every write and every arrival copies its
        entry once or twice (sealed, chained, admitted), and ``replace`` walks the class's
        fields and runs the frozen ``__init__`` each time. ``changes`` must name fields."""
        copy = _new_entry(Entry)
        for get, put in _ENTRY_SLOTS:
            put(copy, get(self))
        for name, value in changes.items():
            _ENTRY_SETTERS[name](copy, value)
        return copy


_new_entry = object.__new__
# Each field's slot, read and written directly (a frozen dataclass refuses setattr).
_ENTRY_SETTERS = {f.name: Entry.__dict__[f.name].__set__ for f in fields(Entry)}
_ENTRY_SLOTS = [(Entry.__dict__[f.name].__get__, Entry.__dict__[f.name].__set__)
                for f in fields(Entry)]
