from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from sqlmodel import select

from triage.auth.passwords import hash_password, needs_rehash, verify_password
from triage.auth.users import add_user, check_name, check_password
from triage.errors import AuthError
from triage.store.models import UserAccount


def test_real_parameters_are_rfc9106_low_memory():
    # 64 MiB, 3 passes, 4 lanes, as encoded in the stored hash itself
    assert hash_password("correct horse battery").startswith("$argon2id$v=19$m=65536,t=3,p=4$")


def test_hash_is_argon2id_salted_and_verifies():
    h1 = hash_password("correct horse battery")
    h2 = hash_password("correct horse battery")
    assert h1.startswith("$argon2id$") and "correct" not in h1
    assert h1 != h2  # a fresh salt each time
    assert verify_password(h1, "correct horse battery")
    assert verify_password(h2, "correct horse battery")
    assert not verify_password(h1, "correct horse batterY")
    assert not verify_password(h1, "")


def test_broken_or_empty_hash_never_verifies():
    assert not verify_password("", "anything at all")
    assert not verify_password("$argon2id$garbage", "anything at all")
    assert not verify_password("plain text password", "plain text password")


def test_hash_made_with_weaker_parameters_verifies_and_asks_for_a_rehash():
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("old password 1")
    assert verify_password(weak, "old password 1")
    assert needs_rehash(weak)
    assert not needs_rehash(hash_password("old password 1"))


def test_stored_account_keeps_only_the_hash(db):
    add_user(db, "rita", "radiologist", "correct horse battery")
    with db.session() as s:
        acc = s.exec(select(UserAccount)).one()
    assert acc.password_hash.startswith("$argon2id$")
    assert "correct horse battery" not in acc.password_hash


@pytest.mark.parametrize("password", ["short", "eleven char", " leading space!", "a\nline break!"])
def test_weak_or_odd_password_refused(password):
    with pytest.raises(AuthError):
        check_password(password)


@pytest.mark.parametrize("name", ["", "-dash", "a b", "x" * 65, "api-token", "ünï"])
def test_bad_user_names_refused(name):
    with pytest.raises(AuthError):
        check_name(name)


def test_duplicate_user_and_unknown_role_refused(db):
    add_user(db, "rita", "radiologist", "correct horse battery")
    with pytest.raises(AuthError, match="exists"):
        add_user(db, "rita", "admin", "correct horse battery")
    with pytest.raises(AuthError, match="unknown role"):
        add_user(db, "nina", "nurse", "correct horse battery")
