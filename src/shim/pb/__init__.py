"""Generated protobuf and gRPC modules: the etcd v3 API and the replication service.

Do not edit: regenerate with ``python proto/generate.py``.
"""
