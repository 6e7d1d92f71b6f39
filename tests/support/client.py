"""gRPC clients for the etcd v3 API (shim's or a real etcd's)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shim.pb import rpc_pb2_grpc, v3election_pb2_grpc, v3lock_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


class Client:
    """Stubs for every etcd v3 service over one insecure channel to `endpoint`.

    Each Client has a connection of its own, as separate programs would (gRPC Python shares
    one connection between channels to the same target unless told otherwise): with
    `--processes N` different Clients can land on different serving processes.
    """

    def __init__(self, endpoint: str, channel: grpc.Channel | None = None) -> None:
        """``channel``: one already made (a TLS one); by default an insecure one."""
        self.endpoint = endpoint
        self.channel = channel or grpc.insecure_channel(
            endpoint, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.lock = v3lock_pb2_grpc.LockStub(self.channel)
        self.election = v3election_pb2_grpc.ElectionStub(self.channel)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def health_status(endpoint: str, timeout: float = 1.0) -> int | None:
    """The grpc.health.v1 status of the whole server, or None if it does not answer."""
    with grpc.insecure_channel(endpoint) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return None
        return response.status
