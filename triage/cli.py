"""Command line: ``triage serve``, ``triage demo``, ``triage config``, ``triage rules check``,
``triage rules simulate``,
``triage hl7 ...``, ``triage outbox list | show | retry | discard``, ``triage models ...``,
``triage users add | passwd | role | token | list``, ``triage audit export``,
``triage worklist [--follow]``, ``triage status``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triage.config import Settings, describe_settings, example_config, load_settings
from triage.errors import ConfigError, RulesError, TriageError

# Command-line flags that map directly to settings (the highest-precedence source).
FLAG_SETTINGS = (
    "data_dir",
    "database_url",
    "bind_host",
    "dicom_port",
    "dicom_ae_title",
    "hl7_port",
    "http_port",
    "ris_host",
    "ris_port",
    "triton_url",
    "study_stable_seconds",
    "log_level",
)


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (default: $TRIAGE_CONFIG, else ./triage.toml)")
    for name in FLAG_SETTINGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting (see `triage config`)",
    )


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        n: getattr(args, n) for n in FLAG_SETTINGS if getattr(args, n) is not None
    }
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(key or "--set", "expected KEY=VALUE")
        overrides[key.strip()] = value
    return load_settings(args.config, overrides=overrides)


def _cmd_serve(args: argparse.Namespace) -> int:
    from triage.service import serve

    serve(_settings(args))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from triage.demo import run_demo_cli

    return run_demo_cli(
        _settings(args),
        studies=args.studies,
        compression=args.compression,
        positives=args.positives,
        minutes=args.minutes,
        keep=args.keep,
    )


def _cmd_config(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    if args.example:
        sys.stdout.write(example_config())
        return 0
    settings = _settings(args)
    table = Table(title="Settings (defaults < file < environment < command line)")
    for col in ("setting", "environment", "value", "default", "meaning"):
        table.add_column(col)
    for name, env, default, desc in describe_settings():
        table.add_row(name, env, str(getattr(settings, name)), default, desc)
    Console().print(table)
    return 0


def _cmd_rules_check(args: argparse.Namespace) -> int:
    from triage.routing import load_routing_rules
    from triage.scoring import load_urgency_rules

    settings = _settings(args)
    routing = load_routing_rules(Path(args.routing or settings.rules_dir / "routing.yaml"))
    urgency = load_urgency_rules(Path(args.urgency or settings.rules_dir / "urgency.yaml"))
    print(f"{routing.path}: {len(routing.rules)} routing rules OK")
    print(f"{urgency.path}: {len(urgency.priorities)} priorities OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the engine")
    _add_settings_args(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser(
        "demo",
        help="a busy emergency shift in about a minute: its own engine, test RIS and worklist",
    )
    _add_settings_args(p)
    p.add_argument("--studies", type=int, default=40, help="studies in the shift (40)")
    p.add_argument("--minutes", type=float, default=60.0, help="length of the shift (60)")
    p.add_argument(
        "--compression", type=float, default=60.0, help="simulated time per real time (60x)"
    )
    p.add_argument("--positives", type=int, default=3, help="studies with a synthetic finding")
    p.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="leave the demo engine's data directory and log in DIR (default: a temporary "
        "one, removed at the end; --data-dir is not used by the demo)",
    )
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="print every setting, its value and its default")
    _add_settings_args(p)
    p.add_argument(
        "--example",
        action="store_true",
        help="print a triage.toml with every setting commented out at its default",
    )
    p.set_defaults(func=_cmd_config)

    rules = sub.add_parser("rules", help="rules files").add_subparsers(dest="rules_cmd")
    p = rules.add_parser("check", help="validate routing.yaml and urgency.yaml")
    _add_settings_args(p)
    p.add_argument("--routing", help="routing rules file to check")
    p.add_argument("--urgency", help="urgency rules file to check")
    p.set_defaults(func=_cmd_rules_check)

    from triage.scoring.simulate_cli import add_simulate_command  # `triage rules simulate`

    add_simulate_command(rules, _add_settings_args, _settings)

    from triage.cli_hl7 import add_hl7_commands  # `triage hl7 check | replay`

    add_hl7_commands(sub, _add_settings_args, _settings)

    from triage.outbound import commands as outbox_commands  # `triage outbox list | show ...`

    outbox_commands.add_parsers(sub, _add_settings_args, _settings)

    from triage.auth import commands as auth_commands  # `triage users ...`, `triage audit export`

    auth_commands.add_parsers(sub, _add_settings_args, _settings)

    from triage.web.terminal import add_terminal_commands  # `triage worklist`, `triage status`

    add_terminal_commands(sub, _add_settings_args, _settings)

    from triage.training.cli import add_models_commands  # `triage models train | validate`

    add_models_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ConfigError, RulesError) as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return 2
    except TriageError as exc:
        print(f"triage: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
