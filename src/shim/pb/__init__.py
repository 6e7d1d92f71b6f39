"""Generated protobuf and gRPC modules: the etcd v3 API (lock and election included)
and the replication service.

Do not edit: regenerate with ``python proto/generate.py``.
"""
