"""``triage users add | passwd | role | token | list`` and ``triage audit export``.

Bootstrap: on a fresh installation, ``triage users add NAME --role admin`` creates the first
account (the database too, when the engine has not run yet); it asks for the password twice
on a terminal, reads one line with ``--password-stdin``, or makes one with ``--generate`` and
prints it once. Every change is written to the audit log as made by ``cli:<OS user>``.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triage.auth import users
from triage.auth.audit import audit, cli_address, export_jsonl
from triage.config import Settings
from triage.errors import AuthError, StoreError
from triage.store import Database

SettingsArgs = Callable[[argparse.ArgumentParser], None]
SettingsOf = Callable[[argparse.Namespace], Settings]


def add_parsers(sub: Any, add_settings_args: SettingsArgs, settings_of: SettingsOf) -> None:
    """Register ``users ...`` and ``audit export`` under the main parser's subcommands."""
    grp = sub.add_parser("users", help="local accounts: add, passwd, role, token, list")
    cmds = grp.add_subparsers(dest="users_cmd")

    def password_args(p: argparse.ArgumentParser) -> None:
        how = p.add_mutually_exclusive_group()
        how.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        how.add_argument(
            "--generate", action="store_true", help="make a random password and print it once"
        )

    p = cmds.add_parser("add", help="create an account (the first one: --role admin)")
    add_settings_args(p)
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=users.ROLES)
    password_args(p)
    p.set_defaults(func=lambda a: cmd_add(a, settings_of(a)))

    p = cmds.add_parser("passwd", help="new password (also unlocks, ends the user's sessions)")
    add_settings_args(p)
    p.add_argument("name")
    password_args(p)
    p.set_defaults(func=lambda a: cmd_passwd(a, settings_of(a)))

    p = cmds.add_parser("role", help="change an account's role")
    add_settings_args(p)
    p.add_argument("name")
    p.add_argument("role", choices=users.ROLES)
    p.set_defaults(func=lambda a: cmd_role(a, settings_of(a)))

    p = cmds.add_parser("token", help="new personal API token (printed once), or --revoke")
    add_settings_args(p)
    p.add_argument("name")
    p.add_argument("--revoke", action="store_true", help="remove the user's token")
    p.set_defaults(func=lambda a: cmd_token(a, settings_of(a)))

    p = cmds.add_parser("list", help="accounts, roles, last sign-in, lock-out, token")
    add_settings_args(p)
    p.set_defaults(func=lambda a: cmd_list(a, settings_of(a)))

    grp = sub.add_parser("audit", help="the audit log")
    cmds = grp.add_subparsers(dest="audit_cmd")
    p = cmds.add_parser("export", help="write the audit log as JSON lines")
    add_settings_args(p)
    p.add_argument("--out", default="-", help="file to write (default: standard output)")
    p.add_argument("--since", type=_timestamp, help="from this time (ISO 8601; UTC if no zone)")
    p.add_argument("--until", type=_timestamp, help="before this time (ISO 8601)")
    p.set_defaults(func=lambda a: cmd_export(a, settings_of(a)))


def _timestamp(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2026-12-01 or 2026-12-01T08:00)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _db(settings: Settings, *, create: bool) -> Database:
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            if not create:
                raise StoreError(
                    f"no engine database at {path} (data_dir {settings.data_dir}; set "
                    "--data-dir, TRIAGE_DATA_DIR or --config as for serve)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(url)
    db.create_all()
    return db


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, whether it was generated and must be printed)."""
    if args.generate:
        return secrets.token_urlsafe(15), True
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if not sys.stdin.isatty():
        raise AuthError("no terminal to ask for the password: use --password-stdin or --generate")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise AuthError("the two passwords differ")
    return first, False


def _audit_user(db: Database, action: str, name: str, detail: str = "") -> None:
    """Audit a change to account ``name`` made by this command: user = the OS user, address
    ``cli:<OS user>``, object ``user:<name>``."""
    address = cli_address()
    audit(db, address.removeprefix("cli:"), action, f"user:{name}", address, detail)


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    users.check_name(args.name)
    password, generated = _password(args)
    db = _db(settings, create=True)
    try:
        user = users.add_user(db, args.name, args.role, password)
        _audit_user(db, "user-add", user.name, f"role {user.role}")
    finally:
        db.dispose()
    print(f"user {user.name} added with role {user.role}")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def cmd_passwd(args: argparse.Namespace, settings: Settings) -> int:
    password, generated = _password(args)
    db = _db(settings, create=False)
    try:
        users.set_password(db, args.name, password)
        _audit_user(db, "user-passwd", args.name, "password set; lock-out cleared; sessions ended")
    finally:
        db.dispose()
    print(f"password of {args.name} changed (account unlocked, its sessions ended)")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def cmd_role(args: argparse.Namespace, settings: Settings) -> int:
    db = _db(settings, create=False)
    try:
        before = users.get_user(db, args.name)
        users.set_role(db, args.name, args.role)
        _audit_user(db, "user-role", args.name, f"{before.role if before else '?'} -> {args.role}")
    finally:
        db.dispose()
    print(f"{args.name} now has role {args.role}")
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    db = _db(settings, create=False)
    try:
        if args.revoke:
            had = users.revoke_token(db, args.name)
            _audit_user(db, "user-token-revoke", args.name)
            print(f"token of {args.name} revoked" if had else f"{args.name} had no token")
            return 0
        token = users.new_token(db, args.name)
        _audit_user(db, "user-token", args.name, "new token")
    finally:
        db.dispose()
    print(f"API token of {args.name} (shown once; it replaces any earlier one):")
    print(token)
    print("use: Authorization: Bearer <token>")
    return 0


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    db = _db(settings, create=False)
    try:
        rows = users.list_users(db)
    finally:
        db.dispose()
    now = datetime.now(UTC)
    table = Table(title=f"{len(rows)} accounts")
    for col in ("user", "role", "created", "last sign-in", "failures", "locked until", "token"):
        table.add_column(col)

    def when(value: datetime | None) -> str:
        return users.aware(value).strftime("%Y-%m-%d %H:%M") if value else ""

    for acc in rows:
        locked = (
            acc.locked_until if acc.locked_until and users.aware(acc.locked_until) > now else None
        )
        table.add_row(
            acc.name,
            acc.role,
            when(acc.created_at),
            when(acc.last_login_at),
            str(acc.failed_logins),
            when(locked),
            "yes" if acc.token_hash else "",
        )
    Console(width=120).print(table)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    db = _db(settings, create=False)
    try:
        if args.out == "-":
            n = export_jsonl(db, sys.stdout, since=args.since, until=args.until)
        else:
            with open(args.out, "w", encoding="utf-8") as out:
                n = export_jsonl(db, out, since=args.since, until=args.until)
    finally:
        db.dispose()
    print(f"{n} audit events written", file=sys.stderr)
    return 0
