"""etcd's HTTP/JSON gateway (grpc-gateway's mapping) over the same service methods as gRPC."""
