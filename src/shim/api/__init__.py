"""The gRPC edge: etcd's services, request validation and error statuses."""
