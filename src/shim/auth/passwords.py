"""Salted, slow password hashes: scrypt from the standard library.

etcd stores bcrypt hashes (cost 10). shim uses scrypt instead: it is in Python's standard
library (no new dependency), it is memory-hard as well as slow, and at N=2^15, r=8, p=1 it
takes about as long as bcrypt at etcd's cost (~90 ms on the 2-core test machine) with 32 MiB.
The parameters travel inside every stored hash, so they can be raised later without breaking
old ones.

Hashing runs in a worker thread (hashlib releases the GIL), a few at a time: each takes
32 MiB, and a burst of logins must neither stall the event loop nor exhaust memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os

SCHEME = "scrypt"
N, R, P = 2**15, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
_MAX_MEMORY = 64 * 1024 * 1024
# Hashes computed at once (the machine's cores; each also holds 32 MiB while it runs).
_CONCURRENT = max(1, min(4, os.cpu_count() or 1))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_MAX_MEMORY
    )


def hash_password_sync(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (salt and hash in base64) for ``password``."""
    salt = os.urandom(SALT_BYTES)
    digest = _derive(password, salt, N, R, P, KEY_BYTES)
    return f"{SCHEME}${N}${R}${P}${_b64(salt)}${_b64(digest)}"


def verify_password_sync(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored``. An empty or unreadable hash matches nothing
    (etcd keeps an empty hash for a password changed to nothing: nobody can log in)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = _derive(password, base64.b64decode(salt, validate=True), int(n), int(r),
                         int(p), len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(actual, expected)


class Hasher:
    """Hashes and checks passwords off the event loop, at most a few at a time."""

    def __init__(self, concurrent: int = _CONCURRENT) -> None:
        self._slots = asyncio.Semaphore(concurrent)

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(hash_password_sync, password)

    async def verify(self, password: str, stored: str) -> bool:
        async with self._slots:
            return await asyncio.to_thread(verify_password_sync, password, stored)
