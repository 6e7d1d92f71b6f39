"""Generated protobuf and gRPC modules for the etcd v3 API.

Do not edit: regenerate with ``python proto/generate.py``.
"""
