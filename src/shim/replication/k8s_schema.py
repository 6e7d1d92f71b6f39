"""What the merge knows of Kubernetes' protobuf schema: field numbers, names and types.

Only what the merge rules need is described (ObjectMeta; spec and status one level deep; the
fields the policy names; conditions by type). Everything else in an object is kept by field
number, opaque, and resolves last-writer-wins per field number. The numbers are those of the
``generated.proto`` files of k8s.io/api and k8s.io/apimachinery; names are the JSON names, so
one policy (``metadata.labels``, ``status.conditions``) governs JSON and protobuf values alike.

Messages are written as ``{number: "type name"}``, as in a .proto file; a type is a scalar
(``string``, ``bytes``, ``bool``, ``int32``, ``int64``), ``opaque`` (a message kept as its
bytes), ``map<string,string>`` / ``map<string,bytes>``, or another message of this table;
``repeated`` in front makes a list.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# -- the table ---------------------------------------------------------------------------------

# Every *Condition type (PodCondition, DeploymentCondition, metav1.Condition, ...) has its type
# at 1, the key conditions merge by; the rest of a condition is one value.
_CONDITION = {1: "string type"}


def _conditions(number: int) -> dict[int, str]:
    return {number: "repeated Condition conditions"}


_MESSAGES: dict[str, dict[int, str]] = {
    "ObjectMeta": {
        1: "string name", 2: "string generateName", 3: "string namespace",
        4: "string selfLink", 5: "string uid", 6: "string resourceVersion",
        7: "int64 generation", 8: "Time creationTimestamp", 9: "Time deletionTimestamp",
        10: "int64 deletionGracePeriodSeconds", 11: "map<string,string> labels",
        12: "map<string,string> annotations", 13: "repeated OwnerReference ownerReferences",
        14: "repeated string finalizers", 17: "repeated opaque managedFields",
    },
    "Time": {1: "int64 seconds", 2: "int32 nanos"},
    "OwnerReference": {
        1: "string kind", 3: "string name", 4: "string uid", 5: "string apiVersion",
        6: "bool controller", 7: "bool blockOwnerDeletion",
    },
    "Condition": _CONDITION,
    # k8s.io/api/core/v1
    "PodSpec": {10: "string nodeName"},
    "PodStatus": _conditions(2),
    "ServiceSpec": {3: "string clusterIP", 18: "repeated string clusterIPs"},
    "ServiceStatus": _conditions(2),
    "NodeStatus": _conditions(4),
    "NamespaceStatus": _conditions(2),
    "PersistentVolumeClaimSpec": {3: "string volumeName"},
    "PersistentVolumeClaimStatus": _conditions(4),
    "ReplicationControllerSpec": {1: "int32 replicas"},
    "ReplicationControllerStatus": _conditions(6),
    # k8s.io/api/apps/v1
    "DeploymentSpec": {1: "int32 replicas"},
    "DeploymentStatus": _conditions(6),
    "ReplicaSetSpec": {1: "int32 replicas"},
    "ReplicaSetStatus": _conditions(6),
    "StatefulSetSpec": {1: "int32 replicas"},
    "StatefulSetStatus": _conditions(10),
    "DaemonSetStatus": _conditions(10),
    # batch/v1, autoscaling/v2, policy/v1, certificates.k8s.io/v1
    "JobStatus": _conditions(1),
    "HorizontalPodAutoscalerStatus": _conditions(6),
    "PodDisruptionBudgetStatus": _conditions(7),
    "CertificateSigningRequestStatus": _conditions(1),
    # coordination.k8s.io/v1
    "LeaseSpec": {
        1: "string holderIdentity", 2: "int32 leaseDurationSeconds", 3: "opaque acquireTime",
        4: "opaque renewTime", 5: "int32 leaseTransitions", 6: "string strategy",
        7: "string preferredHolder",
    },
}

# Object types: apiVersion -> kind -> the fields after metadata (1). "message" is a message
# whose fields are all kept by number (it merges field by field, each field opaque).
_TYPES: dict[str, dict[str, dict[int, str]]] = {
    "v1": {
        "Pod": {2: "PodSpec spec", 3: "PodStatus status"},
        "Service": {2: "ServiceSpec spec", 3: "ServiceStatus status"},
        "Node": {2: "message spec", 3: "NodeStatus status"},
        "Namespace": {2: "message spec", 3: "NamespaceStatus status"},
        "PersistentVolumeClaim": {
            2: "PersistentVolumeClaimSpec spec", 3: "PersistentVolumeClaimStatus status",
        },
        "PersistentVolume": {2: "message spec", 3: "message status"},
        "ReplicationController": {
            2: "ReplicationControllerSpec spec", 3: "ReplicationControllerStatus status",
        },
        "ResourceQuota": {2: "message spec", 3: "message status"},
        "LimitRange": {2: "message spec"},
        "ConfigMap": {
            2: "map<string,string> data", 3: "map<string,bytes> binaryData", 4: "bool immutable",
        },
        "Secret": {
            2: "map<string,bytes> data", 3: "string type", 4: "map<string,string> stringData",
            5: "bool immutable",
        },
        "Endpoints": {2: "repeated opaque subsets"},
        "Event": {
            2: "opaque involvedObject", 3: "string reason", 4: "string message",
            5: "opaque source", 6: "Time firstTimestamp", 7: "Time lastTimestamp",
            8: "int32 count", 9: "string type", 10: "opaque eventTime", 11: "opaque series",
            12: "string action", 13: "opaque related", 14: "string reportingComponent",
            15: "string reportingInstance",
        },
    },
    "apps/v1": {
        "Deployment": {2: "DeploymentSpec spec", 3: "DeploymentStatus status"},
        "ReplicaSet": {2: "ReplicaSetSpec spec", 3: "ReplicaSetStatus status"},
        "StatefulSet": {2: "StatefulSetSpec spec", 3: "StatefulSetStatus status"},
        "DaemonSet": {2: "message spec", 3: "DaemonSetStatus status"},
    },
    "batch/v1": {
        "Job": {2: "message spec", 3: "JobStatus status"},
        "CronJob": {2: "message spec", 3: "message status"},
    },
    "coordination.k8s.io/v1": {"Lease": {2: "LeaseSpec spec"}},
    "autoscaling/v1": {"HorizontalPodAutoscaler": {2: "message spec", 3: "message status"}},
    "autoscaling/v2": {
        "HorizontalPodAutoscaler": {2: "message spec", 3: "HorizontalPodAutoscalerStatus status"},
    },
    "policy/v1": {
        "PodDisruptionBudget": {2: "message spec", 3: "PodDisruptionBudgetStatus status"},
    },
    "networking.k8s.io/v1": {
        "Ingress": {2: "message spec", 3: "message status"},
        "NetworkPolicy": {2: "message spec"},
    },
    "certificates.k8s.io/v1": {
        "CertificateSigningRequest": {
            2: "message spec", 3: "CertificateSigningRequestStatus status",
        },
    },
    "storage.k8s.io/v1": {"VolumeAttachment": {2: "message spec", 3: "message status"}},
}

# Any other type: ObjectMeta at 1 (every object kube-apiserver stores has it there), the rest
# opaque by field number.
_GENERIC: dict[int, str] = {}


# -- the parsed form ---------------------------------------------------------------------------


class Kind(enum.Enum):
    STRING = "string"
    BYTES = "bytes"
    BOOL = "bool"
    INT32 = "int32"
    INT64 = "int64"
    OPAQUE = "opaque"
    MESSAGE = "message"
    MAP_STRING = "map<string,string>"
    MAP_BYTES = "map<string,bytes>"


VARINT_KINDS = frozenset({Kind.BOOL, Kind.INT32, Kind.INT64})


@dataclass(frozen=True, slots=True)
class Field:
    number: int
    name: str
    kind: Kind
    repeated: bool = False
    message: Message | None = None  # Kind.MESSAGE: its fields
    # Derived once (the codec reads them for every field of every value).
    wire_type: int = field(init=False)  # 0 varint, 2 length-delimited
    tag: int = field(init=False)

    def __post_init__(self) -> None:
        wire_type = 0 if self.kind in VARINT_KINDS else 2
        object.__setattr__(self, "wire_type", wire_type)
        object.__setattr__(self, "tag", self.number << 3 | wire_type)


@dataclass(slots=True)
class Message:
    name: str
    by_number: dict[int, Field] = field(default_factory=dict)
    by_name: dict[str, Field] = field(default_factory=dict)

    def add(self, f: Field) -> None:
        self.by_number[f.number] = f
        self.by_name[f.name] = f


class _Builder:
    def __init__(self) -> None:
        self.messages: dict[str, Message] = {}

    def message(self, name: str, fields: dict[int, str]) -> Message:
        msg = Message(name)
        for number, spec in sorted(fields.items()):
            msg.add(self.field(number, spec))
        return msg

    def named(self, name: str) -> Message:
        msg = self.messages.get(name)
        if msg is None:
            msg = Message(name)
            self.messages[name] = msg  # before its fields: a message may contain itself
            for number, spec in sorted(_MESSAGES[name].items()):
                msg.add(self.field(number, spec))
        return msg

    def field(self, number: int, spec: str) -> Field:
        words = spec.split()
        repeated = words[0] == "repeated"
        if repeated:
            words = words[1:]
        type_name, name = words
        if type_name == "message":
            return Field(number, name, Kind.MESSAGE, repeated, Message(type_name))
        if type_name in _MESSAGES:
            return Field(number, name, Kind.MESSAGE, repeated, self.named(type_name))
        return Field(number, name, Kind(type_name), repeated)


def _build() -> tuple[Message, dict[tuple[str, str], Message]]:
    builder = _Builder()
    meta = builder.field(1, "ObjectMeta metadata")
    types: dict[tuple[str, str], Message] = {}
    for api_version, kinds in _TYPES.items():
        for kind, fields in kinds.items():
            msg = builder.message(kind, fields)
            msg.add(meta)
            types[(api_version, kind)] = msg
    generic = builder.message("object", _GENERIC)
    generic.add(meta)
    return generic, types


GENERIC_OBJECT, OBJECT_TYPES = _build()

# The names an object's own fields may not take: the envelope's type sits beside them.
ENVELOPE_NAMES = frozenset({"apiVersion", "kind"})
assert not any(ENVELOPE_NAMES & msg.by_name.keys() for msg in OBJECT_TYPES.values())


def object_message(api_version: str, kind: str) -> Message:
    """The fields of objects of this type the merge knows."""
    return OBJECT_TYPES.get((api_version, kind), GENERIC_OBJECT)
