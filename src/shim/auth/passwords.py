"""Salted, slow password hashes: bcrypt at etcd's cost, so hashes cross with snapshots.

etcd stores bcrypt hashes (``$2a$``, cost 10, its default ``--bcrypt-cost``); shim makes the
same kind, with the ``bcrypt`` package (a vetted C implementation), so a user's hash means the
same thing in both: a shim snapshot restored by `etcdutl` keeps its users able to log in, and
an etcd snapshot's users come into shim. Hashes made by shim before it used bcrypt (salted
scrypt, ``scrypt$N$r$p$salt$hash``) are still checked; a password change replaces them.

As in etcd 3.5.21, a password longer than bcrypt's 72 bytes is refused when it is set, and
only its first 72 bytes count when it is checked against a stored hash.

Hashing runs in a worker thread (both libraries release the GIL), a few at a time, so a burst
of logins neither stalls the event loop nor takes every core.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

import bcrypt

from shim.auth.errors import PasswordTooLong

BCRYPT_COST = 10  # etcd's default --bcrypt-cost
BCRYPT_MIN_COST, BCRYPT_MAX_COST = 4, 31
BCRYPT_MAX_BYTES = 72
SCRYPT = "scrypt"  # the scheme of the hashes shim made before bcrypt
_MAX_MEMORY = 64 * 1024 * 1024
# Hashes computed at once (the machine's cores).
_CONCURRENT = max(1, min(4, os.cpu_count() or 1))


def hash_password_sync(password: str, cost: int = BCRYPT_COST) -> str:
    """A ``$2a$10$...`` bcrypt hash of ``password``, as etcd makes (``cost``: 4-31)."""
    data = password.encode("utf-8")
    if len(data) > BCRYPT_MAX_BYTES:
        raise PasswordTooLong()  # etcd's answer: Go's bcrypt error, untranslated
    salt = bcrypt.gensalt(rounds=cost, prefix=b"2a")
    return bcrypt.hashpw(data, salt).decode("ascii")


def is_bcrypt(stored: str) -> bool:
    """Whether ``stored`` is a bcrypt hash (etcd's kind), not one of shim's older ones."""
    return stored.startswith("$2")


def verify_password_sync(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``. An empty or unreadable hash matches nothing
    (etcd keeps an empty hash for a password changed to nothing: nobody can log in)."""
    if is_bcrypt(stored):
        try:
            return bcrypt.checkpw(password.encode("utf-8")[:BCRYPT_MAX_BYTES],
                                  stored.encode("ascii"))
        except ValueError:
            return False
    return _verify_scrypt(password, stored)


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCRYPT:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt, validate=True), n=int(n),
            r=int(r), p=int(p), dklen=len(expected), maxmem=_MAX_MEMORY,
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


class Hasher:
    """Hashes and checks passwords off the event loop, at most a few at a time."""

    def __init__(self, concurrent: int = _CONCURRENT, cost: int = BCRYPT_COST) -> None:
        self._slots = asyncio.Semaphore(concurrent)
        self._cost = cost

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password_sync, password, self._cost)

    async def verify(self, password: str, stored: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(verify_password_sync, password, stored)
