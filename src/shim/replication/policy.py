"""The merge policy: which keys replicate, and how each field of a JSON object merges.

The policy is data (``policy.json`` next to this module, or a file given with
``--merge-policy``), never code paths: every node of a cluster must load the same table, so
links compare its digest before exchanging anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_POLICY_FILE = Path(__file__).with_name("policy.json")

# Field policies (see docs/REPLICATION.md):
#   lww               last writer wins by (HLC, origin); objects present on both sides recurse
#   map               key by key, a missing map counting as an empty one (labels, annotations)
#   atomic            last writer wins for the whole subtree (a map is not merged key by key)
#   first-write-wins  the earliest write in HLC order stays; later changes are ignored
#   identity          the object's incarnation id (metadata.uid); first-write-wins
#   counter           concurrent changes add up (each write carries its delta)
#   set               a list of values merged element by element (add / remove)
#   keyed-list        a list of objects merged element by element, keyed by one field
#   local             node-local: never replicated, dropped from replicated values
FIELD_POLICIES = frozenset(
    {
        "lww", "map", "atomic", "first-write-wins", "identity", "counter", "set",
        "keyed-list", "local",
    }
)
MERGE_MODES = frozenset({"fields", "whole"})

Path_ = tuple[str, ...]


class PolicyError(ValueError):
    """The policy file is malformed; the message names the problem."""


@dataclass(frozen=True, slots=True)
class FieldRule:
    policy: str
    key: str | None = None  # keyed-list: the element field that identifies an element
    no_additions_once: Path_ | None = None  # set: refuse additions once this path is set


@dataclass(frozen=True, slots=True)
class KeyRules:
    """How values of one key merge."""

    merge: str  # "fields": JSON objects merge field by field; "whole": whole-value LWW
    fields: dict[Path_, FieldRule] = field(default_factory=dict)
    # Derived from ``fields`` once: every write of the key asks for them.
    identity: Path_ | None = field(init=False)
    local_paths: tuple[Path_, ...] = field(init=False)
    # Fields no later write changes (first-write-wins, identity): replacing or deleting an
    # object that holds one keeps it (``merge.apply_ops``).
    protected: tuple[Path_, ...] = field(init=False)

    def __post_init__(self) -> None:
        by_policy = [(rule.policy, path) for path, rule in self.fields.items()]
        identity = next((path for policy, path in by_policy if policy == "identity"), None)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(
            self, "local_paths", tuple(path for policy, path in by_policy if policy == "local")
        )
        object.__setattr__(self, "protected", tuple(
            path for policy, path in by_policy if policy in ("first-write-wins", "identity")
        ))

    def protected_under(self, path: Path_) -> tuple[Path_, ...]:
        """The protected fields strictly inside ``path``."""
        depth = len(path)
        return tuple(p for p in self.protected if len(p) > depth and p[:depth] == path)

    def rule(self, path: Path_) -> FieldRule | None:
        return self.fields.get(path)


@dataclass(frozen=True, slots=True)
class _Kind:
    prefix: bytes
    merge: str | None
    fields: dict[Path_, FieldRule]


class Policy:
    def __init__(self, document: dict[str, object]) -> None:
        self.document = document
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
        self.digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        self.local_keys = tuple(
            _text(k, "local_keys").encode() for k in _list(document, "local_keys")
        )
        kinds = [_parse_kind(k) for k in _list(document, "kinds")]
        # Shorter prefixes first, so longer ones override what they set.
        self._kinds = sorted(kinds, key=lambda k: len(k.prefix))
        self._longest_first = self._kinds[::-1]
        self._cache: dict[bytes | None, KeyRules] = {}
        self._local_exact = frozenset(self.local_keys)
        self._local_prefixes = tuple(k for k in self.local_keys if k.endswith(b"/"))

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        source = path or DEFAULT_POLICY_FILE
        try:
            document = json.loads(source.read_text())
        except OSError as exc:
            raise PolicyError(f"cannot read merge policy {source}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise PolicyError(f"merge policy {source} is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise PolicyError(f"merge policy {source} must be a JSON object")
        try:
            return cls(document)
        except PolicyError as exc:
            raise PolicyError(f"merge policy {source}: {exc}") from None

    def replicates(self, key: bytes) -> bool:
        """Node-local keys (a local key, or under a local prefix ending in '/') stay here."""
        return key not in self._local_exact and not key.startswith(self._local_prefixes)

    def rules_for(self, key: bytes) -> KeyRules:
        # Rules depend on the key's prefix only: those of the longest matching prefix (read
        # for every entry, so found from the longest down and kept per prefix).
        for kind in self._longest_first:
            if key.startswith(kind.prefix):
                marker = kind.prefix
                break
        else:
            marker = None
        rules = self._cache.get(marker)
        if rules is None:
            merge = "fields"
            fields: dict[Path_, FieldRule] = {}
            # The kinds this key matches: every key whose longest match is the marker's
            # matches the same ones.
            for kind in self._kinds:
                if key.startswith(kind.prefix):
                    if kind.merge is not None:
                        merge = kind.merge
                    fields.update(kind.fields)
            rules = KeyRules(merge, fields)
            self._cache[marker] = rules
        return rules


def _parse_kind(raw: object) -> _Kind:
    if not isinstance(raw, dict):
        raise PolicyError("every entry of 'kinds' must be an object")
    prefix = _text(raw.get("prefix", ""), "prefix")
    merge = raw.get("merge")
    if merge is not None and merge not in MERGE_MODES:
        raise PolicyError(f"kind {prefix!r}: merge must be one of {sorted(MERGE_MODES)}")
    fields_raw = raw.get("fields", {})
    if not isinstance(fields_raw, dict):
        raise PolicyError(f"kind {prefix!r}: 'fields' must be an object")
    fields: dict[Path_, FieldRule] = {}
    for dotted, spec in fields_raw.items():
        if not isinstance(spec, dict) or spec.get("policy") not in FIELD_POLICIES:
            raise PolicyError(
                f"kind {prefix!r}, field {dotted!r}: policy must be one of {sorted(FIELD_POLICIES)}"
            )
        key = spec.get("key")
        if spec["policy"] == "keyed-list" and not isinstance(key, str):
            raise PolicyError(f"kind {prefix!r}, field {dotted!r}: keyed-list needs a 'key'")
        frozen = spec.get("no_additions_once")
        fields[tuple(dotted.split("."))] = FieldRule(
            spec["policy"], key, tuple(frozen.split(".")) if isinstance(frozen, str) else None
        )
    return _Kind(prefix.encode(), merge, fields)


def _list(document: dict[str, object], name: str) -> list[object]:
    value = document.get(name, [])
    if not isinstance(value, list):
        raise PolicyError(f"'{name}' must be a list")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise PolicyError(f"'{what}' must be a string")
    return value
