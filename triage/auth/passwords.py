"""Password hashing: argon2id through argon2-cffi (the reference implementation's bindings),
with its RFC 9106 low-memory profile (64 MiB, 3 passes). A stored hash carries its own
parameters, so raising them later only means new hashes; old ones still verify and are
re-hashed at the next successful sign-in (:func:`needs_rehash`)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()  # argon2id, RFC 9106 "second recommended" parameters

#: Shortest password accepted by `triage users add|passwd`.
MIN_PASSWORD_LENGTH = 12

#: Verified when the user name is unknown, so that a wrong name costs as long as a wrong
#: password (the answer's timing does not tell which names exist).
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (a fresh random salt each time)."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; False for a mismatch or a hash that is
    not a valid argon2 hash (an empty one: an account without a password)."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and bool(stored_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def burn_verify(password: str) -> None:
    """Spend the time of one verification (for an unknown user name)."""
    verify_password(_DUMMY_HASH, password + "\x00")


def needs_rehash(stored_hash: str) -> bool:
    """True when ``stored_hash`` was made with other parameters than today's."""
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except (InvalidHashError, ValueError):
        return True
