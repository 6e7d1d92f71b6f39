"""The errors of etcd's auth store, with the gRPC status etcd 3.5 answers each with.

They are store errors: a refused write comes back from the write path like "lease not found"
does (also across the socket of ``--processes N``, so every class pickles without arguments).
The status is named, not imported, so the store never depends on gRPC; ``shim.api.errors``
turns it into the status.
"""

from __future__ import annotations

from shim.mvcc.errors import StoreError


class AuthError(StoreError):
    """A request the auth store refuses. ``code`` is a ``grpc.StatusCode`` name, ``message``
    what etcd's gRPC layer sends; ``raw`` is the auth store's own text, which etcd sends as
    UNKNOWN where it forgets to translate (the admin check of Maintenance RPCs)."""

    code = "UNKNOWN"
    message = ""
    raw = ""

    def __str__(self) -> str:
        return self.message


class RootUserNotExist(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: root user does not exist"
    raw = "auth: root user does not exist"


class RootRoleNotExist(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: root user does not have root role"
    raw = "auth: root user does not have root role"


class UserAlreadyExist(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: user name already exists"
    raw = "auth: user already exists"


class UserEmpty(AuthError):
    code, message = "INVALID_ARGUMENT", "etcdserver: user name is empty"
    raw = "auth: user name is empty"


class UserNotFound(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: user name not found"
    raw = "auth: user not found"


class RoleAlreadyExist(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: role name already exists"
    raw = "auth: role already exists"


class RoleNotFound(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: role name not found"
    raw = "auth: role not found"


class RoleEmpty(AuthError):
    code, message = "INVALID_ARGUMENT", "etcdserver: role name is empty"
    raw = "auth: role name is empty"


class AuthFailed(AuthError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: authentication failed, invalid user ID or password"
    raw = "auth: authentication failed, invalid user ID or password"


class NoPasswordUser(AuthError):
    # etcd has no gRPC status for this one: its text reaches the client as UNKNOWN.
    code = "UNKNOWN"
    message = raw = "auth: authentication failed, password was given for no password user"


class PermissionNotGiven(AuthError):
    code, message = "INVALID_ARGUMENT", "etcdserver: permission not given"
    raw = "auth: permission not given"


class PermissionDenied(AuthError):
    code, message = "PERMISSION_DENIED", "etcdserver: permission denied"
    raw = "auth: permission denied"


class RoleNotGranted(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: role is not granted to the user"
    raw = "auth: role is not granted to the user"


class PermissionNotGranted(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: permission is not granted to the role"
    raw = "auth: permission is not granted to the role"


class AuthNotEnabled(AuthError):
    code, message = "FAILED_PRECONDITION", "etcdserver: authentication is not enabled"
    raw = "auth: authentication is not enabled"


class InvalidAuthToken(AuthError):
    code, message = "UNAUTHENTICATED", "etcdserver: invalid auth token"
    raw = "auth: invalid auth token"


class InvalidAuthMgmt(AuthError):
    code, message = "INVALID_ARGUMENT", "etcdserver: invalid auth management"
    raw = "auth: invalid auth management"


class AuthOldRevision(AuthError):
    code, message = "INVALID_ARGUMENT", "etcdserver: revision of auth store is old"
    raw = "auth: revision in header is old"


class PasswordTooLong(AuthError):
    # bcrypt's limit; etcd sends Go's bcrypt error untranslated.
    code, message = "UNKNOWN", "bcrypt: password length exceeds 72 bytes"
    raw = message


class HashedPasswordUnsupported(AuthError):
    # etcd stores a client's own bcrypt hash (base64) as given; shim hashes what it is sent.
    code = "UNIMPLEMENTED"
    message = raw = (
        "shim: a password hashed by the client (hashedPassword) is not supported; "
        "send the password itself"
    )
