"""bench/run-replication: replication benchmarks (see bench/README.md, section Replication)."""
