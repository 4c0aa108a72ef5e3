"""``triage hl7 check FILE`` and ``triage hl7 replay`` (registered by :func:`add_hl7_commands`):
tools for integration engineers.

- ``check`` reads a file holding one or more messages (MLLP-framed, or plain text with CR, LF
  or CRLF segment separators) and prints, for each, what the listener would take from it,
  field by field with the source (``priority S from ORC-7.6``), or what it rejects and why
  (the AE/AR and ERR it would send). Nothing is stored. Exit status 1 when any message would
  not be accepted.
- ``replay`` applies stored messages again (after a mapping fix, or for a message answered
  AE 207 when the database failed), oldest first, with the current mapping. Re-applying is
  idempotent, and an order last changed by a newer message only gets the fields it lacks.
"""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from triage.config import Settings
from triage.errors import ConfigError

SettingsArgs = Callable[[argparse.ArgumentParser], None]
SettingsOf = Callable[[argparse.Namespace], Settings]

_FIELD_LABELS = (
    ("order_control", "order control"),
    ("order_status", "order status"),
    ("accession_number", "accession"),
    ("placer_order_number", "placer order"),
    ("filler_order_number", "filler order"),
    ("patient_id", "patient id"),
    ("patient_name", "patient name"),
    ("patient_class", "patient class"),
    ("ordered_priority", "priority"),
    ("procedure_code", "procedure code"),
    ("procedure_text", "procedure text"),
    ("modality", "modality"),
    ("study_uid", "study UID"),
    ("ordering_location", "ordering location"),
    ("reason_for_study", "reason for study"),
)


def add_hl7_commands(sub: Any, add_settings_args: SettingsArgs, settings_of: SettingsOf) -> None:
    """Register ``hl7 check`` and ``hl7 replay`` under the main parser's subcommands."""
    hl7 = sub.add_parser("hl7", help="HL7 tools").add_subparsers(dest="hl7_cmd")
    p = hl7.add_parser("check", help="show what the engine would take from a message file")
    add_settings_args(p)
    p.add_argument("file", type=Path, help="message file (plain or MLLP-framed)")
    p.add_argument("--mapping", type=Path, help="mapping file (default: from the settings)")
    p.add_argument("--ack", action="store_true", help="print the ACK text too")
    p.set_defaults(func=lambda a: cmd_check(a, settings_of(a)))

    p = hl7.add_parser("replay", help="apply stored HL7 messages again")
    add_settings_args(p)
    p.add_argument("--since", help="messages received at or after (ISO date/time, UTC)")
    p.add_argument("--id", type=int, action="append", default=[], help="message id (repeat)")
    p.add_argument("--all", action="store_true", help="every stored message")
    p.add_argument("--mapping", type=Path, help="mapping file (default: from the settings)")
    p.set_defaults(func=lambda a: cmd_replay(a, settings_of(a)))


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file: MLLP frames if it has any, else blocks starting at each MSH."""
    from triage.hl7.mllp import MLLPDecoder

    if b"\x0b" in data:
        return MLLPDecoder(max(len(data), 1)).feed(data)
    starts = [m.start() for m in re.finditer(rb"(?m)^MSH", data)]
    if not starts:
        return [data.strip()] if data.strip() else []
    bounds = [*starts, len(data)]
    return [data[a:b].strip(b"\r\n ") for a, b in itertools.pairwise(bounds)]


def _mapping(args: argparse.Namespace, settings: Settings) -> Any:
    from triage.hl7.mapping import load_mapping_or_defaults
    from triage.ingest.hl7_store import mapping_for

    if args.mapping:
        return load_mapping_or_defaults(args.mapping, required=True)
    return mapping_for(settings)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from triage.hl7.inbound import decode_payload, evaluate, make_ack

    console = Console()
    mapping = _mapping(args, settings)
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise ConfigError("file", f"cannot read {args.file}: {exc}") from None
    payloads = split_messages(data)
    if not payloads:
        console.print(f"[red]{args.file}: no message found[/red]")
        return 1
    worst = 0
    for n, payload in enumerate(payloads, start=1):
        text, codec, note = decode_payload(payload)
        ev = evaluate(text, mapping, codec)
        if note:
            ev.notes.insert(0, note)
        h = ev.header
        ack, code = make_ack(
            h,
            ev.code,
            ev.error,
            sending_application=settings.sending_application,
            sending_facility=settings.sending_facility,
        )
        title = f"message {n}"
        if h is not None:
            title += (
                f": {h.type_code or '?'} version {h.version or '?'}"
                f" MSH-10 {h.control_id or '(none)'}"
                f" from {h.sending_application or '?'}/{h.sending_facility or '?'}"
            )
        console.rule(title)
        mode = "original"
        if h is not None and h.enhanced_mode:
            mode = (
                f"enhanced (MSH-15 {h.accept_ack_type or '-'}, "
                f"MSH-16 {h.application_ack_type or '-'})"
            )
        console.print(
            f"character set: {codec}"
            + (f" (MSH-18 {h.charset})" if h is not None and h.charset else "")
            + f"; acknowledgment mode: {mode}; mapping: {ev.fmap.name} ({mapping.path})"
        )
        if ev.error is not None:
            worst = 1
            console.print(
                f"[bold red]rejected: {code or ev.code}[/bold red] ERR-3 {ev.error.hl7_code}"
                + (f" at {ev.error.location}" if ev.error.location else "")
                + f": {ev.error}"
            )
        elif ev.kind == "order":
            for i, order in enumerate(ev.orders, start=1):
                console.print(f"[bold]order {i}[/bold]")
                for key, label in _FIELD_LABELS:
                    value = getattr(order, key)
                    if value:
                        where = f"from {order.sources.get(key, '?')}"
                    else:
                        tried = ", ".join(str(r) for r in ev.fmap.sources.get(key, ()))
                        value, where = "-", f"(nothing usable in {tried})" if tried else ""
                    console.print(
                        f"  {label:<18} {value}  {where}",
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )
        elif ev.kind == "patient_update" and ev.patient is not None:
            console.print(
                f"patient update: orders of patient {ev.patient.patient_id} "
                f"(from {ev.patient.sources.get('patient_id', '-')}) get the name "
                f"{ev.patient.patient_name or '(none: nothing changes)'} "
                f"(from {ev.patient.sources.get('patient_name', '-')})",
                highlight=False,
            )
        else:
            console.print("not an order or patient update: stored and acknowledged, not applied")
        for note in ev.notes:
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
        if ack:
            answer = code
        elif h is not None and h.message_type == "ACK":
            answer = f"nothing (an acknowledgment is not acknowledged; outcome {code})"
        else:
            answer = f"nothing (the sender asked for no ACK; outcome {code})"
        console.print(f"answer: [bold]{answer}[/bold]")
        if args.ack and ack:
            # as it is, never wrapped (rich wraps at 80 columns when not on a terminal): an
            # ACK copied from this output must be the ACK
            console.print(ack.replace("\r", "\n"), highlight=False, markup=False, soft_wrap=True)
    return worst


def _since(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError("since", f"not an ISO date/time: {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console
    from rich.table import Table

    from triage.ingest.hl7_store import MessageStore
    from triage.store.db import Database

    since = _since(args.since)
    if since is None and not args.id and not args.all:
        raise ConfigError("replay", "say which messages: --since, --id or --all")
    db = Database(settings.resolved_database_url)
    try:
        db.create_all()
        store = MessageStore(settings, db, _mapping(args, settings))
        results = store.replay(since=since, ids=args.id or None)
    finally:
        db.dispose()
    table = Table(title=f"replayed {len(results)} message(s)")
    for col in ("id", "type", "MSH-10", "result"):
        table.add_column(col)
    failed = 0
    for r in results:
        failed += r.failed
        table.add_row(str(r.message_id), r.message_type, r.control_id, r.result)
    console = Console()
    console.print(table)
    missing = sorted(set(args.id or ()) - {r.message_id for r in results})
    for mid in missing:  # as `triage outbox retry` says of an unknown id
        console.print(f"[red]no HL7 message {mid}[/red]")
    return 1 if failed or missing else 0
