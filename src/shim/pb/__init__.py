"""Generated protobuf and gRPC modules: the etcd v3 API (with the lock and election services) and the replication service.

Do not edit: regenerate with ``python proto/generate.py``.
"""
