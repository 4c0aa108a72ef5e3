"""`triage users add|passwd|role|token|list` and `triage audit export`, through main()."""

from __future__ import annotations

import io
import json

import pytest

from triage.auth.passwords import verify_password
from triage.auth.users import authenticate, user_by_token
from triage.cli import main
from triage.store import Database
from triage.store.models import UserAccount


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("TRIAGE_CONFIG", "TRIAGE_DATA_DIR", "TRIAGE_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "var"


def run(monkeypatch, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(list(argv))


def account(data_dir, name) -> UserAccount | None:
    db = Database(f"sqlite:///{data_dir / 'triage.db'}")
    try:
        from sqlmodel import select

        with db.session() as s:
            return s.exec(select(UserAccount).where(UserAccount.name == name)).first()
    finally:
        db.dispose()


def test_first_admin_on_a_fresh_installation(data_dir, monkeypatch, capsys):
    assert not data_dir.exists()
    d = str(data_dir)
    code = run(
        monkeypatch,
        "users",
        "add",
        "ada",
        "--role",
        "admin",
        "--password-stdin",
        "--data-dir",
        d,
        stdin="correct horse battery\n",
    )
    assert code == 0
    assert "user ada added with role admin" in capsys.readouterr().out
    acc = account(data_dir, "ada")
    assert acc is not None and acc.role == "admin"
    assert verify_password(acc.password_hash, "correct horse battery")


def test_generated_password_is_printed_once_and_works(data_dir, monkeypatch, capsys):
    d = str(data_dir)
    assert (
        run(
            monkeypatch,
            "users",
            "add",
            "rita",
            "--role",
            "radiologist",
            "--generate",
            "--data-dir",
            d,
        )
        == 0
    )
    out = capsys.readouterr().out
    password = out.split("password (shown once): ")[1].strip()
    assert len(password) >= 16
    assert verify_password(account(data_dir, "rita").password_hash, password)


def test_no_terminal_and_no_flag_is_a_clear_error(data_dir, monkeypatch, capsys):
    assert (
        run(
            monkeypatch,
            "users",
            "add",
            "rita",
            "--role",
            "radiologist",
            "--data-dir",
            str(data_dir),
        )
        == 1
    )
    assert "use --password-stdin or --generate" in capsys.readouterr().err


def test_errors_are_one_line(data_dir, monkeypatch, capsys):
    d = str(data_dir)
    assert (
        run(
            monkeypatch,
            "users",
            "add",
            "rita",
            "--role",
            "radiologist",
            "--password-stdin",
            "--data-dir",
            d,
            stdin="short\n",
        )
        == 1
    )
    assert "password too short" in capsys.readouterr().err
    run(
        monkeypatch,
        "users",
        "add",
        "rita",
        "--role",
        "radiologist",
        "--password-stdin",
        "--data-dir",
        d,
        stdin="correct horse battery\n",
    )
    assert (
        run(
            monkeypatch,
            "users",
            "add",
            "rita",
            "--role",
            "admin",
            "--password-stdin",
            "--data-dir",
            d,
            stdin="correct horse battery\n",
        )
        == 1
    )
    assert "exists" in capsys.readouterr().err
    assert (
        run(
            monkeypatch,
            "users",
            "passwd",
            "nobody",
            "--password-stdin",
            "--data-dir",
            d,
            stdin="correct horse battery\n",
        )
        == 1
    )
    assert "no user 'nobody'" in capsys.readouterr().err


def test_passwd_unlocks(data_dir, monkeypatch):
    from datetime import UTC, datetime, timedelta

    d = str(data_dir)
    run(
        monkeypatch,
        "users",
        "add",
        "rita",
        "--role",
        "radiologist",
        "--password-stdin",
        "--data-dir",
        d,
        stdin="correct horse battery\n",
    )
    db = Database(f"sqlite:///{data_dir / 'triage.db'}")
    now = datetime.now(UTC)
    try:
        for _ in range(5):
            authenticate(
                db,
                "rita",
                "wrong password!",
                max_failures=5,
                lockout=timedelta(minutes=15),
                now=now,
            )
        assert account(data_dir, "rita").locked_until is not None
        assert (
            run(
                monkeypatch,
                "users",
                "passwd",
                "rita",
                "--password-stdin",
                "--data-dir",
                d,
                stdin="another good password\n",
            )
            == 0
        )
        acc = account(data_dir, "rita")
        assert acc.locked_until is None and acc.failed_logins == 0
        signed = authenticate(
            db,
            "rita",
            "another good password",
            max_failures=5,
            lockout=timedelta(minutes=15),
            now=now,
        )
        assert signed.user is not None
    finally:
        db.dispose()


def test_token_role_list_and_audit_export(data_dir, monkeypatch, capsys, tmp_path):
    d = str(data_dir)
    run(
        monkeypatch,
        "users",
        "add",
        "erin",
        "--role",
        "engineer",
        "--password-stdin",
        "--data-dir",
        d,
        stdin="correct horse battery\n",
    )
    capsys.readouterr()
    assert run(monkeypatch, "users", "token", "erin", "--data-dir", d) == 0
    token = capsys.readouterr().out.splitlines()[1].strip()
    db = Database(f"sqlite:///{data_dir / 'triage.db'}")
    try:
        user = user_by_token(db, token)
        assert user is not None and (user.name, user.role) == ("erin", "engineer")
        assert token not in (account(data_dir, "erin").token_hash or "")
        assert run(monkeypatch, "users", "role", "erin", "manager", "--data-dir", d) == 0
        assert user_by_token(db, token).role == "manager"
        assert run(monkeypatch, "users", "token", "erin", "--revoke", "--data-dir", d) == 0
        assert user_by_token(db, token) is None
    finally:
        db.dispose()
    capsys.readouterr()
    assert run(monkeypatch, "users", "list", "--data-dir", d) == 0
    listing = capsys.readouterr().out
    assert "erin" in listing and "manager" in listing

    out = tmp_path / "audit.jsonl"
    assert run(monkeypatch, "audit", "export", "--data-dir", d, "--out", str(out)) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["action"] for x in lines] == [
        "user-add",
        "user-token",
        "user-role",
        "user-token-revoke",
    ]
    assert all(x["object"] == "user:erin" and x["address"].startswith("cli:") for x in lines)
    assert lines[2]["detail"] == "engineer -> manager"
    assert "4 audit events written" in capsys.readouterr().err
    assert run(monkeypatch, "audit", "export", "--data-dir", d, "--since", "2999-01-01") == 0
    assert capsys.readouterr().out == ""


def test_export_without_a_database_is_a_clear_error(data_dir, monkeypatch, capsys):
    assert run(monkeypatch, "audit", "export", "--data-dir", str(data_dir)) == 1
    assert "no engine database" in capsys.readouterr().err
    assert not data_dir.exists()  # nothing was created


def test_config_never_prints_the_api_token(data_dir, monkeypatch, capsys):
    secret = "s3cret-token-that-must-not-leak"
    monkeypatch.setenv("TRIAGE_API_TOKEN", secret)
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "TRIAGE_API_TOKEN" in out and "**********" in out and secret not in out
    monkeypatch.setenv("TRIAGE_API_TOKEN", "short\x01secret")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "api_token" in err and "secret" not in err
