from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from support.paths import REPO_ROOT

from auth.authkit import API_TOKEN, PASSWORD, Clock
from triage.api.app import create_app
from triage.auth import passwords
from triage.auth.users import add_user
from triage.config import Settings
from triage.scoring import load_urgency_rules
from triage.store import Database


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch, request):
    """argon2id with small parameters: these tests hash and verify hundreds of times (the
    real parameters are used and checked in test_passwords.py)."""
    if request.module.__name__.endswith("test_passwords"):
        return
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(passwords, "_HASHER", cheap)
    monkeypatch.setattr(passwords, "_DUMMY_HASH", cheap.hash("not a password of anyone"))


@pytest.fixture
def db(tmp_path):
    d = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    d.create_all()
    yield d
    d.dispose()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def settings():
    return Settings(api_token=API_TOKEN)


@pytest.fixture
def app(db, clock, settings):
    rules = load_urgency_rules(REPO_ROOT / "rules" / "urgency.yaml")
    return create_app(db, rules, lambda: {"api": {"ready": True}}, settings=settings, clock=clock)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def users(db):
    """One account per role, all with PASSWORD."""
    for name, role in (
        ("rita", "radiologist"),
        ("mark", "manager"),
        ("erin", "engineer"),
        ("ada", "admin"),
    ):
        add_user(db, name, role, PASSWORD)
