"""``triage outbox list | show | retry | discard``: the outbox for the integration engineer.

They read and change the database of the engine's settings (``--config``, ``TRIAGE_*``,
``--set``: the same as ``triage serve``), also while the engine runs. ``retry`` and
``discard`` are recorded in the action log with the OS user (``show`` prints the log).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from triage.config import Settings
from triage.outbound import outbox

SettingsArgs = Callable[[argparse.ArgumentParser], None]
SettingsOf = Callable[[argparse.Namespace], Settings]


def add_parsers(sub: Any, add_settings_args: SettingsArgs, settings_of: SettingsOf) -> None:
    """Register ``outbox list|show|retry|discard`` under the main parser's subcommands."""
    box = sub.add_parser("outbox", help="messages to the RIS: list, show, retry, discard")
    cmds = box.add_subparsers(dest="outbox_cmd")

    p = cmds.add_parser("list", help="outbox messages, newest first, and counts per status")
    add_settings_args(p)
    p.add_argument("--status", choices=outbox.STATUSES, help="only messages in this state")
    p.add_argument("--dead", action="store_true", help="only dead letters (rejected, dead)")
    p.add_argument("--order", default="", help="only this order (accession number)")
    p.add_argument("--study", default="", help="only this Study Instance UID")
    p.add_argument("--limit", type=int, default=50, help="at most this many rows (50)")
    p.set_defaults(func=lambda a: cmd_list(a, settings_of(a)))

    p = cmds.add_parser("show", help="one message: its state, ACK, RIS error, text, log")
    add_settings_args(p)
    p.add_argument("id", type=int)
    p.set_defaults(func=lambda a: cmd_show(a, settings_of(a)))

    for name, text in (
        ("retry", "send dead letters again (same MSH-10), or a waiting message now"),
        ("discard", "never send these messages; later ones of the same order go on"),
    ):
        p = cmds.add_parser(name, help=text)
        add_settings_args(p)
        p.add_argument("ids", type=int, nargs="+", metavar="ID")
        p.add_argument("--note", default="", help="why (kept in the action log)")
        p.set_defaults(func=lambda a, name=name: cmd_change(a, settings_of(a), name))


def _db(settings: Settings) -> Any:
    from triage.store import Database

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise outbox.OutboxError(
            f"no engine database at {url.removeprefix('sqlite:///')} (data_dir "
            f"{settings.data_dir}; set --data-dir, TRIAGE_DATA_DIR or --config as for serve)"
        )
    db = Database(url)
    db.create_all()  # an engine version before the outbox columns: add them
    return db


def _when(value: datetime | None) -> str:
    value = outbox.aware(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    db = _db(settings)
    f = outbox.Filter(
        status=args.status or "",
        dead=args.dead,
        order_key=args.order,
        study_uid=args.study,
        limit=args.limit,
    )
    found = outbox.list_messages(db, f)
    counts = outbox.counts(db)
    title = "Outbox: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in outbox.STATUSES)
    table = Table(title=title)
    for name in ("id", "status", "type", "order", "MSH-10", "prio", "tries", "next try", "why"):
        table.add_column(name, no_wrap=name != "why")
    for m in found:
        why = m.ris_error or m.error
        tries = f"{m.attempts}" + (f" ({m.failures} failed)" if m.failures else "")
        table.add_row(
            str(m.id),
            m.status,
            m.kind,
            m.order_key,
            m.control_id,
            m.priority,
            tries,
            _when(m.next_attempt_at) if m.status == outbox.PENDING else "",
            _short(why),
        )
    Console(width=max(Console().width, 140)).print(table)
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    msg, actions = outbox.get_message(_db(settings), args.id)
    console = Console()
    table = Table(title=f"Outbox message {msg.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("status", msg.status),
        ("type", msg.kind),
        ("order (accession)", msg.order_key),
        ("study", msg.study_uid),
        ("MSH-10", msg.control_id),
        ("priority", msg.priority),
        ("queued", _when(msg.created_at)),
        ("tries / failures", f"{msg.attempts} / {msg.failures}"),
        ("last try", _when(msg.last_attempt_at)),
        ("next try", _when(msg.next_attempt_at)),
        ("acknowledged", _when(msg.sent_at)),
        ("dead letter since", _when(msg.dead_at)),
        ("ACK code", msg.ack_code),
        ("RIS error", msg.ris_error),
        ("why", msg.error),
        ("checked (hl7apy)", "yes" if msg.validated else "not yet"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print("[bold]message[/bold]")
    console.print(msg.raw.replace("\r", "\n"), markup=False, highlight=False)
    if msg.ack:
        console.print("[bold]ACK[/bold]")
        console.print(msg.ack.strip("\r").replace("\r", "\n"), markup=False, highlight=False)
    if actions:
        log = Table(title="Actions")
        for name in ("when", "who", "action", "from", "to", "note"):
            log.add_column(name)
        for a in actions:
            log.add_row(_when(a.at), a.who, a.action, a.from_status, a.to_status, a.note)
        console.print(log)
    return 0


def cmd_change(args: argparse.Namespace, settings: Settings, action: str) -> int:
    db = _db(settings)
    who = outbox.who_am_i()
    change = outbox.retry if action == "retry" else outbox.discard
    done = change(db, args.ids, who=who, note=args.note)
    from triage.auth.audit import audit, cli_address

    for m in done:
        audit(db, who, f"outbox-{action}", f"outbox:{m.id}", cli_address(),
              f"{m.kind} {m.control_id}, order {m.order_key}: now {m.status}")  # fmt: skip
        print(f"{action}: message {m.id} ({m.kind} {m.control_id}, order {m.order_key}) "
              f"is now {m.status}")  # fmt: skip
    if action == "retry":
        print("a running engine sends it at its next round (completion_poll_seconds)")
    return 0
