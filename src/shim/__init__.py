"""shim: an etcd v3 compatible datastore on a SQL log."""

__version__ = "0.1.0"
