"""bench/run-edge: etcd and shim across sites (see bench/README.md, section At the edge)."""
