"""The frozen stress suite: ``triage models stress``.

For each task, phantoms from a dedicated seed range (:data:`STRESS_SEED0`, disjoint from
training, tuning and both held-out ranges; half positive, every lesion kind and mimic in
turn), each scored as generated and under every perturbation of
:mod:`triage.training.perturb` (singles and combinations), at the shipped operating point
(``threshold`` in ``models/<task>/config.pbtxt``).

Each phantom is made on its **acquired slices** at the model's in-plane resolution (the
generator's in-memory path asked for one model slice per acquired slice: painted at 512 x 512
and area-averaged, as the engine averages a 512 series), perturbed there, then taken to the
model grid by the engine's own :func:`~triage.inference.volume.resample` (the contract's
``z_resampling``), and scored through Triton (the engine's
:class:`~triage.inference.client.InferenceClient`) or, with ``--onnx``, the same ONNX in
process with onnxruntime (same numbers to ~1e-4). The DICOM round trip and the input checks
are left out here (they are what ``triage models validate`` measures); a perturbation that
would make a real series not assessable (e.g. thick slices past the contract's limit) is
still scored, to see what the model alone does.

Targets (single perturbations): sensitivity >= 0.85 and specificity >= 0.85 under each.
Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from triage.training import metrics
from triage.training.data import trained_generator
from triage.training.perturb import COMBINATIONS, Perturbation, Scan, suite

# Seeds 7,000,000+: never used for training (1,000,000+), tuning (3,000,000+) or either
# held-out set (5,000,000+, 6,000,000+). Frozen: the suite's figures are comparable across
# model versions only as long as these seeds, the perturbations and their strengths stay.
STRESS_SEED0 = 7_000_000
STRESS_TARGET = 0.85
REFERENCE = "none"


class Scorer(Protocol):
    def probability(self, task: str, volume: np.ndarray) -> float: ...


class OnnxScorer:
    """The shipped ``models/<task>/1/model.onnx`` run in process by onnxruntime (no torch)."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir
        self._sessions: dict[str, Any] = {}

    def probability(self, task: str, volume: np.ndarray) -> float:
        if task not in self._sessions:
            import onnxruntime as ort

            path = self.models_dir / task / "1" / "model.onnx"
            self._sessions[task] = ort.InferenceSession(
                str(path), providers=["CPUExecutionProvider"]
            )
        v = np.ascontiguousarray(volume, dtype=np.float32)[None]
        return float(self._sessions[task].run(["probability"], {"volume": v})[0].reshape(-1)[0])


class ClientScorer:
    """Through Triton with the engine's InferenceClient."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def probability(self, task: str, volume: np.ndarray) -> float:
        return float(self.client.infer(task, np.asarray(volume, dtype=np.float32)).probability)


@dataclass
class Condition:
    name: str
    kind: str  # reference, single, combination
    description: str
    probs: list[float] = field(default_factory=list)


@dataclass
class TaskStress:
    task: str
    model_version: str
    threshold: float
    seeds: list[int]
    labels: list[bool]
    conditions: list[Condition]
    seconds: float = 0.0

    def rows(self) -> list[dict[str, Any]]:
        y = np.array(self.labels, bool)
        ref = np.array(self.conditions[0].probs)
        ref_flag = ref >= self.threshold
        out = []
        for c in self.conditions:
            p = np.array(c.probs)
            op = metrics.operating_point(p, y, self.threshold)
            single = c.kind == "single"
            out.append(
                {
                    "name": c.name,
                    "kind": c.kind,
                    "description": c.description,
                    "tp": op.tp,
                    "fn": op.fn,
                    "tn": op.tn,
                    "fp": op.fp,
                    "sensitivity": op.sensitivity,
                    "specificity": op.specificity,
                    "false_alerts_per_study": op.fp_per_study,
                    "auc": metrics.auc(p, y),
                    "mean_prob_shift_neg": float(np.mean(p[~y] - ref[~y])) if (~y).any() else 0.0,
                    "mean_prob_shift_pos": float(np.mean(p[y] - ref[y])) if y.any() else 0.0,
                    "decisions_changed": int(((p >= self.threshold) != ref_flag).sum()),
                    "meets_target": (
                        bool(op.sensitivity >= STRESS_TARGET and op.specificity >= STRESS_TARGET)
                        if single or c.kind == REFERENCE
                        else None
                    ),
                }
            )
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "n": len(self.labels),
            "positives": int(sum(self.labels)),
            "seeds": [min(self.seeds), max(self.seeds)] if self.seeds else [],
            "seconds": self.seconds,
            "rows": self.rows(),
            "probabilities": {c.name: c.probs for c in self.conditions},
            "labels": self.labels,
        }


def base_scan(task: str, seed: int, spec: Any, in_plane: int) -> Scan:
    """The phantom's acquired slices at ``in_plane`` x ``in_plane`` (HU)."""
    from triage.synth.ct import model_sample

    s = model_sample(spec, seed, (spec.n_slices, in_plane, in_plane))
    z = np.arange(spec.n_slices, dtype=np.float64) * spec.slice_thickness
    return Scan(
        hu=s.volume.astype(np.float32),
        z=z,
        pixel_mm=spec.fov_mm / in_plane,
        thickness=float(spec.slice_thickness),
    )


def _job(args: tuple[str, int, Any, int]) -> tuple[int, bool, Scan]:
    task, seed, spec, in_plane = args
    return seed, bool(spec.label), base_scan(task, seed, spec, in_plane)


def to_model_grid(scan: Scan, shape: tuple[int, int, int], z_mode: str) -> np.ndarray:
    from triage.inference.volume import Volume, resample

    v = Volume(
        hu=scan.hu,
        z_positions=np.asarray(scan.z, np.float64),
        pixel_spacing=(scan.pixel_mm, scan.pixel_mm),
        slice_thickness=scan.thickness,
        series_uid="",
    )
    return resample(v, shape, z_mode)


def _scans(
    task: str,
    seeds: Sequence[int],
    in_plane: int,
    workers: int,
    specs: Sequence[Any] | None = None,
    generator: int = 3,
) -> Iterator[tuple[int, bool, Scan]]:
    from triage.synth.ct import spec_set

    if specs is None:
        specs = spec_set(task, list(seeds), 0.5, generator)  # type: ignore[arg-type]
    jobs = [(task, s, spec, in_plane) for s, spec in zip(seeds, specs, strict=True)]
    workers = max(1, min(workers, os.cpu_count() or 1))
    if workers == 1:
        yield from map(_job, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_job, jobs)


def stress_task(
    task: str,
    models_dir: Path,
    scorer: Scorer,
    *,
    per_class: int = 20,
    workers: int = 2,
    names: Sequence[str] | None = None,
    advance: Callable[[int], None] | None = None,
    scans: Iterable[tuple[int, bool, Scan]] | None = None,
) -> TaskStress:
    """Score ``2 * per_class`` stress phantoms of ``task`` under every perturbation
    (``scans``: (seed, label, scan) to use instead of the phantoms, for tests)."""
    from triage.inference.contract import load_contract

    t0 = time.monotonic()
    contract = load_contract(models_dir / task / "config.pbtxt")
    shape = contract.input_shape
    perts: list[Perturbation] = [p for p in suite(task) if names is None or p.name in names]
    combos = {p.name for p in COMBINATIONS}
    conditions = [Condition(REFERENCE, REFERENCE, "as generated")] + [
        Condition(p.name, "combination" if p.name in combos else "single", p.description)
        for p in perts
    ]
    seeds = list(range(STRESS_SEED0, STRESS_SEED0 + 2 * per_class))
    res = TaskStress(task, contract.version, contract.threshold, [], [], conditions)
    if scans is None:
        # painted by the generator the model learned from (its training.json)
        scans = _scans(
            task, seeds, shape[2], workers, generator=trained_generator(models_dir, task)
        )
    for seed, label, scan in scans:
        res.seeds.append(seed)
        res.labels.append(label)
        vol = to_model_grid(scan, shape, contract.z_resampling)
        conditions[0].probs.append(scorer.probability(task, vol))
        for cond, p in zip(conditions[1:], perts, strict=True):
            vol = to_model_grid(p.apply(scan, seed), shape, contract.z_resampling)
            cond.probs.append(scorer.probability(task, vol))
        if advance is not None:
            advance(len(conditions))
    res.seconds = time.monotonic() - t0
    return res


def conditions_for(task: str, names: Sequence[str] | None = None) -> int:
    return 1 + sum(1 for p in suite(task) if names is None or p.name in names)


def run_stress(
    models_dir: Path,
    out_dir: Path,
    *,
    tasks: Sequence[str] = ("ich", "pe"),
    per_class: int = 20,
    triton_url: str | None = None,
    onnx: bool = False,
    workers: int = 2,
    names: Sequence[str] | None = None,
    progress: bool = True,
) -> list[TaskStress]:
    """Run the suite and write ``stress.json``, ``stress_<task>.png`` and the report."""
    import tempfile

    from triage.training.validate import git_commit, progress_bar, write_report

    commit = git_commit()  # the code that scores, taken before the run
    results: list[TaskStress] = []
    total = sum(2 * per_class * conditions_for(t, names) for t in tasks)
    with (
        progress_bar(progress) as bar,
        tempfile.TemporaryDirectory(prefix="triage-triton-") as work,
    ):
        job = bar.add_task("stress suite (inferences)", total=total)

        def advance(k: int) -> None:
            bar.advance(job, k)

        server = client = None
        try:
            if onnx:
                scorer: Scorer = OnnxScorer(models_dir)
            else:
                from triage.inference.client import InferenceClient
                from triage.inference.local_triton import LocalTriton

                if triton_url is None:
                    server = LocalTriton(models_dir, Path(work), startup_seconds=120)
                    triton_url = server.start()
                client = InferenceClient(triton_url, "grpc", timeout=60, models_dir=models_dir)
                scorer = ClientScorer(client)
            for task in tasks:
                bar.update(job, description=f"stress suite: {task}")
                results.append(
                    stress_task(
                        task,
                        models_dir,
                        scorer,
                        per_class=per_class,
                        workers=workers,
                        names=names,
                        advance=advance,
                    )
                )
        finally:
            if client is not None:
                client.close()
            if server is not None:
                server.stop()
    write_stress(out_dir, results, scorer="onnxruntime" if onnx else "Triton", commit=commit)
    write_report(out_dir)
    return results


def write_stress(
    out_dir: Path, results: list[TaskStress], scorer: str = "Triton", commit: str | None = None
) -> Path:
    """``stress.json`` (the other tasks' results kept), its plots; ``commit``: the code that
    scored them (None: the checkout's now)."""
    from triage.training.plot import bars_png
    from triage.training.validate import git_commit, merged_results

    out_dir.mkdir(parents=True, exist_ok=True)
    for r in results:
        rows = r.rows()
        bars_png(
            out_dir / f"stress_{r.task}.png",
            [[row["sensitivity"], row["specificity"]] for row in rows],
            [(200, 60, 40), (40, 90, 200)],
            target=STRESS_TARGET,
        )
    path = out_dir / "stress.json"
    payload = {
        "note": "synthetic phantoms; not for clinical use",
        "date": time.strftime("%Y-%m-%d"),
        "scorer": scorer,
        "commit": commit or git_commit(),  # the generator's and the models' code
        "seed0": STRESS_SEED0,
        "target": STRESS_TARGET,
        "results": merged_results(path, [r.as_json() for r in results]),
    }
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    return path


def stress_table(payload: dict[str, Any]) -> Any:
    """A rich Table of ``stress.json``'s rows (both tasks side by side per perturbation)."""
    from rich.table import Table

    t = Table(title="Stress suite at the shipped operating points (synthetic phantoms)")
    t.add_column("perturbation")
    results = payload["results"]
    for r in results:
        t.add_column(f"{r['task']} sens", justify="right")
        t.add_column(f"{r['task']} spec", justify="right")
        t.add_column(f"{r['task']} FA/study", justify="right")
    names: list[str] = []
    for r in results:
        names += [row["name"] for row in r["rows"] if row["name"] not in names]
    for name in names:
        cells = [name]
        for r in results:
            row = next((x for x in r["rows"] if x["name"] == name), None)
            if row is None:
                cells += ["-", "-", "-"]
                continue
            judged = row["meets_target"] is not None

            def mark(v: float, judged: bool = judged) -> str:
                text = f"{v:.2f}"
                if judged and not v >= STRESS_TARGET:
                    return f"[bold red]{text}[/]"
                return text

            cells += [
                mark(row["sensitivity"]),
                mark(row["specificity"]),
                f"{row['false_alerts_per_study']:.2f}",
            ]
        t.add_row(*cells)
    return t
