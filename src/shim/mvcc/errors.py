"""Errors of the MVCC store. They name what went wrong in storage terms; the gRPC edge
(``shim.api.errors``) turns each into the status code and message etcd gives."""

from __future__ import annotations


class StoreError(Exception):
    """Base class of the errors a store operation can answer with."""


class CompactedError(StoreError):
    """The requested revision has been compacted away."""


class FutureRevisionError(StoreError):
    """The requested revision is newer than the current revision."""


class KeyNotFoundError(StoreError):
    """ignore_value / ignore_lease was asked for a key that does not exist."""


class LeaseNotFoundError(StoreError):
    """The request names a lease that does not exist."""


class LeaseExistsError(StoreError):
    """A lease with the requested id already exists."""


class LeaseTTLTooLargeError(StoreError):
    """The requested lease TTL is above etcd's maximum."""


class StoreClosedError(StoreError):
    """The store is shutting down and takes no more requests."""


class TooManyRequestsError(StoreError):
    """More client writes wait for the write path than it takes (etcd refuses writes while its
    apply loop is 5,000 entries behind); the request may be retried."""


class StorageUnavailableError(StoreError):
    """The database cannot be reached or refused the operation; the request may be retried."""


class NoSpaceError(StoreError):
    """The NOSPACE alarm is active (or this write would pass the backend quota)."""


class CorruptError(StoreError):
    """The CORRUPT alarm is active: writes are refused until it is disarmed."""
