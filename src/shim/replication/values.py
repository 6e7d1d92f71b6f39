"""A stored value as the merge sees it: an object when the key merges field by field and the
value is one (a JSON object, or a Kubernetes object stored as protobuf, which ``k8sproto``
reads into the same tree), else its bytes; the object's incarnation (``identity``: its
``metadata.uid``); and the one encoding of a merged object every replica stores
(``canonical``)."""

from __future__ import annotations

import json
import re

from shim.replication import k8sproto, proto_changes
from shim.replication.k8sproto import ProtoObject
from shim.replication.policy import KeyRules, Path_
from shim.replication.trees import Json, delete_at, get_at

# Looks like a JSON object (checked without copying a possibly large value).
_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")


def canonical(doc: Json) -> bytes:
    """The one encoding of a merged object every replica stores."""
    if isinstance(doc, ProtoObject):
        return k8sproto.encode(doc)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def may_be_object(value: bytes, rules: KeyRules) -> bool:
    """Whether ``decode`` may find an object in ``value`` (False: it gives the bytes), from
    the value's first bytes only."""
    return rules.merge == "fields" and (
        value.startswith(k8sproto.PREFIX) or _JSON_OBJECT_START.match(value) is not None
    )


def decode(value: bytes, rules: KeyRules) -> Json | bytes:
    """An object (with node-local fields dropped) when the key merges field by field and the
    value is a JSON object or a Kubernetes protobuf object; otherwise the bytes themselves."""
    if not may_be_object(value, rules):
        return value
    if value.startswith(k8sproto.PREFIX):
        return _decode_proto(value, rules.local_paths)
    try:
        doc = json.loads(value)
    except ValueError:
        return value
    if not isinstance(doc, dict):
        return value
    for path in rules.local_paths:
        delete_at(doc, path)
    return doc


# Protobuf objects decoded lately, by their bytes: a replica decodes each version of an
# object as an entry's value, and again as the key's stored value when the key's next entry
# comes. Decoded objects are shared, so nothing changes one in place (``step`` copies before
# it applies operations; ``k8sproto.decode_pair`` shares parts the same way). Emptied whole
# once the bytes decoded since exceed the budget: a decoded Pod takes about 6 times its bytes
# in memory, so 1 MiB of versions (~600 Pods) holds some 6 MiB.
_DECODED: dict[tuple[bytes, tuple[Path_, ...]], ProtoObject | bytes] = {}


DECODED_BUDGET = 1 << 20


_decoded_bytes = 0


def _decode_proto(value: bytes, local_paths: tuple[Path_, ...]) -> ProtoObject | bytes:
    """``k8sproto.decode`` of ``value`` (the bytes themselves when they do not decode)."""
    global _decoded_bytes
    found = _DECODED.get((value, local_paths))
    if found is None:
        proto = k8sproto.decode(value, local_paths)
        found = value if proto is None else proto
        _decoded_bytes += len(value)
        if _decoded_bytes > DECODED_BUDGET:
            _DECODED.clear()
            _decoded_bytes = len(value)
        _DECODED[(value, local_paths)] = found
    return found


def identity(doc: Json | bytes | None, rules: KeyRules) -> str | None:
    path = rules.identity
    if path is None or not isinstance(doc, dict):
        return None
    found = get_at(doc, path)
    # An empty uid is none: Go's marshaller writes the field even when it is empty.
    return found if isinstance(found, str) and found else None


def value_identity(value: bytes, rules: KeyRules) -> str | None:
    """``identity`` of the object ``value`` holds; of a protobuf object, read from the fields
    that hold it only."""
    if rules.merge != "fields" or rules.identity is None:
        return None
    if value.startswith(k8sproto.PREFIX):
        try:
            return proto_changes.identity_of(value, rules)
        except k8sproto.DecodeError:
            pass  # what ``decode`` makes of it, below
    return identity(decode(value, rules), rules)
