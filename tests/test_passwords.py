"""Password hashes: etcd's kind (bcrypt, $2a$, cost 10), and the scrypt ones shim made before."""

from __future__ import annotations

import base64
import hashlib

import pytest

from shim.auth.passwords import PasswordTooLong, hash_password_sync, verify_password_sync


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
