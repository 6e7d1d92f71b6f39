"""gRPC statuses exactly as etcd 3.5 sends them, and the translation of store errors to them."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shim.auth.errors import AuthError
from shim.mvcc import errors as store_errors

log = logging.getLogger(__name__)

Code = grpc.StatusCode


class RequestError(Exception):
    """A request etcd would refuse, with etcd's status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: grpc.StatusCode, message: str) -> Callable[[], RequestError]:
    return lambda: RequestError(code, message)


EMPTY_KEY = _error(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _error(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _error(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _error(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _error(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _error(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = _error(Code.INVALID_ARGUMENT, "etcdserver: invalid sort option")
REQUEST_TOO_LARGE = _error(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
COMPACTED = _error(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _error(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
LEASE_NOT_FOUND = _error(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXISTS = _error(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _error(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")
STOPPED = _error(Code.UNAVAILABLE, "etcdserver: server stopped")
NO_SPACE = _error(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")
CORRUPT = _error(Code.DATA_LOSS, "etcdserver: corrupt cluster")
TOO_MANY_REQUESTS = _error(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")


def from_store_error(exc: store_errors.StoreError) -> RequestError:
    if isinstance(exc, AuthError):
        return RequestError(grpc.StatusCode[exc.code], exc.message)
    if isinstance(exc, store_errors.CompactedError):
        return COMPACTED()
    if isinstance(exc, store_errors.FutureRevisionError):
        return FUTURE_REV()
    if isinstance(exc, store_errors.KeyNotFoundError):
        return KEY_NOT_FOUND()
    if isinstance(exc, store_errors.LeaseNotFoundError):
        return LEASE_NOT_FOUND()
    if isinstance(exc, store_errors.LeaseExistsError):
        return LEASE_EXISTS()
    if isinstance(exc, store_errors.LeaseTTLTooLargeError):
        return LEASE_TTL_TOO_LARGE()
    if isinstance(exc, store_errors.StoreClosedError):
        return STOPPED()
    if isinstance(exc, store_errors.NoSpaceError):
        return NO_SPACE()
    if isinstance(exc, store_errors.CorruptError):
        return CORRUPT()
    if isinstance(exc, store_errors.TooManyRequestsError):
        return TOO_MANY_REQUESTS()
    if isinstance(exc, store_errors.StorageUnavailableError):
        return RequestError(Code.UNAVAILABLE, f"shim: {exc}")
    return RequestError(Code.UNKNOWN, str(exc))


def unimplemented(what: str) -> RequestError:
    return RequestError(Code.UNIMPLEMENTED, f"shim: {what} is not implemented")


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def as_seen_through_client(err: RequestError) -> RequestError:
    """etcd serves Lock and Election with its own Go client inside the server: an error that
    client receives reaches the caller as UNKNOWN with the same message (only UNAVAILABLE,
    which the client retries, passes through as it is)."""
    if err.code == Code.UNAVAILABLE:
        return err
    return RequestError(Code.UNKNOWN, err.message)


def _status_errors(
    translate: Callable[[RequestError], RequestError],
) -> Callable[[F], F]:
    def decorate(method: F) -> F:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except RequestError as exc:
                err = translate(exc)
                await context.abort(err.code, err.message)
            except store_errors.StoreError as exc:
                err = translate(from_store_error(exc))
                await context.abort(err.code, err.message)

        return wrapper  # type: ignore[return-value]  # F: same signature

    return decorate


# Turn a unary handler's RequestError/StoreError into the matching gRPC status.
grpc_errors = _status_errors(lambda err: err)
# The same, for the services etcd builds on its own client (Lock, Election).
client_errors = _status_errors(as_seen_through_client)
