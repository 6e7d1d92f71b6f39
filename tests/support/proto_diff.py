"""Field-by-field comparison of two protobuf messages, for differential tests."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# What two etcd-compatible servers must differ in: which cluster and member answered,
# and the raft term. Everything else, header.revision included, must match.
ETCD_SERVER_IDENTITY = frozenset(
    ("etcdserverpb.ResponseHeader", name) for name in ("cluster_id", "member_id", "raft_term")
)


@dataclass(frozen=True)
class Difference:
    path: str
    left: object
    right: object


def _field_value(message: Message, descriptor: FieldDescriptor) -> object:
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(descriptor.name):
        return "<absent>"
    value = getattr(message, descriptor.name)
    if isinstance(value, Message):
        return text_format.MessageToString(value, as_one_line=True)
    return value


def first_difference(
    left: Message,
    right: Message,
    path: str = "",
    ignored: frozenset[tuple[str, str]] = ETCD_SERVER_IDENTITY,
) -> Difference | None:
    """The first field (in descriptor order, depth first) where two messages differ.

    Submessage presence counts (it is visible on the wire). Only fields in
    `ignored`, as (message full name, field name), are skipped.
    """
    descriptor = left.DESCRIPTOR
    if right.DESCRIPTOR is not descriptor:
        return Difference(
            path or "<message type>", descriptor.full_name, right.DESCRIPTOR.full_name
        )
    prefix = f"{path}." if path else ""
    for oneof in descriptor.oneofs:
        chosen = left.WhichOneof(oneof.name), right.WhichOneof(oneof.name)
        if chosen[0] != chosen[1]:
            return Difference(f"{prefix}{oneof.name} (oneof)", chosen[0], chosen[1])
    for fd in descriptor.fields:
        if (descriptor.full_name, fd.name) in ignored:
            continue
        field_path = f"{prefix}{fd.name}"
        is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
        if fd.is_repeated:
            items = getattr(left, fd.name), getattr(right, fd.name)
            for index, (a, b) in enumerate(zip(*items, strict=False)):
                item_path = f"{field_path}[{index}]"
                if is_message:
                    found = first_difference(a, b, item_path, ignored)
                    if found:
                        return found
                elif a != b:
                    return Difference(item_path, a, b)
            if len(items[0]) != len(items[1]):
                return Difference(f"{field_path} (length)", len(items[0]), len(items[1]))
        elif is_message:
            present = left.HasField(fd.name), right.HasField(fd.name)
            if present[0] != present[1]:
                return Difference(field_path, _field_value(left, fd), _field_value(right, fd))
            if present[0]:
                found = first_difference(
                    getattr(left, fd.name), getattr(right, fd.name), field_path, ignored
                )
                if found:
                    return found
        elif getattr(left, fd.name) != getattr(right, fd.name):
            return Difference(field_path, getattr(left, fd.name), getattr(right, fd.name))
    return None
