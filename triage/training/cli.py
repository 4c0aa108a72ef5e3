"""``triage models train`` and ``triage models validate`` (registered by
:func:`add_models_commands`). Trained on synthetic phantoms; not for clinical use."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODELS = REPO / "models"


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
    )
    for r in results:
        print(
            f"{r.task}: {r.seconds:.0f} s, {r.steps} steps, threshold {r.threshold:.4f} "
            f"(tuning sensitivity {r.tune_sensitivity:.2f}, specificity "
            f"{r.tune_specificity:.2f}) -> {r.onnx_path}"
        )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    _logging()
    from triage.training.validate import validate

    results = validate(
        Path(args.models_dir),
        Path(args.out),
        n=args.n,
        tasks=args.tasks,
        triton_url=args.triton_url,
        workers=args.workers,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        dicom_per_class=args.dicom,
    )
    print("Validation on held-out synthetic phantoms; not for clinical use.")
    for r in results:
        op = r.op
        print(
            f"{r.task}: AUC {r.auc:.3f} ({r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}), sensitivity "
            f"{op.sensitivity:.3f}, specificity {op.specificity:.3f}, FP/study "
            f"{op.fp_per_study:.3f} at threshold {r.threshold:.4f}"
        )
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def add_models_commands(subparsers: Any) -> None:
    """Register ``models train`` and ``models validate`` on the top-level subparsers."""
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
        help="optimiser steps per task (default: ich 3000, pe 5000)",
    )
    p.add_argument("--workers", type=int, default=2, help="phantom generator processes (2)")
    p.add_argument("--cache-dir", default="var/training-cache", help="phantom cache ('' for none)")
    p.set_defaults(func=_cmd_train)
    p = models.add_parser("validate", help="held-out phantoms through Triton; Markdown report")
    p.add_argument("--tasks", type=_tasks, default=("ich", "pe"), help="ich,pe (both)")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS), help="model repository")
    p.add_argument("--n", type=int, default=200, help="held-out studies per task (200)")
    p.add_argument("--out", default="var/validation", help="report folder")
    p.add_argument("--triton-url", default=None, help="host:port of a running Triton (gRPC)")
    p.add_argument("--workers", type=int, default=2, help="phantom generator processes (2)")
    p.add_argument("--cache-dir", default="", help="phantom cache ('' for none)")
    p.add_argument(
        "--dicom",
        type=int,
        default=6,
        help="positives and negatives per task also run the full DICOM way (6)",
    )
    p.set_defaults(func=_cmd_validate)
