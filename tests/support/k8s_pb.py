"""Kubernetes objects in protobuf, written by Google's protobuf library rather than by shim.

Tests build the bytes kube-apiserver would store from message classes declared here (a subset
of k8s.io/api's generated.proto, field numbers as there), serialised by the protobuf runtime,
so shim's own codec is checked against an encoder it does not share code with. Like Go's
generated marshallers, the runtime writes fields in ascending number and, serialising
deterministically, map entries sorted by key; proto2 fields set explicitly are written even
when empty, as Go writes its non-pointer fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PREFIX = b"k8s\x00"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES, "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32, "int64": _F.TYPE_INT64,
}

# (message, [(number, name, type, repeated)]); "map:V" is map<string, V>.
_MESSAGES: list[tuple[str, list[tuple[int, str, str, bool]]]] = [
    ("TypeMeta", [(1, "apiVersion", "string", False), (2, "kind", "string", False)]),
    ("Unknown", [
        (1, "typeMeta", "TypeMeta", False), (2, "raw", "bytes", False),
        (3, "contentEncoding", "string", False), (4, "contentType", "string", False),
    ]),
    ("Time", [(1, "seconds", "int64", False), (2, "nanos", "int32", False)]),
    ("OwnerReference", [
        (1, "kind", "string", False), (3, "name", "string", False), (4, "uid", "string", False),
        (5, "apiVersion", "string", False), (6, "controller", "bool", False),
        (7, "blockOwnerDeletion", "bool", False),
    ]),
    ("FieldsV1", [(1, "Raw", "bytes", False)]),
    ("ManagedFieldsEntry", [
        (1, "manager", "string", False), (2, "operation", "string", False),
        (3, "apiVersion", "string", False), (4, "time", "Time", False),
        (6, "fieldsType", "string", False), (7, "fieldsV1", "FieldsV1", False),
        (8, "subresource", "string", False),
    ]),
    ("ObjectMeta", [
        (1, "name", "string", False), (2, "generateName", "string", False),
        (3, "namespace", "string", False), (4, "selfLink", "string", False),
        (5, "uid", "string", False), (6, "resourceVersion", "string", False),
        (7, "generation", "int64", False), (8, "creationTimestamp", "Time", False),
        (9, "deletionTimestamp", "Time", False),
        (10, "deletionGracePeriodSeconds", "int64", False),
        (11, "labels", "map:string", False), (12, "annotations", "map:string", False),
        (13, "ownerReferences", "OwnerReference", True), (14, "finalizers", "string", True),
        (17, "managedFields", "ManagedFieldsEntry", True),
    ]),
    ("Container", [
        (1, "name", "string", False), (2, "image", "string", False),
        (3, "command", "string", True), (14, "imagePullPolicy", "string", False),
    ]),
    ("PodSpec", [
        (2, "containers", "Container", True), (3, "restartPolicy", "string", False),
        (4, "terminationGracePeriodSeconds", "int64", False), (6, "dnsPolicy", "string", False),
        (7, "nodeSelector", "map:string", False), (8, "serviceAccountName", "string", False),
        (10, "nodeName", "string", False), (19, "schedulerName", "string", False),
    ]),
    ("PodCondition", [
        (1, "type", "string", False), (2, "status", "string", False),
        (3, "lastProbeTime", "Time", False), (4, "lastTransitionTime", "Time", False),
        (5, "reason", "string", False), (6, "message", "string", False),
    ]),
    ("PodStatus", [
        (1, "phase", "string", False), (2, "conditions", "PodCondition", True),
        (5, "hostIP", "string", False), (6, "podIP", "string", False),
        (7, "startTime", "Time", False), (9, "qosClass", "string", False),
    ]),
    ("Pod", [
        (1, "metadata", "ObjectMeta", False), (2, "spec", "PodSpec", False),
        (3, "status", "PodStatus", False),
    ]),
    ("PodTemplateSpec", [(1, "metadata", "ObjectMeta", False), (2, "spec", "PodSpec", False)]),
    ("DeploymentSpec", [
        (1, "replicas", "int32", False), (3, "template", "PodTemplateSpec", False),
        (5, "minReadySeconds", "int32", False), (6, "revisionHistoryLimit", "int32", False),
        (7, "paused", "bool", False), (9, "progressDeadlineSeconds", "int32", False),
    ]),
    ("DeploymentCondition", [
        (1, "type", "string", False), (2, "status", "string", False),
        (4, "reason", "string", False), (5, "message", "string", False),
        (6, "lastUpdateTime", "Time", False), (7, "lastTransitionTime", "Time", False),
    ]),
    ("DeploymentStatus", [
        (1, "observedGeneration", "int64", False), (2, "replicas", "int32", False),
        (3, "updatedReplicas", "int32", False), (4, "availableReplicas", "int32", False),
        (6, "conditions", "DeploymentCondition", True), (7, "readyReplicas", "int32", False),
    ]),
    ("Deployment", [
        (1, "metadata", "ObjectMeta", False), (2, "spec", "DeploymentSpec", False),
        (3, "status", "DeploymentStatus", False),
    ]),
    ("ConfigMap", [
        (1, "metadata", "ObjectMeta", False), (2, "data", "map:string", False),
        (3, "binaryData", "map:bytes", False), (4, "immutable", "bool", False),
    ]),
]


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="shim_tests/k8s_subset.proto", package="shim_tests.k8s", syntax="proto2"
    )
    for name, fields in _MESSAGES:
        msg = proto.message_type.add(name=name)
        for number, field_name, type_name, repeated in fields:
            field = msg.field.add(name=field_name, number=number)
            field.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
            if type_name.startswith("map:"):
                entry_name = field_name[0].upper() + field_name[1:] + "Entry"
                entry = msg.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_F.TYPE_STRING,
                                label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_SCALARS[type_name[4:]],
                                label=_F.LABEL_OPTIONAL)
                field.label = _F.LABEL_REPEATED
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".shim_tests.k8s.{name}.{entry_name}"
            elif type_name in _SCALARS:
                field.type = _SCALARS[type_name]
            else:
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".shim_tests.k8s.{type_name}"
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
CLASSES: dict[str, Any] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"shim_tests.k8s.{name}"))
    for name, _ in _MESSAGES
}
API_VERSIONS = {"Pod": "v1", "Deployment": "apps/v1", "ConfigMap": "v1"}


def stored(obj: Any) -> bytes:
    """What kube-apiserver stores for ``obj``: the prefix and the runtime.Unknown envelope."""
    kind = obj.DESCRIPTOR.name
    envelope = CLASSES["Unknown"](
        typeMeta=CLASSES["TypeMeta"](apiVersion=API_VERSIONS[kind], kind=kind),
        raw=obj.SerializeToString(deterministic=True),
        contentEncoding="",
        contentType="",
    )
    return PREFIX + envelope.SerializeToString(deterministic=True)


def parse(value: bytes, kind: str) -> Any:
    """The object in a stored value (fields this subset lacks are kept as unknown fields)."""
    assert value.startswith(PREFIX), value[:16]
    envelope = CLASSES["Unknown"].FromString(value[len(PREFIX):])
    assert envelope.typeMeta.kind == kind, envelope.typeMeta
    return CLASSES[kind].FromString(envelope.raw)


def new(message: str, /, **fields: Any) -> Any:
    return CLASSES[message](**fields)


def _time(seconds: int) -> Any:
    return CLASSES["Time"](seconds=seconds, nanos=0)


def _fields_v1(paths: list[str]) -> Any:
    # managedFields' fieldsV1 is a JSON document of the fields a manager owns.
    body = "{" + ",".join(f'"f:{p}":{{}}' for p in paths) + "}"
    return CLASSES["FieldsV1"](Raw=body.encode())


def pod(name: str = "web-7d4b9c8f6-x2x9z", uid: str = "6c1f0b54-3f51-4bd8-9b0e-2f4c1a7d9e10",
        node: str = "node-1") -> Any:
    """A Pod as a Deployment's ReplicaSet creates it and the kubelet reports it (~3 KB)."""
    t0 = 1_700_000_000
    meta = new(
        "ObjectMeta", name=name, generateName=name.rsplit("-", 1)[0] + "-",
        namespace="default", selfLink="", uid=uid, resourceVersion="", generation=0,
        creationTimestamp=_time(t0),
        labels={"app": "web", "pod-template-hash": "7d4b9c8f6", "tier": "front"},
        annotations={"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"},
        ownerReferences=[new(
            "OwnerReference", kind="ReplicaSet", name=name.rsplit("-", 1)[0],
            uid="0b6f3c2e-8d1a-4e57-a1c9-55d2f0e6b7a3", apiVersion="apps/v1",
            controller=True, blockOwnerDeletion=True,
        )],
        managedFields=[
            new("ManagedFieldsEntry", manager="kube-controller-manager", operation="Update",
                apiVersion="v1", time=_time(t0), fieldsType="FieldsV1",
                fieldsV1=_fields_v1([f"metadata.f:labels.f:{k}" for k in ("app", "tier", "x")]
                                    + [f"spec.f:containers.k:{{\"name\":\"web-{i}\"}}.f:image"
                                       for i in range(8)]),
                subresource=""),
            new("ManagedFieldsEntry", manager="kubelet", operation="Update", apiVersion="v1",
                time=_time(t0 + 5), fieldsType="FieldsV1",
                fieldsV1=_fields_v1([f"status.f:conditions.k:{{\"type\":\"{c}\"}}.f:status"
                                     for c in ("Initialized", "Ready", "ContainersReady",
                                               "PodScheduled", "PodReadyToStartContainers")]
                                    + ["status.f:hostIP", "status.f:podIP",
                                       "status.f:phase", "status.f:startTime"]),
                subresource="status"),
        ],
    )
    spec = new(
        "PodSpec",
        containers=[new("Container", name="web", image="registry.example/web:1.25.3",
                        command=["/bin/web", "--port=8080", "--log-level=info"],
                        imagePullPolicy="IfNotPresent")],
        restartPolicy="Always", terminationGracePeriodSeconds=30, dnsPolicy="ClusterFirst",
        nodeSelector={"kubernetes.io/os": "linux"}, serviceAccountName="default",
        nodeName=node, schedulerName="default-scheduler",
    )
    status = new(
        "PodStatus", phase="Running",
        conditions=[
            new("PodCondition", type=c, status="True", lastProbeTime=_time(0),
                lastTransitionTime=_time(t0 + i), reason="", message="")
            for i, c in enumerate(("Initialized", "Ready", "ContainersReady", "PodScheduled"))
        ],
        hostIP="10.0.0.11", podIP="10.244.1.23", startTime=_time(t0), qosClass="BestEffort",
    )
    return new("Pod", metadata=meta, spec=spec, status=status)


def deployment(uid: str = "uid-1", replicas: int = 3) -> Any:
    """A Deployment as kube-apiserver stores it after the controller's first status update."""
    t0 = 1_700_000_000
    meta = new(
        "ObjectMeta", name="web", generateName="", namespace="default", selfLink="", uid=uid,
        resourceVersion="", generation=1, creationTimestamp=_time(t0),
        labels={"app": "web", "tier": "front"}, annotations={"note": "a"},
        managedFields=[new("ManagedFieldsEntry", manager="kubectl", operation="Update",
                           apiVersion="apps/v1", time=_time(t0), fieldsType="FieldsV1",
                           fieldsV1=_fields_v1(["spec.f:replicas"]), subresource="")],
    )
    template = new("PodTemplateSpec", metadata=new("ObjectMeta", labels={"app": "web"}),
                   spec=new("PodSpec", containers=[new("Container", name="c", image="nginx:1")]))
    spec = new("DeploymentSpec", replicas=replicas, template=template, minReadySeconds=0,
               revisionHistoryLimit=10, paused=False, progressDeadlineSeconds=600)
    status = new(
        "DeploymentStatus", observedGeneration=1, replicas=replicas, updatedReplicas=replicas,
        conditions=[new("DeploymentCondition", type="Progressing", status="True",
                        reason="NewReplicaSetAvailable", message="",
                        lastUpdateTime=_time(t0), lastTransitionTime=_time(t0))],
    )
    return new("Deployment", metadata=meta, spec=spec, status=status)


def condition(type_: str, status: str, seconds: int = 1_700_000_100) -> Any:
    return new("DeploymentCondition", type=type_, status=status, reason="", message="",
               lastUpdateTime=_time(seconds), lastTransitionTime=_time(seconds))


def config_map(uid: str = "cm-1", data: dict[str, str] | None = None,
               binary: dict[str, bytes] | None = None) -> Any:
    meta = new("ObjectMeta", name="settings", namespace="default", uid=uid,
               resourceVersion="", creationTimestamp=_time(1_700_000_000))
    return new("ConfigMap", metadata=meta, data=data or {}, binaryData=binary or {})


def edited(obj: Any, edit: Any) -> Any:
    """A copy of ``obj`` changed by ``edit(copy)``."""
    copy = type(obj)()
    copy.CopyFrom(obj)
    edit(copy)
    return copy
