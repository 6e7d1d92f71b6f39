from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "name", "token", "policy_digest", "send", "receive", "cursor", "hlc", "protocol", "max_message_bytes", "origin", "vector", "direct", "linking", "client_urls")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    POLICY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEND_FIELD_NUMBER: _ClassVar[int]
    RECEIVE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    LINKING_FIELD_NUMBER: _ClassVar[int]
    CLIENT_URLS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    token: str
    policy_digest: str
    send: bool
    receive: bool
    cursor: int
    hlc: int
    protocol: int
    max_message_bytes: int
    origin: str
    vector: _containers.RepeatedCompositeFieldContainer[OriginSeq]
    direct: _containers.RepeatedScalarFieldContainer[str]
    linking: bool
    client_urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., token: _Optional[str] = ..., policy_digest: _Optional[str] = ..., send: _Optional[bool] = ..., receive: _Optional[bool] = ..., cursor: _Optional[int] = ..., hlc: _Optional[int] = ..., protocol: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., origin: _Optional[str] = ..., vector: _Optional[_Iterable[_Union[OriginSeq, _Mapping]]] = ..., direct: _Optional[_Iterable[str]] = ..., linking: _Optional[bool] = ..., client_urls: _Optional[_Iterable[str]] = ...) -> None: ...

class OriginSeq(_message.Message):
    __slots__ = ("origin", "seq", "head")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    origin: str
    seq: int
    head: bytes
    def __init__(self, origin: _Optional[str] = ..., seq: _Optional[int] = ..., head: _Optional[bytes] = ...) -> None: ...

class Have(_message.Message):
    __slots__ = ("vector", "direct", "linking")
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    DIRECT_FIELD_NUMBER: _ClassVar[int]
    LINKING_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedCompositeFieldContainer[OriginSeq]
    direct: _containers.RepeatedScalarFieldContainer[str]
    linking: bool
    def __init__(self, vector: _Optional[_Iterable[_Union[OriginSeq, _Mapping]]] = ..., direct: _Optional[_Iterable[str]] = ..., linking: _Optional[bool] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("cursor",)
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    cursor: int
    def __init__(self, cursor: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("origin", "seq", "hlc", "key", "deleted", "value", "lease", "has_ops", "ops", "base_uid", "uid", "kind", "secret", "pruned", "sig", "digest", "head_sig", "prev_chain", "tail")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    HAS_OPS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    BASE_UID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    PRUNED_FIELD_NUMBER: _ClassVar[int]
    SIG_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEAD_SIG_FIELD_NUMBER: _ClassVar[int]
    PREV_CHAIN_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    origin: str
    seq: int
    hlc: int
    key: bytes
    deleted: bool
    value: bytes
    lease: int
    has_ops: bool
    ops: bytes
    base_uid: str
    uid: str
    kind: str
    secret: str
    pruned: bool
    sig: bytes
    digest: bytes
    head_sig: bytes
    prev_chain: bytes
    tail: bytes
    def __init__(self, origin: _Optional[str] = ..., seq: _Optional[int] = ..., hlc: _Optional[int] = ..., key: _Optional[bytes] = ..., deleted: _Optional[bool] = ..., value: _Optional[bytes] = ..., lease: _Optional[int] = ..., has_ops: _Optional[bool] = ..., ops: _Optional[bytes] = ..., base_uid: _Optional[str] = ..., uid: _Optional[str] = ..., kind: _Optional[str] = ..., secret: _Optional[str] = ..., pruned: _Optional[bool] = ..., sig: _Optional[bytes] = ..., digest: _Optional[bytes] = ..., head_sig: _Optional[bytes] = ..., prev_chain: _Optional[bytes] = ..., tail: _Optional[bytes] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("entries", "cursor", "high", "hlc", "acked")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    HLC_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    cursor: int
    high: int
    hlc: int
    acked: int
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., cursor: _Optional[int] = ..., high: _Optional[int] = ..., hlc: _Optional[int] = ..., acked: _Optional[int] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("origin", "seq", "reason")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    origin: str
    seq: int
    reason: str
    def __init__(self, origin: _Optional[str] = ..., seq: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class LinkMessage(_message.Message):
    __slots__ = ("hello", "start", "batch", "refused", "have")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    HAVE_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    start: Start
    batch: Batch
    refused: Refused
    have: Have
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., start: _Optional[_Union[Start, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., have: _Optional[_Union[Have, _Mapping]] = ...) -> None: ...
