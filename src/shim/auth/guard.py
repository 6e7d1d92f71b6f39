"""Who sends a request, and the one permission rule each RPC declares.

Every servicer method declares its rule with ``@permission(Rule.X)``, as etcd 3.5 checks it:

- ``OPEN``: nothing is looked at, not even a token (Status, MemberList, the lease keep-alive).
- ``CALLER``: a token, if sent, must be valid; the request's own permissions (its keys, its
  lease) are checked where it is served, against that snapshot (KV, Watch, lease revoke), or
  none are needed (Compact, LeaseGrant, Alarm: etcd checks only the token there).
- ``ADMIN``: the caller needs the root role once auth is enabled (user and role listings,
  membership changes).
- ``ADMIN_MAINTENANCE``: the same for Defragment, Hash, HashKV and Snapshot, which etcd
  refuses with the auth store's untranslated text as UNKNOWN ("auth: permission denied").

The caller found by the check is the method's ``current_caller()``. The token is the gRPC
metadata ``token`` (or ``authorization``, as etcd's gateway sends it). With
``--client-cert-auth``, a request without a token is the user named by the common name of
its client certificate, as in etcd.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from shim.api.errors import from_store_error
from shim.auth import errors
from shim.auth.state import NOBODY, AuthState, Caller
from shim.auth.tokens import TokenIssuer
from shim.backend.base import ReadView
from shim.mvcc.errors import StoreError

T = TypeVar("T")

TOKEN_KEYS = ("token", "authorization")
# etcd ignores the certificate of requests its own gRPC gateway forwards.
GATEWAY_MARK = "grpcgateway-accept"


class Rule(enum.Enum):
    OPEN = "open"
    CALLER = "caller"
    ADMIN = "admin"
    ADMIN_MAINTENANCE = "admin, maintenance errors"


_current: contextvars.ContextVar[Caller] = contextvars.ContextVar("shim_caller", default=NOBODY)


def current_caller() -> Caller:
    """The caller of the RPC being served (nobody outside a ``@permission`` method)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(caller: Caller) -> Iterator[None]:
    """Make ``caller`` the ``current_caller()`` of what runs inside (tasks started inside
    keep it: they copy the context)."""
    token = _current.set(caller)
    try:
        yield
    finally:
        _current.reset(token)


class AuthReader(Protocol):
    """Where the guard reads the auth state: the store's read snapshots."""

    async def read_auth(self, fn: Callable[[AuthState, ReadView], Any]) -> Any: ...


class MaintenanceAuthError(errors.AuthError):
    """An auth error as etcd's maintenance server sends it: UNKNOWN with the raw text."""

    def __init__(self, cause: errors.AuthError) -> None:
        super().__init__(cause.raw)
        self.code = "UNKNOWN"
        self.message = self.raw = cause.raw


class Guard:
    """Resolves callers for the servicers of one serving process."""

    def __init__(
        self, store: AuthReader, tokens: TokenIssuer, client_cert_auth: bool = False
    ) -> None:
        self._store = store
        self.tokens = tokens
        self._client_cert_auth = client_cert_auth

    def unchecked(self, rule: Rule, context: Any) -> Caller | None:
        """NOBODY where ``rule`` needs nothing read (no credentials sent to an OPEN or CALLER
        method), else None: ``require`` finds the caller. Saves a read on most requests."""
        if rule is Rule.OPEN:
            return NOBODY
        if rule is Rule.CALLER:
            token, certificate_user = self._credentials(context)
            if token is None and certificate_user is None:
                return NOBODY
        return None

    async def require(self, rule: Rule, context: Any) -> Caller:
        """The caller of this request, once ``rule`` is satisfied."""
        if rule is Rule.OPEN:
            return NOBODY
        token, certificate_user = self._credentials(context)
        if rule is Rule.CALLER and token is None and certificate_user is None:
            return NOBODY  # nothing to check, and nothing to read
        admin = rule is not Rule.CALLER

        def resolve(state: AuthState, _view: ReadView) -> Caller:
            caller = self._resolve(state, token, certificate_user)
            if admin:
                state.check_admin(caller)
            return caller

        try:
            caller: Caller = await self._store.read_auth(resolve)
        except errors.AuthError as exc:
            if rule is Rule.ADMIN_MAINTENANCE:
                raise MaintenanceAuthError(exc) from None
            raise
        return caller

    async def caller(self, context: Any) -> Caller:
        return await self.require(Rule.CALLER, context)

    async def read_auth(self, fn: Callable[[AuthState, ReadView], T]) -> T:
        """Run ``fn`` on a read snapshot and its auth state."""
        result: T = await self._store.read_auth(fn)
        return result

    def _resolve(
        self, state: AuthState, token: str | None, certificate_user: str | None
    ) -> Caller:
        # Ignored while auth is disabled, as etcd does since 3.5.10 (etcd#16241; 3.5.1 refused
        # such a token as invalid): a client that kept its token across `auth disable` works.
        if token is not None and state.enabled:
            return self.tokens.caller(state, token)
        if certificate_user is not None:
            return Caller(certificate_user, state.revision)
        return NOBODY

    def _credentials(self, context: Any) -> tuple[str | None, str | None]:
        metadata: Sequence[tuple[str, Any]] = context.invocation_metadata() or ()
        token = certificate_user = None
        forwarded = False
        for key, value in metadata:
            if key in TOKEN_KEYS and token is None:
                token = value if isinstance(value, str) else bytes(value).decode("latin-1")
            elif key == GATEWAY_MARK:
                forwarded = True
        if self._client_cert_auth and not forwarded:
            certificate_user = _common_name(context)
        return token, certificate_user


def _common_name(context: Any) -> str | None:
    """The verified client certificate's common name, if the connection has one."""
    auth_context = getattr(context, "auth_context", None)
    if auth_context is None:
        return None
    names = auth_context().get("x509_common_name") or []
    if not names:
        return None
    name = names[0]
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


class Guarded(Protocol):
    guard: Guard


M = TypeVar("M", bound=Callable[..., Any])


def permission(
    rule: Rule, validate: Callable[[Any], None] | None = None
) -> Callable[[M], M]:
    """Declare the permission rule of a servicer method (see the module docstring).
    ``validate`` is the request check etcd's gRPC layer makes before the token is looked at.

    A unary method runs with its caller as ``current_caller()`` (its errors are turned into
    statuses by ``shim.api.errors.grpc_errors`` around it). A streaming method (an async
    generator: Snapshot) is checked before it starts, and a refusal ends the call with the
    error's status.
    """

    def decorate(method: M) -> M:
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def checked_stream(
                self: Guarded, request: Any, context: Any
            ) -> AsyncIterator[Any]:
                try:
                    await self.guard.require(rule, context)
                except StoreError as exc:
                    refusal = from_store_error(exc)
                    await context.abort(refusal.code, refusal.message)
                async for item in method(self, request, context):
                    yield item

            checked_stream.permission_rule = rule  # type: ignore[attr-defined]  # a mark on the function
            return checked_stream  # type: ignore[return-value]  # F: same signature

        @functools.wraps(method)
        async def checked(self: Guarded, request: Any, context: Any) -> Any:
            if validate is not None:
                validate(request)
            caller = self.guard.unchecked(rule, context)
            if caller is None:
                caller = await self.guard.require(rule, context)
            if caller is _current.get():
                return await method(self, request, context)  # nobody, as it already is
            with acting_as(caller):
                return await method(self, request, context)

        checked.permission_rule = rule  # type: ignore[attr-defined]  # a mark on the function
        return checked  # type: ignore[return-value]  # F: same signature

    return decorate
