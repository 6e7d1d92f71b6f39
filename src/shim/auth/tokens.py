"""Simple tokens that any serving process can check: signed, not remembered.

etcd's default ("simple") tokens are random strings that every member keeps in memory with
their user. shim may answer from several processes (``--processes N``) and several servers
(one PostgreSQL database), so a token carries what it stands for and a signature instead:

    <16 random letters>.<base64url JSON {"u": user, "e": user's epoch, "t": issued ms}>.<MAC>

The MAC is HMAC-SHA256 (first 16 bytes) under the token key, a random key kept in the
database and replaced whenever auth is enabled. A token is good while:
- its MAC checks out under the current key (so enabling auth again drops every older token,
  as etcd drops them when auth is disabled);
- its user exists with the same epoch (deleting the user, re-creating it, or changing its
  password drops its tokens, as etcd's invalidateUser does);
- it was issued, or last used in this process, less than the TTL ago (etcd's
  --auth-token-ttl, 300 s, renewed on every use).
The last use is remembered per process: a client that moves to another serving process with
a token older than the TTL there gets "invalid auth token" and authenticates again, as every
etcd client does on that error.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import string
import time

from shim.auth import errors
from shim.auth.state import AuthState, Caller

DEFAULT_TTL_SECONDS = 300.0
_NONCE_LETTERS = string.ascii_letters
_NONCE_LENGTH = 16
_MAC_BYTES = 16
# Remembered last uses are swept once this many have been added since the last sweep.
_SWEEP_EVERY = 1024


def new_token_key() -> bytes:
    return secrets.token_bytes(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()[:_MAC_BYTES])


class TokenIssuer:
    """Issues and checks tokens; remembers when each was last used in this process."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS) -> None:
        self._ttl_ms = int(ttl_seconds * 1000)
        self._last_used: dict[str, int] = {}
        self._added = 0

    def issue(self, state: AuthState, user: str) -> str:
        record = state.users[user]
        nonce = "".join(secrets.choice(_NONCE_LETTERS) for _ in range(_NONCE_LENGTH))
        now = _now_ms()
        claims = json.dumps({"u": user, "e": record.epoch, "t": now}, separators=(",", ":"))
        signed = f"{nonce}.{_b64(claims.encode('utf-8'))}"
        token = f"{signed}.{_mac(state.token_key, signed)}"
        self._remember(token, now)
        return token

    def caller(self, state: AuthState, token: str) -> Caller:
        """Who ``token`` stands for at ``state``, or InvalidAuthToken."""
        nonce, _, rest = token.partition(".")
        payload, _, mac = rest.partition(".")
        if not state.token_key or not nonce or not payload or not mac:
            raise errors.InvalidAuthToken()
        if not hmac.compare_digest(_mac(state.token_key, f"{nonce}.{payload}"), mac):
            raise errors.InvalidAuthToken()
        try:
            claims = json.loads(_unb64(payload))
            user, epoch, issued = str(claims["u"]), str(claims["e"]), int(claims["t"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise errors.InvalidAuthToken() from None
        record = state.users.get(user)
        if record is None or record.epoch != epoch:
            raise errors.InvalidAuthToken()
        now = _now_ms()
        if max(issued, self._last_used.get(token, 0)) + self._ttl_ms <= now:
            self._last_used.pop(token, None)
            raise errors.InvalidAuthToken()
        self._remember(token, now)
        return Caller(user, state.revision)

    def _remember(self, token: str, now: int) -> None:
        if token not in self._last_used:
            self._added += 1
            if self._added >= _SWEEP_EVERY:
                self._sweep(now)
        self._last_used[token] = now

    def _sweep(self, now: int) -> None:
        self._added = 0
        cutoff = now - self._ttl_ms
        for token in [t for t, used in self._last_used.items() if used <= cutoff]:
            del self._last_used[token]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
