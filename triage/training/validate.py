"""Held-out validation through the real Triton: ``triage models validate``.

For each task: phantoms with seeds never used in training or tuning
(:data:`~triage.training.data.VALID_SEED0` + i, about 30 % positive, every lesion kind and
mimic), run through Triton (:class:`~triage.inference.local_triton.LocalTriton` started on the
model repository unless a URL is given) with the engine's
:class:`~triage.inference.client.InferenceClient`; a subset also goes the full DICOM way
(write_study -> load_volume -> resample -> Triton). The report (Markdown + ROC PNG + JSON)
gives AUC with a 95 % bootstrap interval, sensitivity / specificity at the operating point
stored in ``config.pbtxt``, PPV at 5 % and 15 % prevalence, false positives per study,
sensitivity by lesion kind and size, specificity by mimic, calibration and localisation.

Synthetic phantoms only: these numbers say how well the models separate *our phantoms*; they
say nothing about patients. Not for clinical use.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage.synth.ct import CTPA_MIMICS, EMBOLUS_LEVELS, HEAD_MIMICS, HEMORRHAGE_SUBTYPES, Task
from triage.training import metrics
from triage.training.data import LOC_SHAPE, VALID_SEED0, Dataset, generate
from triage.training.plot import roc_png

log = logging.getLogger(__name__)

DISCLAIMER = (
    "**Trained on synthetic phantoms; not for clinical use.** These numbers measure how well "
    "the models separate the generator's phantoms (triage/synth/ct.py), not patients."
)
TARGETS = {"auc": 0.95, "sensitivity": 0.90, "specificity": 0.85, "fp_per_study": 0.5}
SIZE_BINS = ((0.0, 5.0), (5.0, 10.0), (10.0, 20.0), (20.0, 1e9))
COLOURS = {"ich": (200, 30, 30), "pe": (30, 80, 200)}


@dataclass
class TaskResult:
    task: Task
    n: int
    positives: int
    threshold: float
    model_version: str
    auc: float
    auc_ci: tuple[float, float]
    op: metrics.OperatingPoint
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind: (detected, n)
    by_size: dict[str, tuple[int, int]] = field(default_factory=dict)
    by_mimic: dict[str, tuple[int, int]] = field(default_factory=dict)  # mimic: (correct neg, n)
    calibration: list[tuple[float, float, int, float, float]] = field(default_factory=list)
    key_slice_hits: tuple[int, int] = (0, 0)
    loc_hits: tuple[int, int] = (0, 0)
    dicom: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    roc: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))

    def as_json(self) -> dict[str, Any]:
        op = self.op
        return {
            "task": self.task,
            "n": self.n,
            "positives": self.positives,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "auc": self.auc,
            "auc_ci95": list(self.auc_ci),
            "sensitivity": op.sensitivity,
            "specificity": op.specificity,
            "ppv_5pct": op.ppv_at(0.05),
            "ppv_15pct": op.ppv_at(0.15),
            "fp_per_study": op.fp_per_study,
            "tp": op.tp,
            "fp": op.fp,
            "tn": op.tn,
            "fn": op.fn,
            "by_kind": self.by_kind,
            "by_size": self.by_size,
            "by_mimic": self.by_mimic,
            "calibration": self.calibration,
            "key_slice_hits": list(self.key_slice_hits),
            "localization_hits": list(self.loc_hits),
            "dicom_path": self.dicom,
            "seconds": self.seconds,
        }


def _infer_all(
    client: Any, task: str, volumes: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, str]:
    probs = np.zeros(len(volumes), np.float64)
    keys = np.zeros(len(volumes), np.int64)
    version = ""
    for i, v in enumerate(volumes):
        out = client.infer(task, np.asarray(v, dtype=np.float32))
        probs[i], keys[i], version = out.probability, out.key_slice, out.model_version
    return probs, keys, version


def _localization(models_dir: Path, task: str, volumes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Localisation maps of the studies ``idx`` from the same ONNX, in process."""
    import onnxruntime as ort

    sess = ort.InferenceSession(
        str(models_dir / task / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    maps = np.zeros((len(idx), *LOC_SHAPE), np.float32)
    for j, i in enumerate(idx):
        v = np.asarray(volumes[i], dtype=np.float32)[None]
        maps[j] = sess.run(["localization"], {"volume": v})[0][0]
    return maps


def _dicom_subset(
    client: Any, task: Task, ds: Dataset, probs: np.ndarray, k: int
) -> dict[str, Any]:
    """Run the first ``k`` positives and ``k`` negatives the full DICOM way."""
    from triage.inference.volume import load_volume, resample
    from triage.synth.ct import spec_set, write_study

    if k <= 0:
        return {}
    specs = spec_set(task, [int(s) for s in ds.seeds], 0.3)
    pos = [i for i in range(len(ds)) if ds.labels[i] > 0.5][:k]
    neg = [i for i in range(len(ds)) if ds.labels[i] <= 0.5][:k]
    diffs, agree, tp, tn = [], 0, 0, 0
    with tempfile.TemporaryDirectory(prefix="triage-validate-") as tmp:
        for i in pos + neg:
            study = write_study(
                Path(tmp) / str(i),
                specs[i],
                seed=int(ds.seeds[i]),
                patient_id=f"V{i}",
                accession=f"VAL{i}",
            )
            contract = client.contract(task)
            vol = resample(load_volume(study.files), contract.input_shape, contract.z_resampling)
            p = client.infer(task, vol).probability
            diffs.append(abs(p - probs[i]))
            thr = client.contract(task).threshold
            agree += int((p >= thr) == (probs[i] >= thr))
            if ds.labels[i] > 0.5:
                tp += int(p >= thr)
            else:
                tn += int(p < thr)
            for f in study.files:
                f.unlink()
    return {
        "studies": len(diffs),
        "mean_abs_prob_diff": float(np.mean(diffs)),
        "max_abs_prob_diff": float(np.max(diffs)),
        "same_decision": agree,
        "positives": len(pos),
        "true_positives": tp,
        "negatives": len(neg),
        "true_negatives": tn,
    }


def validate_task(
    task: Task,
    client: Any,
    models_dir: Path,
    n: int,
    workers: int,
    cache_dir: Path | None,
    dicom_per_class: int,
) -> TaskResult:
    t0 = time.monotonic()
    ds = generate(task, VALID_SEED0, n, 0.3, workers, cache_dir)
    log.info(
        "%s: %d held-out phantoms ready (%.0f s); inferring through Triton",
        task,
        n,
        time.monotonic() - t0,
    )
    probs, keys, version = _infer_all(client, task, [ds.volumes[i] for i in range(len(ds))])
    thr = client.contract(task).threshold
    y = ds.labels > 0.5
    res = TaskResult(
        task=task,
        n=len(ds),
        positives=int(y.sum()),
        threshold=thr,
        model_version=version,
        auc=metrics.auc(probs, ds.labels),
        auc_ci=metrics.auc_ci(probs, ds.labels),
        op=metrics.operating_point(probs, ds.labels, thr),
        calibration=metrics.calibration(probs, ds.labels),
        roc=metrics.roc_curve(probs, ds.labels),
    )
    flag = probs >= thr
    kinds = HEMORRHAGE_SUBTYPES if task == "ich" else EMBOLUS_LEVELS
    for kind in kinds:
        sel = np.array([kind in s for s in ds.subtypes])
        res.by_kind[kind] = (int((flag & sel).sum()), int(sel.sum()))
    for lo, hi in SIZE_BINS:
        sel = y & (ds.lesion_size_mm >= lo) & (ds.lesion_size_mm < hi)
        name = f">= {lo:g} mm" if hi > 1e8 else f"{lo:g}-{hi:g} mm"
        res.by_size[name] = (int((flag & sel).sum()), int(sel.sum()))
    for mimic in HEAD_MIMICS if task == "ich" else CTPA_MIMICS:
        sel = ~y & np.array([mimic in m for m in ds.mimics])
        res.by_mimic[mimic] = (int((~flag & sel).sum()), int(sel.sum()))
    pos_idx = np.flatnonzero(y)
    hits = sum(int(ds.slice_targets[i, max(0, keys[i] - 2) : keys[i] + 3].any()) for i in pos_idx)
    res.key_slice_hits = (hits, int(pos_idx.size))
    maps = _localization(models_dir, task, ds.volumes, pos_idx)
    loc_hits = 0
    for j, i in enumerate(pos_idx):
        z, yy, x = np.unravel_index(int(np.argmax(maps[j])), LOC_SHAPE)
        t = ds.loc_targets[i]
        loc_hits += int(
            t[max(0, z - 1) : z + 2, max(0, yy - 1) : yy + 2, max(0, x - 1) : x + 2].any()
        )
    res.loc_hits = (loc_hits, int(pos_idx.size))
    res.dicom = _dicom_subset(client, task, ds, probs, dicom_per_class)
    res.seconds = time.monotonic() - t0
    return res


def _pct(k: int, n: int) -> str:
    if n == 0:
        return "- (0)"
    lo, hi = metrics.wilson(k, n)
    return f"{k / n:.2f} ({k}/{n}; {lo:.2f}-{hi:.2f})"


def _ok(value: float, target: float, higher: bool = True) -> str:
    good = value >= target if higher else value <= target
    return "met" if good else "**not met**"


def report_markdown(results: list[TaskResult], png_names: dict[str, str]) -> str:
    lines = ["# Model validation on held-out synthetic phantoms", "", DISCLAIMER, ""]
    lines += [
        f"Held-out seeds start at {VALID_SEED0} (training uses 1,000,000+, tuning 3,000,000+); "
        "each study goes through the real Triton server (gRPC, the engine's InferenceClient). "
        "Proportions show the Wilson 95 % interval.",
        "",
        "| | " + " | ".join(r.task for r in results) + " | target |",
        "|---|" + "---|" * len(results) + "---|",
    ]

    def row(name: str, cells: list[str], target: str) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    row("model version", [r.model_version for r in results], "")
    row("studies (positive)", [f"{r.n} ({r.positives})" for r in results], ">= 200, ~30 %")
    row(
        "AUC (95 % bootstrap CI)",
        [
            f"{r.auc:.3f} ({r.auc_ci[0]:.3f}-{r.auc_ci[1]:.3f}) {_ok(r.auc, TARGETS['auc'])}"
            for r in results
        ],
        ">= 0.95",
    )
    row("operating point (threshold)", [f"{r.threshold:.4f}" for r in results], "config.pbtxt")
    row(
        "sensitivity",
        [_pct(r.op.tp, r.op.tp + r.op.fn) + " " + _ok(r.op.sensitivity, 0.9) for r in results],
        ">= 0.90",
    )
    row(
        "specificity",
        [_pct(r.op.tn, r.op.tn + r.op.fp) + " " + _ok(r.op.specificity, 0.85) for r in results],
        ">= 0.85",
    )
    row("PPV at 5 % prevalence", [f"{r.op.ppv_at(0.05):.2f}" for r in results], "")
    row("PPV at 15 % prevalence", [f"{r.op.ppv_at(0.15):.2f}" for r in results], "")
    row(
        "false positives per study",
        [f"{r.op.fp_per_study:.3f} " + _ok(r.op.fp_per_study, 0.5, False) for r in results],
        "<= 0.5",
    )
    row("key slice within 2 slices of the lesion", [_pct(*r.key_slice_hits) for r in results], "")
    row("localisation peak within 1 cell of the lesion", [_pct(*r.loc_hits) for r in results], "")
    lines += [
        "",
        "False positives per study = studies flagged positive without a lesion / all "
        "studies (one finding per study; the engine reports at most one per model).",
        "",
    ]
    for r in results:
        lines += [
            f"## {r.task}",
            "",
            f"![ROC {r.task}]({png_names[r.task]})",
            "",
            f"ROC curve (x: 1 - specificity, y: sensitivity; grey: chance; dot: operating "
            f"point {r.threshold:.4f}).",
            "",
            "| lesion kind | sensitivity |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in r.by_kind.items()]
        lines += ["", "| lesion size (equivalent diameter) | sensitivity |", "|---|---|"]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in r.by_size.items()]
        lines += ["", "| negatives with mimic | specificity |", "|---|---|"]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in r.by_mimic.items()]
        lines += [
            "",
            "Calibration:",
            "",
            "| predicted probability | studies | mean predicted | observed positive |",
            "|---|---|---|---|",
        ]
        for lo, hi, n, mp, obs in r.calibration:
            lines.append(
                f"| {lo:.1f}-{hi:.1f} | {n} | {mp:.2f} | {obs:.2f} |"
                if n
                else f"| {lo:.1f}-{hi:.1f} | 0 | - | - |"
            )
        if r.dicom:
            d = r.dicom
            lines += [
                "",
                f"Full DICOM path on {d['studies']} of these studies (512 x 512 series "
                f"-> load_volume -> resample -> Triton): same decision in "
                f"{d['same_decision']}/{d['studies']}, mean |probability difference| vs the "
                f"in-memory path {d['mean_abs_prob_diff']:.3f} (max {d['max_abs_prob_diff']:.3f}); "
                f"right on the DICOM path: {d.get('true_positives', '-')}/"
                f"{d.get('positives', '-')} positives flagged, {d.get('true_negatives', '-')}/"
                f"{d.get('negatives', '-')} negatives not flagged.",
            ]
        lines += ["", f"({r.seconds:.0f} s)", ""]
    return "\n".join(lines) + "\n"


def validate(
    models_dir: Path,
    out_dir: Path,
    *,
    n: int = 200,
    tasks: Sequence[Task] = ("ich", "pe"),
    triton_url: str | None = None,
    workers: int = 2,
    cache_dir: Path | None = None,
    dicom_per_class: int = 6,
) -> list[TaskResult]:
    """Validate ``tasks`` and write ``report.md``, ``roc_<task>.png`` and ``results.json``."""
    from triage.inference.client import InferenceClient
    from triage.inference.local_triton import LocalTriton

    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[TaskResult] = []
    with tempfile.TemporaryDirectory(prefix="triage-triton-") as work:
        server = None
        if triton_url is None:
            server = LocalTriton(models_dir, Path(work), startup_seconds=120)
            triton_url = server.start()
        try:
            with InferenceClient(triton_url, "grpc", timeout=60, models_dir=models_dir) as client:
                for task in tasks:
                    results.append(
                        validate_task(
                            task, client, models_dir, n, workers, cache_dir, dicom_per_class
                        )
                    )
        finally:
            if server is not None:
                server.stop()
    pngs: dict[str, str] = {}
    for r in results:
        fpr = 1.0 - r.op.specificity
        pngs[r.task] = f"roc_{r.task}.png"
        roc_png(
            out_dir / pngs[r.task],
            [(r.roc[0], r.roc[1], COLOURS.get(r.task, (0, 0, 0)))],
            [(fpr, r.op.sensitivity, (0, 0, 0))],
        )
    (out_dir / "report.md").write_text(report_markdown(results, pngs), encoding="utf-8")
    (out_dir / "results.json").write_text(
        json.dumps(
            {
                "note": "synthetic phantoms; not for clinical use",
                "results": [r.as_json() for r in results],
            },
            indent=1,
            default=float,
        )
        + "\n",
        encoding="utf-8",
    )
    return results
