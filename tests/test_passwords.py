"""Password hashes: etcd's kind (bcrypt, $2a$, cost 10), and the scrypt ones shim made before."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import apsw
import pytest

from shim.auth.errors import PasswordTooLong
from shim.auth.etcd_layout import etcd_buckets
from shim.auth.objects import RoleObject, UserObject
from shim.auth.passwords import hash_password_sync, verify_password_sync
from shim.auth.state import AuthState
from tests.support import ShimServer, etcdctl


def test_hashes_are_etcds_bcrypt() -> None:
    stored = hash_password_sync("s3cret")
    assert stored.startswith("$2a$10$") and len(stored) == 60
    assert verify_password_sync("s3cret", stored)
    assert not verify_password_sync("s3cret!", stored)
    assert hash_password_sync("s3cret") != stored  # salted


def test_other_bcrypt_implementations_hashes_are_checked() -> None:
    # OpenBSD's reference vector (cost 5): a hash this code did not make.
    reference = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW"
    assert verify_password_sync("U*U", reference)
    assert not verify_password_sync("U*V", reference)
    assert verify_password_sync("", "") is False  # etcd's empty hash lets nobody in
    assert verify_password_sync("pw", "$2a$10$short") is False  # unreadable: no match


def test_at_most_72_bytes_are_set_and_only_72_count() -> None:
    with pytest.raises(PasswordTooLong):
        hash_password_sync("x" * 73)
    stored = hash_password_sync("x" * 72)
    assert verify_password_sync("x" * 72, stored)
    assert verify_password_sync("x" * 72 + "more", stored)  # as Go's bcrypt compares
    assert not verify_password_sync("x" * 71, stored)


def test_scrypt_hashes_made_before_bcrypt_still_verify() -> None:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"old-pw", salt=salt, n=2**15, r=8, p=1, dklen=32,
                            maxmem=64 * 1024 * 1024)
    stored = "scrypt$32768$8$1$" + base64.b64encode(salt).decode() + "$" + (
        base64.b64encode(digest).decode())
    assert verify_password_sync("old-pw", stored)
    assert not verify_password_sync("old-pw2", stored)
    assert not verify_password_sync("old-pw", stored.replace("scrypt$", "other$"))


@pytest.mark.parametrize(("flag", "stored_cost"), [("4", "04"), ("99", "10")])
def test_bcrypt_cost_flag_as_etcd(tmp_path: Path, flag: str, stored_cost: str) -> None:
    """--bcrypt-cost sets the cost of new hashes; outside 4-31 etcd warns and keeps 10."""
    with ShimServer(tmp_path, extra_args=["--bcrypt-cost", flag]) as server:
        etcdctl(server.endpoint, "user", "add", "u", "--new-user-password=pw")
        database = server.database
        assert database is not None
        conn = apsw.Connection(str(database), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            [(stored,)] = conn.execute("SELECT password FROM auth_user").fetchall()
        finally:
            conn.close()
        assert stored.startswith(f"$2a${stored_cost}$")
        assert verify_password_sync("pw", stored)
        warned = "--bcrypt-cost 99 is outside 4-31: using the default 10" in server.log_tail()
        assert warned is (flag == "99")


def test_a_snapshot_keeps_auth_on_for_etcd_only_if_root_can_get_in() -> None:
    """A root password set before shim made bcrypt hashes matches nothing on etcd: auth on
    there would lock everyone out, so that layout has auth off; once root has a bcrypt hash
    (or no password: a certificate), auth stays on."""
    at = (1, "node")

    def layout(root_password: str, no_password: bool = False) -> bytes:
        root = UserObject("root", at, None, root_password, no_password, "e", at,
                          {"root": (True, at)})
        state = AuthState(enabled=True, revision=3, users={"root": root},
                          roles={"root": RoleObject("root", at, None)})
        auth = dict(dict(etcd_buckets(state))[b"auth"])
        return auth[b"authEnabled"]

    assert layout(hash_password_sync("pw", cost=4)) == b"\x01"
    assert layout("", no_password=True) == b"\x01"
    assert layout("scrypt$32768$8$1$c2FsdA==$ZGlnZXN0") == b"\x00"
