"""``triage worklist [--follow]`` and ``triage status``: what people see, in a terminal.

``triage worklist`` prints the worklist the pages show (the same rows, most urgent first) as a
table, read from the database of the engine's settings (``--config``, ``TRIAGE_*``,
``--set``: as for ``triage serve``); ``--follow`` keeps it on screen and redraws it when the
worklist changes (the change marker the pages' live feed reads, every second). Reading the
worklist from the command line is recorded in the audit log as ``cli:<OS user>``.

``triage status`` asks the running engine's ``/healthz`` (its address from
``<data_dir>/endpoints.json``, else ``bind_host:http_port``) and prints each part's state;
exit status 0 when every part is ready, 1 when one is not, 2 when no engine answers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from triage.config import Settings
from triage.errors import TriageError

SettingsArgs = Callable[[argparse.ArgumentParser], None]
SettingsOf = Callable[[argparse.Namespace], Settings]

PRIORITY_STYLE = {"S": "bold white on red3", "A": "bold black on gold1", "T": "bold black on gold1"}
AI_STYLE = {"positive": "bold red3", "pending": "italic blue", "not_assessable": "dark_orange3"}


def add_terminal_commands(
    sub: Any, add_settings_args: SettingsArgs, settings_of: SettingsOf
) -> None:
    """Register ``worklist`` and ``status`` under the main parser's subcommands."""
    p = sub.add_parser("worklist", help="the worklist, most urgent first (--follow: live)")
    add_settings_args(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep it on screen, live")
    p.add_argument("--limit", type=int, default=0, help="at most this many rows (0: all)")
    p.set_defaults(func=lambda a: cmd_worklist(a, settings_of(a)))

    p = sub.add_parser("status", help="the health of each part of the running engine")
    add_settings_args(p)
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for /healthz (5)")
    p.add_argument("--json", action="store_true", help="print /healthz's JSON as it came")
    p.set_defaults(func=lambda a: cmd_status(a, settings_of(a)))


# -- worklist ---------------------------------------------------------------------------------


def _open_db(settings: Settings) -> Any:
    from triage.store import Database

    url = settings.resolved_database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise TriageError(
            f"no engine database at {url.removeprefix('sqlite:///')} (data_dir "
            f"{settings.data_dir}; set --data-dir, TRIAGE_DATA_DIR or --config as for serve)"
        )
    db = Database(url)
    db.create_all()
    return db


def worklist_table(rows: list[dict[str, Any]], limit: int = 0) -> Any:
    """The rows as a rich table: priority in words (and colour), the AI flag, class and
    location, procedure, waiting, probability, state."""
    from rich.table import Table
    from rich.text import Text

    from triage.api.worklist import SYNTHETIC_NOTICE

    table = Table(
        title=f"Worklist: {len(rows)} studies, most urgent first",
        caption=f"AI: {SYNTHETIC_NOTICE}",
        caption_justify="left",
        expand=False,
    )
    for name in ("priority", "accession", "procedure", "class / location", "mod", "waiting"):
        table.add_column(name, no_wrap=name in ("priority", "mod"))
    table.add_column("AI (synthetic-phantom model)")
    table.add_column("p", justify="right")
    table.add_column("state")
    for r in rows[: limit or None]:
        p = r["priority"]
        prio = Text(f"{p['label']} ({p['code']})", style=PRIORITY_STYLE.get(p["code"], ""))
        if r["raised"] and r["ordered"]:
            prio.append(f" ↑ from {r['ordered']['code']}")
        waiting = r["waiting_minutes"]
        if waiting is None:
            wait = "not complete"
        elif r["target_minutes"] is not None:
            wait = f"{waiting:.0f} of {r['target_minutes']:.0f} min" + (
                " LATE" if r["late"] else ""
            )
        else:
            wait = f"{waiting:.0f} min"
        ai = r["ai"]
        prob = "" if ai["probability"] is None else f"{ai['probability']:.2f}"
        table.add_row(
            prio,
            r["accession_number"] or r["study_uid"],
            r["procedure_shown"],
            f"{r['class_label']} / {r['location'] or '-'}",
            r["modality"],
            wait,
            Text(ai["text"], style=AI_STYLE.get(ai["flag"], "")),
            prob,
            r["state_label"],
        )
    return table


def follow_worklist(
    feed: Any,
    console: Any,
    limit: int = 0,
    *,
    reload_rules: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> None:
    """Keep the worklist on ``console``, redrawn every second from ``feed`` (rows built
    again when the change marker moves, or every 30 s); ``rounds``: stop after that many."""
    from rich.live import Live

    _, rows = feed.snapshot()
    with Live(worklist_table(rows, limit), console=console, auto_refresh=False) as live:
        done = 0
        while rounds is None or done < rounds:
            sleep(1.0)
            reload_rules()
            _, rows = feed.snapshot(max_age=30.0)
            live.update(worklist_table(rows, limit), refresh=True)
            done += 1


def cmd_worklist(args: argparse.Namespace, settings: Settings) -> int:
    from rich.console import Console

    from triage.auth.audit import audit, cli_address
    from triage.scoring import UrgencyRules, load_urgency_rules
    from triage.web.feed import WorklistFeed
    from triage.web.views import worklist_rows

    db = _open_db(settings)
    rules_path = settings.rules_dir / "urgency.yaml"
    in_force: list[UrgencyRules] = [load_urgency_rules(rules_path)]

    def reload_rules() -> None:  # the engine puts a changed file in force; so do we
        with contextlib.suppress(TriageError):  # a bad file: the engine keeps its rules too
            in_force[0] = load_urgency_rules(rules_path)

    feed = WorklistFeed(db, lambda: in_force[0], worklist_rows)
    console = Console()
    who = cli_address()
    try:
        _, rows = feed.snapshot()
        audit(db, who.removeprefix("cli:"), "view", "worklist", who, f"{len(rows)} studies")
        if args.follow:
            follow_worklist(feed, console, args.limit, reload_rules=reload_rules)
        else:
            console.print(worklist_table(rows, args.limit))
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        db.dispose()


# -- status -----------------------------------------------------------------------------------


def engine_url(settings: Settings) -> str:
    """The running engine's HTTP address: endpoints.json, else the configured port."""
    from triage.service import read_endpoints

    try:
        host, port = read_endpoints(settings.data_dir)["http"][:2]
    except (OSError, ValueError, KeyError, TypeError):
        host, port = settings.bind_host, settings.http_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in str(host):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _part_detail(part: dict[str, Any]) -> str:
    shown = []
    for key, value in part.items():
        if key == "ready" or value in (None, "", {}, []):
            continue
        text = (
            json.dumps(value, separators=(",", ":"))
            if isinstance(value, dict | list)
            else str(value)
        )
        shown.append(f"{key}={text}")
    return " ".join(shown)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    import httpx
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    url = engine_url(settings) + "/healthz"
    console = Console()
    token = settings.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url, headers=headers, timeout=args.timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        console.print(f"[bold red]no engine answers at {url}[/]: {exc}")
        return 2
    if args.json:
        console.print_json(data=body)
        return 0 if response.status_code == 200 else 1
    parts = body.get("components", {}) if isinstance(body, dict) else {}
    table = Table(title=f"Engine at {url}: {body.get('status', response.status_code)}")
    table.add_column("part")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    failing = False
    for name, part in parts.items():
        ready = bool(part.get("ready"))
        state = Text("ready" if ready else "NOT READY", style="green" if ready else "bold red")
        if ready and part.get("failing"):  # the RIS: taking nothing, the outbox waits
            failing = True
            state = Text("NOT ANSWERING", style="bold yellow")
        table.add_row(name, state, _part_detail(part))
    console.print(table)
    if isinstance(body, dict) and body.get("detail"):  # answered as to anyone: states only
        console.print(
            "details (addresses, Triton's models, counters) need credentials: "
            "set api_token (TRIAGE_API_TOKEN) as the engine has it",
            highlight=False,
        )
    return 0 if response.status_code == 200 and not failing else 1
