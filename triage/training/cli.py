"""``triage models train``, ``validate``, ``stress`` and ``controls`` (registered by
:func:`add_models_commands`). Trained on synthetic phantoms; not for clinical use."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triage.synth.ct.spec import GENERATORS

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = REPO / "models"
DEFAULT_LEDGER = REPO / "docs" / "models" / "ledger.jsonl"
# The held-out set is scored once per model version (the ledger refuses a second run), so its
# report goes beside the ledger; the repeatable commands (stress, controls, crosscheck) write to
# a scratch folder unless told to publish (--out docs/models).
DEFAULT_HELDOUT_REPORT = DEFAULT_LEDGER.parent
SCRATCH_REPORT = "var/validation"


def _tasks(value: str) -> tuple[str, ...]:
    tasks = tuple(t.strip() for t in value.split(",") if t.strip())
    bad = [t for t in tasks if t not in ("ich", "pe")]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"tasks are ich and/or pe, got {value!r}")
    return tasks


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")


def _cmd_train(args: argparse.Namespace) -> int:
    _logging()
    from triage.training.train import train_all

    print("Training on synthetic phantoms (fixed seeds); the models are not for clinical use.")
    results = train_all(
        Path(args.models_dir),
        Path(args.cache_dir) if args.cache_dir else None,
        args.tasks,
        n_train=args.n_train,
        steps=args.steps,
        workers=args.workers,
        front=args.front,
        generator=args.generator,
        n_second=args.second,
        faint_calcifications=args.faint_calcifications,
    )
    for r in results:
        print(
            f"{r.task}: {r.seconds:.0f} s, {r.steps} steps, threshold {r.threshold:.4f} "
            f"(tuning sensitivity {r.tune_sensitivity:.2f}, specificity "
            f"{r.tune_specificity:.2f}, AUC {r.tune_auc:.3f}) -> {r.onnx_path}"
        )
    return 0


def _summary_table(title: str, results: Sequence[Any], routed: Sequence[str] | None = None) -> Any:
    """The closing table of a production-path command: one row per task's results
    (:class:`~triage.training.validate.HeldOut`), with a routing column when ``routed``."""
    from rich.table import Table

    t = Table(title=title)
    columns = ["task", "version", "n (pos.)", *(["routed"] if routed else [])]
    for col in (*columns, "not assessable", "AUC", "sens", "spec", "FA/study", "ECE", "time"):
        t.add_column(col)
    for i, r in enumerate(results):
        s = r.summary()
        t.add_row(
            r.task,
            r.model_version,
            f"{s['n']} ({s['positives']})",
            *([routed[i]] if routed else []),
            f"{s['not_assessable']} ({s['not_assessable_positives']} pos.)",
            f"{s['auc']:.3f}",
            f"{s['sensitivity']:.3f}",
            f"{s['specificity']:.3f}",
            f"{s['false_alerts_per_study']:.3f}",
            f"{s['ece']:.3f}",
            f"{s['seconds']:.0f} s",
        )
    return t


def _cmd_validate(args: argparse.Namespace) -> int:
    _logging()
    from rich.console import Console

    from triage.training.validate import HeldOutRefused, validate

    console = Console()
    try:
        results = validate(
            Path(args.models_dir),
            Path(args.out),
            n=args.n,
            tasks=args.tasks,
            triton_url=args.triton_url,
            workers=args.workers,
            ledger=Path(args.ledger),
            again=args.again,
            in_memory=not args.no_in_memory,
        )
    except HeldOutRefused as exc:
        console.print(f"[bold red]refused:[/] {exc}")
        return 2
    t = _summary_table("Held-out set through the production path (synthetic phantoms)", results)
    console.print(t)
    console.print("Synthetic phantoms; not for clinical use.")
    console.print(f"report: {Path(args.out) / 'report.md'}; ledger: {args.ledger}")
    return 0


def _cmd_stress(args: argparse.Namespace) -> int:
    _logging()
    import json

    from rich.console import Console

    from triage.training.perturb import COMBINATIONS, PERTURBATIONS
    from triage.training.stress import run_stress, stress_table

    known = [p.name for p in (*PERTURBATIONS, *COMBINATIONS)]
    names = None
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in known]
        if bad:
            Console().print(f"[bold red]unknown perturbation(s):[/] {', '.join(bad)}")
            return 2
    run_stress(
        Path(args.models_dir),
        Path(args.out),
        tasks=args.tasks,
        per_class=args.per_class,
        triton_url=args.triton_url,
        onnx=args.onnx,
        workers=args.workers,
        names=names,
    )
    payload = json.loads((Path(args.out) / "stress.json").read_text(encoding="utf-8"))
    console = Console()
    console.print(stress_table(payload))
    console.print("Red: below the 0.85 target (single perturbations). Synthetic phantoms only.")
    console.print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _cmd_controls(args: argparse.Namespace) -> int:
    _logging()
    from rich.console import Console

    from triage.training.validate import controls

    rows = controls(
        Path(args.models_dir),
        Path(args.out),
        triton_url=args.triton_url,
        data_dir=Path(args.data),
        tasks=args.tasks,
    )
    console = Console()
    if rows is None:
        console.print(f"[bold red]no real controls:[/] {args.data} or triage.inference.controls")
        return 1
    for r in rows:
        console.print(("[green]" if r["ok"] else "[bold red]") + r["verdict"] + "[/]")
    console.print(f"{sum(r['ok'] for r in rows)} of {len(rows)} right; report: {args.out}")
    return 0


def _cmd_crosscheck(args: argparse.Namespace) -> int:
    _logging()
    from rich.console import Console

    from triage.training.crosscheck import crosscheck

    results = crosscheck(
        Path(args.models_dir),
        Path(args.out),
        n=args.n,
        tasks=args.tasks,
        triton_url=args.triton_url,
        workers=args.workers,
        seed0=args.seed0,
        painter=args.painter,
    )
    t = _summary_table(
        f"Independent look, painter {args.painter}: production path",
        [h for h, _ in results],
        [f"{sum(r == h.task for r in routes)}/{len(routes)}" for h, routes in results],
    )
    console = Console()
    console.print(t)
    console.print("Synthetic phantoms from an independent generator; not for clinical use.")
    console.print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_models_commands(subparsers: Any) -> None:
    """Register ``models train``, ``validate``, ``stress``, ``controls`` and ``crosscheck``."""
    models = subparsers.add_parser(
        "models", help="train / validate the ich and pe models (synthetic phantoms)"
    ).add_subparsers(dest="models_cmd")
    p = models.add_parser("train", help="regenerate phantoms from fixed seeds, train, export ONNX")
    p.add_argument("--tasks", type=_tasks, default=("ich", "pe"), help="ich,pe (both)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument("--n-train", type=int, default=700, help="training phantoms per task (700)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps per task (default: 5000 each)",
    )
    p.add_argument("--workers", type=int, default=2, help="phantom generator processes (2)")
    p.add_argument("--cache-dir", default="var/training-cache", help="phantom cache ('' for none)")
    p.add_argument(
        "--front",
        choices=("fixed", "contrast", "learned", "enclosure", "lumen"),
        default=None,
        help="fixed feature channels of the network (default: each task's shipped one)",
    )
    p.add_argument(
        "--generator",
        type=int,
        choices=GENERATORS,
        default=None,
        help="phantom generator (triage/synth/ct; default: each task's shipped model's)",
    )
    p.add_argument(
        "--second",
        type=int,
        default=None,
        help="training phantoms from the second, independently written painter, on top of "
        "--n-train (triage/crosscheck head.py/chest.py; default: each task's shipped model's)",
    )
    p.add_argument(
        "--faint-calcifications",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of the augmented training phantoms whose calcifications inside the skull "
        "are made faint (0-1; default: each task's shipped model's)",
    )
    p.set_defaults(func=_cmd_train)
    p = models.add_parser(
        "validate",
        help="held-out phantoms as DICOM through the engine (checks, Triton); ledger; report",
    )
    p.add_argument("--tasks", type=_tasks, default=("ich", "pe"), help="ich,pe (both)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument("--n", type=int, default=200, help="held-out studies per task (200)")
    p.add_argument(
        "--out",
        default=str(DEFAULT_HELDOUT_REPORT),
        help="report folder (docs/models, beside the ledger: the held-out set is scored once)",
    )
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument("--workers", type=int, default=2, help="DICOM writer processes (2)")
    p.add_argument(
        "--ledger",
        default=str(DEFAULT_LEDGER),
        help="held-out ledger, appended by every run (docs/models/ledger.jsonl)",
    )
    p.add_argument(
        "--again",
        default=None,
        metavar="REASON",
        help="score a model version already in the ledger again; the reason is recorded",
    )
    p.add_argument(
        "--no-in-memory",
        action="store_true",
        help="skip scoring each phantom through the in-memory path as well",
    )
    p.set_defaults(func=_cmd_validate)
    p = models.add_parser(
        "stress", help="frozen stress suite: perturbed phantoms at the shipped operating point"
    )
    p.add_argument("--tasks", type=_tasks, default=("ich", "pe"), help="ich,pe (both)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument("--per-class", type=int, default=20, help="positives = negatives per task (20)")
    p.add_argument(
        "--out",
        default=SCRATCH_REPORT,
        help="report folder (var/validation; --out docs/models publishes the report)",
    )
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument("--onnx", action="store_true", help="onnxruntime in process, not Triton")
    p.add_argument("--workers", type=int, default=2, help="phantom generator processes (2)")
    p.add_argument("--only", default="", help="comma-separated perturbation names (all)")
    p.set_defaults(func=_cmd_stress)
    p = models.add_parser(
        "controls", help="the real series of the shared data through the engine; report"
    )
    p.add_argument(
        "--tasks",
        type=_tasks,
        default=("ich", "pe"),
        help="ich,pe (both): the models whose controls are run; the others' stay in the report",
    )
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument(
        "--out",
        default=SCRATCH_REPORT,
        help="report folder (var/validation; --out docs/models publishes the report)",
    )
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data" / "dicom"), help="real DICOM"
    )
    p.set_defaults(func=_cmd_controls)
    p = models.add_parser(
        "crosscheck",
        help="independent generator's studies as DICOM through the engine (routing, checks, "
        "Triton); report",
    )
    p.add_argument("--tasks", type=_tasks, default=("ich", "pe"), help="ich,pe (both)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument("--n", type=int, default=40, help="studies per task, half positive (40)")
    p.add_argument("--seed0", type=int, default=9_000_000, help="first seed (9000000)")
    p.add_argument(
        "--out",
        default=SCRATCH_REPORT,
        help="report folder (var/validation; --out docs/models publishes the report)",
    )
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument("--workers", type=int, default=2, help="painter processes (2)")
    p.add_argument(
        "--painter",
        choices=("a", "b"),
        default="b",
        help="which independent painter (b: never trained on; a: may train a model)",
    )
    p.set_defaults(func=_cmd_crosscheck)
