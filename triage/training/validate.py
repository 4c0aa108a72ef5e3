"""Held-out validation through the production path: ``triage models validate``.

For each task: phantoms with seeds never used for training, tuning, the stress suite or any
earlier validation (:data:`HELDOUT_SEED0` + i, 30 % positive, every lesion kind and mimic in
turn), each **written as a DICOM series** (512 x 512, :func:`triage.synth.ct.write_study`, a
process pool writes ahead) and taken by the engine's own code:
:meth:`TritonAnalyzer.analyze <triage.inference.analyze.TritonAnalyzer.analyze>` - series
selection, ``load_volume``, ``resample``, the input checks (``check_input``) and the real
Triton (:class:`~triage.inference.local_triton.LocalTriton` started on the model repository
unless a URL is given). Each study ends as the worklist would show it: positive, negative or
**not assessable** with its reasons. A not-assessable positive counts as a miss; a
not-assessable negative is not a false alert, and both are counted and reported. The same
phantom through the in-memory path (model grid directly) is scored as well, to show how far
the two paths agree.

Held-out discipline: every run is appended to the ledger (``docs/models/ledger.jsonl``, and
``ledger.md`` rendered from it) with date, git commit, model version, n and metrics; a second
held-out run of a model version already in the ledger for this seed range is refused unless
``again`` gives a reason, which is recorded.

The report (``report.md`` in the output folder, with ROC, reliability and stress PNGs) is
rendered from ``heldout.json``, ``stress.json`` and ``controls.json`` - whichever are there -
by :func:`write_report`; ``triage models stress`` and ``validate`` both regenerate it.

Synthetic phantoms only: these numbers say how well the models separate *our phantoms*; they
say nothing about patients. Not for clinical use.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from triage.errors import HeldOutRefused as HeldOutRefused
from triage.errors import TriageError
from triage.training import metrics
from triage.training.data import trained_generator

if TYPE_CHECKING:
    from rich.progress import Progress

    from triage.inference.analyze import TritonAnalyzer
    from triage.inference.client import InferenceClient

log = logging.getLogger(__name__)
J = TypeVar("J")
W = TypeVar("W", bound=tuple[Any, ...])  # a job whose first item is its study's folder
A = TypeVar("A")

REPO = Path(__file__).resolve().parents[2]
# Fresh held-out range. The old one (triage.training.data.VALID_SEED0, 5,000,000+) was scored
# several times (each adopted model, and the first models at two operating points: see the
# ledger) and its figures are in docs/models.md; it is no longer the held-out set. 6,000,000+
# held ich-synthcnn-3.1's one scoring (generator 3); from ich-synthcnn-4.0 (head generator 4,
# 2026-12-07) the held-out set is 8,000,000+, never drawn before.
HELDOUT_SEED0 = 8_000_000
POSITIVE_FRACTION = 0.3
DEFAULT_LEDGER = REPO / "docs" / "models" / "ledger.jsonl"
DEFAULT_CONTROLS_DATA = REPO.parent / "shared" / "data" / "dicom"  # real series (controls)
DISCLAIMER = (
    "**Trained on synthetic phantoms; not for clinical use.** These numbers measure how well "
    "the models separate the generator's phantoms (triage/synth/ct/), not patients."
)
TARGETS = {
    "auc": 0.95,
    "sensitivity": 0.90,
    "specificity": 0.85,
    "false_alerts_per_study": 0.5,
    "ece": 0.05,
}
COLOURS = {"ich": (200, 30, 30), "pe": (30, 80, 200)}


# -- per-study records ------------------------------------------------------------------------


@dataclass
class StudyResult:
    seed: int
    label: bool
    kinds: list[str]
    mimics: list[str]
    status: str  # done, not_assessable
    probability: float | None
    positive: bool
    detail: str = ""
    reasons: list[str] = field(default_factory=list)  # not assessable: each on its own
    probability_in_memory: float | None = None
    key_slice: int | None = None  # index in the series, 0 = most inferior
    lesion_instances: list[int] = field(default_factory=list)
    key_instance: int | None = None  # the key slice's InstanceNumber

    @classmethod
    def of(
        cls,
        seed: int,
        label: bool,
        kinds: Sequence[str],
        mimics: Sequence[str],
        analysis: Any,
        lesion_instances: Sequence[int],
        probability_in_memory: float | None = None,
    ) -> StudyResult:
        """The record of one study from the engine's :class:`~triage.ports.Analysis` of it
        and what is true about it."""
        a = analysis
        return cls(
            seed=seed,
            label=label,
            kinds=list(kinds),
            mimics=list(mimics),
            status=a.status,
            probability=a.probability,
            positive=bool(a.status == "done" and a.positive),
            detail=a.detail,
            reasons=list(a.reasons),
            probability_in_memory=probability_in_memory,
            key_slice=a.key_slice,
            lesion_instances=list(lesion_instances),
            key_instance=a.key_instance,
        )

    @property
    def key_number(self) -> int | None:
        """The key slice as an InstanceNumber (what ``lesion_instances`` hold): the stored
        one, or for results from before it was kept, the index + 1 (our own generator
        numbers its slices from the bottom up, so the two agreed)."""
        if self.key_instance is not None:
            return self.key_instance
        return self.key_slice + 1 if self.key_slice is not None else None

    @property
    def score(self) -> float:
        """The score the ROC ranks by: a not-assessable study shows no AI finding (0)."""
        return float(self.probability) if self.probability is not None else 0.0


@dataclass
class HeldOut:
    task: str
    model_version: str
    threshold: float
    seed0: int
    studies: list[StudyResult]
    seconds: float = 0.0
    write_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        y = np.array([s.label for s in self.studies], bool)
        score = np.array([s.score for s in self.studies])
        flag = np.array([s.positive for s in self.studies], bool)
        done = np.array([s.status == "done" for s in self.studies], bool)
        tp, fn = int((flag & y).sum()), int((~flag & y).sum())
        fp, tn = int((flag & ~y).sum()), int((~flag & ~y).sum())
        op = metrics.OperatingPoint(self.threshold, tp, fp, tn, fn)
        pd = np.array(
            [s.probability if s.probability is not None else np.nan for s in self.studies]
        )
        pm = np.array(
            [
                s.probability_in_memory if s.probability_in_memory is not None else np.nan
                for s in self.studies
            ]
        )
        both = done & np.isfinite(pm)
        key_hits = sum(
            1
            for s in self.studies
            if s.label
            and s.key_number is not None
            and any(abs(s.key_number - i) <= 2 for i in s.lesion_instances)
        )
        key_n = sum(1 for s in self.studies if s.label and s.status == "done")
        na_reasons: dict[str, int] = {}
        for s in self.studies:
            if s.status != "done":
                kinds = [reason_kind(r) for r in s.reasons] or reason_kinds(s.detail)
                for key in kinds:
                    na_reasons[key] = na_reasons.get(key, 0) + 1
        return {
            "task": self.task,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "seed0": self.seed0,
            "n": len(self.studies),
            "positives": int(y.sum()),
            "not_assessable": int((~done).sum()),
            "not_assessable_positives": int((~done & y).sum()),
            "not_assessable_negatives": int((~done & ~y).sum()),
            "not_assessable_reasons": na_reasons,
            "auc": metrics.auc(score, y),
            "auc_ci95": list(metrics.auc_ci(score, y)),
            "tp": tp,
            "fn": fn,
            "fp": fp,
            "tn": tn,
            "sensitivity": op.sensitivity,
            "specificity": op.specificity,
            "false_alerts_per_study": op.fp_per_study,
            "ppv_5pct": op.ppv_at(0.05),
            "ppv_15pct": op.ppv_at(0.15),
            "ece": metrics.ece(pd[done], y[done]),
            "reliability": metrics.reliability(pd[done], y[done]),
            "key_slice_hits": [key_hits, key_n],
            "in_memory_mean_abs_diff": float(np.mean(np.abs(pd[both] - pm[both])))
            if both.any()
            else None,
            "in_memory_max_abs_diff": float(np.max(np.abs(pd[both] - pm[both])))
            if both.any()
            else None,
            "in_memory_same_decision": [
                int(((pd[both] >= self.threshold) == (pm[both] >= self.threshold)).sum()),
                int(both.sum()),
            ],
            "by_kind": self._by("kinds", y, flag),
            "by_mimic": self._by("mimics", ~y, ~flag),
            "seconds": self.seconds,
            "write_seconds": self.write_seconds,
        }

    def _by(self, attr: str, sel: np.ndarray, good: np.ndarray) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.studies):
            if not sel[i]:
                continue
            for k in getattr(s, attr):
                hit = out.setdefault(k, [0, 0])
                hit[0] += int(good[i])
                hit[1] += 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {"summary": self.summary(), "studies": [asdict(s) for s in self.studies]}


# -- the ledger ---------------------------------------------------------------------------------


def reason_kind(reason: str) -> str:
    """A not-assessable reason named by its words before the first ":" or " ("
    ("contrast-enhanced head CT")."""
    return reason.split(" (")[0].split(":")[0].strip()


def reason_kinds(detail: str) -> list[str]:
    """The kind of each reason in a "not assessable by <model>: a; b (x; y)" detail, for
    results stored before the reasons were kept apart (:attr:`StudyResult.reasons`): the
    reasons are split at the "; " between them, not at one inside parentheses."""
    body = detail.split(": ", 1)[-1]
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and body.startswith("; ", i):
            parts.append(body[start:i])
            start = i + 2
    parts.append(body[start:])
    return [reason_kind(p) for p in parts if p.strip()]


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "models", "triage"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + ("+modified" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ledger_entries(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TriageError(f"{path}:{n}: not a JSON line: {exc.msg}") from None
    return out


def check_ledger(
    path: Path, versions: dict[str, str], seed0: int = HELDOUT_SEED0, again: str | None = None
) -> None:
    """Refuse a second held-out run of a version already scored on ``seed0``'s range."""
    if again is not None and not again.strip():
        raise HeldOutRefused("--again needs a reason")
    if again:
        return
    for e in ledger_entries(path):
        if e.get("seed0") == seed0 and versions.get(e.get("task", "")) == e.get("model_version"):
            raise HeldOutRefused(
                f"{e['model_version']} was already scored on the held-out set (seeds "
                f"{seed0:,}+) on {e.get('date', '?')} at commit {e.get('commit', '?')} "
                f"(ledger {path}); the held-out set is scored once per shipped version. "
                'Give --again "reason" to score it again (the reason is recorded).'
            )


def append_ledger(path: Path, entries: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e, default=float) + "\n")
    write_ledger_md(path)


def ledger_entry(h: HeldOut, again: str | None, commit: str) -> dict[str, Any]:
    s = h.summary()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "task": h.task,
        "model_version": h.model_version,
        "seed0": h.seed0,
        "path": "production (DICOM, input checks, Triton)",
        "n": s["n"],
        "positives": s["positives"],
        "not_assessable": s["not_assessable"],
        "auc": round(s["auc"], 4),
        "sensitivity": round(s["sensitivity"], 4),
        "specificity": round(s["specificity"], 4),
        "false_alerts_per_study": round(s["false_alerts_per_study"], 4),
        "ece": round(s["ece"], 4) if np.isfinite(s["ece"]) else None,
        "again": again,
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if np.isfinite(v) else "-"
    return str(v)


def write_ledger_md(path: Path) -> Path:
    """``ledger.md`` beside ``path``: the entries as a table, oldest first."""
    rows = ledger_entries(path)
    lines = [
        "# Held-out ledger",
        "",
        "Every scoring of a held-out set, appended by `triage models validate` itself "
        f"(`{path.name}`; this file is rendered from it). A held-out set is scored once per "
        'shipped model version; a second run needs `--again "reason"`, recorded here. '
        "Synthetic phantoms; not for clinical use.",
        "",
        "| date | commit | model version | seeds | path | n (pos.) | not assessable | AUC | "
        "sensitivity | specificity | false alerts / study | ECE | again: reason / note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        note = e.get("again") or e.get("note") or ""
        lines.append(
            f"| {e.get('date', '?')} | {e.get('commit', '?')} | {e.get('model_version', '?')} | "
            f"{e.get('seed0', 0):,}+ | {e.get('path', '')} | {e.get('n', '?')} "
            f"({e.get('positives', '?')}) | {_fmt(e.get('not_assessable'))} | "
            f"{_fmt(e.get('auc'))} | {_fmt(e.get('sensitivity'), 2)} | "
            f"{_fmt(e.get('specificity'), 2)} | {_fmt(e.get('false_alerts_per_study'), 2)} | "
            f"{_fmt(e.get('ece'))} | {note} |"
        )
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return md


# -- the production path ------------------------------------------------------------------------


def _write(args: tuple[Path, Any, int]) -> Any:
    from triage.synth.ct import write_study

    folder, spec, seed = args
    return write_study(folder, spec, seed=seed, patient_id=f"H{seed}", accession=f"HO{seed}")


def written(jobs: Sequence[J], workers: int, write: Callable[[J], Any]) -> Iterator[tuple[J, Any]]:
    """``write(job)`` of each job by a pool (``write`` picklable: a module-level function), in
    order, at most ``2 * workers`` ahead of the reader (the series are ~30-120 MB each on
    disk)."""
    if workers <= 1:
        for j in jobs:
            yield j, write(j)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: list[tuple[J, Future[Any]]] = []
        it = iter(jobs)
        for j in it:
            pending.append((j, pool.submit(write, j)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            j, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(write, nxt)))
            yield j, fut.result()


def analysed(
    out: HeldOut,
    jobs: Sequence[W],
    workers: int,
    write: Callable[[W], Any],
    analyse: Callable[[Any], A],
    *,
    started: float,
    advance: Callable[[], object] | None = None,
) -> Iterator[tuple[W, Any, A]]:
    """Each job's study written ahead (:func:`written`), ``analyse(study)`` timed, the study's
    folder (the job's first item) removed; yields (job, study, analysis) for the caller to
    record, then ``advance``. At the end ``out`` gets its wall time since ``started`` and the
    part of it not spent analysing (writing)."""
    busy = 0.0
    for job, study in written(jobs, workers, write):
        t1 = time.monotonic()
        result = analyse(study)
        busy += time.monotonic() - t1
        shutil.rmtree(job[0], ignore_errors=True)
        yield job, study, result
        if advance is not None:
            advance()
    out.seconds = time.monotonic() - started
    out.write_seconds = max(0.0, out.seconds - busy)


def production_task(
    task: str,
    analyzer: Any,
    client: Any,
    seeds: Sequence[int],
    *,
    workers: int = 2,
    in_memory: bool = True,
    work_dir: Path,
    advance: Any = None,
    specs: Sequence[Any] | None = None,
    generator: int = 3,
) -> HeldOut:
    """Write each study of ``seeds`` as DICOM and analyse it as the engine does (``specs``:
    the studies to write, one per seed; by default the held-out draw of
    :func:`~triage.synth.ct.spec_set`, painted by ``generator``)."""
    from triage.ingest.dicom_files import instance_rows
    from triage.synth.ct import model_sample, spec_set

    t0 = time.monotonic()
    contract = analyzer.contract(task)
    if specs is None:
        specs = spec_set(task, list(seeds), POSITIVE_FRACTION, generator)  # type: ignore[arg-type]
    jobs = [(work_dir / f"{task}-{s}", spec, s) for s, spec in zip(seeds, specs, strict=True)]
    out = HeldOut(task, contract.version, contract.threshold, int(seeds[0]) if seeds else 0, [])
    for (_folder, spec, seed), study, a in analysed(
        out,
        jobs,
        workers,
        _write,
        lambda study: analyzer.analyze(task, instance_rows(study.files)),
        started=t0,
        advance=advance,
    ):
        p_mem = None
        if in_memory:
            p_mem = float(client.infer(task, model_sample(spec, seed).volume).probability)
        out.studies.append(
            StudyResult.of(
                seed,
                bool(spec.label),
                spec.subtypes,
                spec.mimics,
                a,
                study.lesion_instances,
                probability_in_memory=p_mem,
            )
        )
    return out


def model_versions(models_dir: Path, tasks: Sequence[str]) -> dict[str, str]:
    from triage.inference.contract import load_contract

    return {t: load_contract(models_dir / t / "config.pbtxt").version for t in tasks}


def progress_bar(enabled: bool) -> Progress:
    """The console progress display of the model commands (description, bar, done/total,
    elapsed); shows nothing when not ``enabled``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, disable=not enabled)


@contextmanager
def engine_analyzer(
    models_dir: Path, work: Path, triton_url: str | None
) -> Iterator[tuple[TritonAnalyzer, InferenceClient]]:
    """The engine's analyzer (no key images, data under ``work/data``) attached to a gRPC
    client of ``triton_url``, or of a Triton started on ``models_dir`` (under
    ``work/triton``) when no URL is given and stopped on exit. Yields (analyzer, client)."""
    from triage.inference.analyze import TritonAnalyzer
    from triage.inference.client import InferenceClient
    from triage.inference.local_triton import LocalTriton

    server = None
    if triton_url is None:
        server = LocalTriton(models_dir, work / "triton", startup_seconds=120)
        triton_url = server.start()
    try:
        with InferenceClient(triton_url, "grpc", timeout=60, models_dir=models_dir) as client:
            analyzer = TritonAnalyzer(work / "data", models_dir, key_images=False)
            analyzer.attach(client)
            yield analyzer, client
    finally:
        if server is not None:
            server.stop()


@contextmanager
def engine_session(
    models_dir: Path, triton_url: str | None, prefix: str, progress: bool
) -> Iterator[tuple[Path, TritonAnalyzer, InferenceClient, Progress]]:
    """A temporary work folder, the engine's analyzer on a Triton serving ``models_dir``
    (:func:`engine_analyzer`) and a progress display: what every production-path command
    (held-out, independent look) runs in. Yields (work folder, analyzer, client, progress)."""
    with (
        tempfile.TemporaryDirectory(prefix=prefix) as tmp,
        progress_bar(progress) as bar,
    ):
        work = Path(tmp)
        with engine_analyzer(models_dir, work, triton_url) as (analyzer, client):
            yield work, analyzer, client, bar


def validate(
    models_dir: Path,
    out_dir: Path,
    *,
    n: int = 200,
    tasks: Sequence[str] = ("ich", "pe"),
    triton_url: str | None = None,
    workers: int = 2,
    ledger: Path = DEFAULT_LEDGER,
    again: str | None = None,
    seed0: int = HELDOUT_SEED0,
    in_memory: bool = True,
    progress: bool = True,
    controls_data: Path = DEFAULT_CONTROLS_DATA,
) -> list[HeldOut]:
    """Score ``n`` held-out studies per task through the production path; append the ledger,
    write ``heldout.json`` and the report. Refused (before anything runs) when a model version
    was already scored on this range and ``again`` gives no reason."""
    versions = model_versions(models_dir, tasks)
    check_ledger(ledger, versions, seed0, again)
    # the code that scores: taken now, not when the run ends (work may be committed meanwhile)
    commit = git_commit()
    seeds = list(range(seed0, seed0 + n))
    results: list[HeldOut] = []
    control_rows: list[dict[str, Any]] | None = None
    with engine_session(models_dir, triton_url, "triage-heldout-", progress) as session:
        work, analyzer, client, bar = session
        for task in tasks:
            job = bar.add_task(f"held-out {task} (DICOM -> engine)", total=n)
            results.append(
                production_task(
                    task,
                    analyzer,
                    client,
                    seeds,
                    workers=workers,
                    in_memory=in_memory,
                    work_dir=work,
                    advance=lambda job=job: bar.advance(job),
                    generator=trained_generator(models_dir, task),
                )
            )
        try:
            control_rows = run_real_controls(analyzer, work, controls_data)
        except Exception as exc:  # the held-out figures stand without them
            log.warning("real controls not run: %s", exc)
            control_rows = None
    append_ledger(ledger, [ledger_entry(h, again, commit) for h in results])
    write_heldout(out_dir, results)
    write_controls(out_dir, control_rows)
    write_report(out_dir)
    return results


def merged_results(
    path: Path, new: list[dict[str, Any]], where: str | None = None
) -> list[dict[str, Any]]:
    """``new`` results, plus those of the other tasks already in the JSON report at ``path``
    (a run for one task keeps the other task's last results; each carries its own date).
    ``where``: the key of the sub-object holding ``task`` (None: the result itself)."""

    def task_of(r: dict[str, Any]) -> str:
        return str((r.get(where, {}) if where else r).get("task", ""))

    today = time.strftime("%Y-%m-%d")
    for r in new:
        r.setdefault("date", today)
    done = {task_of(r) for r in new}
    old = _load(path) or {}
    kept = [r for r in old.get("results", []) if task_of(r) not in done]
    return sorted(kept + new, key=task_of)


def write_heldout(out_dir: Path, results: list[HeldOut]) -> Path:
    from triage.training.plot import reliability_png, roc_png

    out_dir.mkdir(parents=True, exist_ok=True)
    for h in results:
        s = h.summary()
        y = np.array([x.label for x in h.studies], bool)
        score = np.array([x.score for x in h.studies])
        fpr, tpr = metrics.roc_curve(score, y)
        colour = COLOURS.get(h.task, (0, 0, 0))
        roc_png(
            out_dir / f"roc_{h.task}.png",
            [(fpr, tpr, colour)],
            [(1.0 - s["specificity"], s["sensitivity"], (0, 0, 0))],
        )
        reliability_png(out_dir / f"reliability_{h.task}.png", [(s["reliability"], colour)])
    path = out_dir / "heldout.json"
    payload = {
        "note": "synthetic phantoms; not for clinical use",
        "date": time.strftime("%Y-%m-%d"),
        "results": merged_results(path, [h.as_json() for h in results], "summary"),
    }
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    return path


# -- real controls ------------------------------------------------------------------------------


def run_real_controls(
    analyzer: Any,
    work_dir: Path,
    data_dir: Path = DEFAULT_CONTROLS_DATA,
    tasks: Sequence[str] = ("ich", "pe"),
) -> list[dict[str, Any]] | None:
    """The real (third-party) series of ``data_dir`` that the models of ``tasks`` could take,
    through the production path (:func:`triage.inference.controls.real_controls`, with
    ``analyzer``'s client attached); None when that module or the data is missing."""
    try:
        from triage.inference.controls import real_controls
    except ImportError:
        return None
    if not data_dir.is_dir():
        log.warning("real controls skipped: %s not found", data_dir)
        return None
    rows = []
    for r in real_controls(data_dir, analyzer, work_dir, tasks):
        rows.append(
            {
                "name": r.name,
                "model": r.model,
                "series": r.series,
                "status": r.status,
                "probability": r.probability,
                "threshold": r.threshold,
                "reason": r.reason,
                "ok": bool(r.ok),
                "verdict": r.line(),
            }
        )
    return rows


def write_controls(
    out_dir: Path, rows: list[dict[str, Any]] | None, tasks: Sequence[str] = ("ich", "pe")
) -> Path | None:
    """``controls.json`` with ``rows``; the rows of models outside ``tasks`` already there are
    kept (a run for one task leaves the other's controls in the report)."""
    if rows is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "controls.json"
    old = _load(path)
    kept = [r for r in (old or {}).get("controls", []) if r.get("model") not in tasks]
    payload = {"date": time.strftime("%Y-%m-%d"), "controls": kept + rows}
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    return path


def controls(
    models_dir: Path,
    out_dir: Path,
    *,
    triton_url: str | None = None,
    data_dir: Path = DEFAULT_CONTROLS_DATA,
    tasks: Sequence[str] = ("ich", "pe"),
) -> list[dict[str, Any]] | None:
    """``triage models controls``: only the real controls of ``tasks``' models, through
    Triton; the report rewritten (the other models' controls kept)."""
    with tempfile.TemporaryDirectory(prefix="triage-controls-") as tmp:
        work = Path(tmp)
        with engine_analyzer(models_dir, work, triton_url) as (analyzer, _client):
            rows = run_real_controls(analyzer, work, data_dir, tasks)
    write_controls(out_dir, rows, tasks)
    write_report(out_dir)
    return rows


# -- the report ---------------------------------------------------------------------------------


def _pct(k: int, n: int) -> str:
    if n == 0:
        return "- (0)"
    lo, hi = metrics.wilson(k, n)
    return f"{k / n:.2f} ({k}/{n}; {lo:.2f}-{hi:.2f})"


def _ok(value: float, target: float, higher: bool = True) -> str:
    if not np.isfinite(value):
        return ""
    good = value >= target if higher else value <= target
    return "met" if good else "**not met**"


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def heldout_markdown(payload: dict[str, Any]) -> list[str]:
    sums = [r["summary"] for r in payload["results"]]
    lines = [
        f"## Held-out set through the production path ({payload.get('date', '?')})",
        "",
        f"Seeds {sums[0]['seed0']:,}+ (fresh: the 5,000,000+ range was scored several times "
        "and is retired; see `ledger.md`). Each study is written as a 512 x 512 DICOM series "
        "and analysed by the engine's own code: series selection, `load_volume`, `resample`, "
        "the input checks, the real Triton. Not assessable = the worklist shows no AI finding "
        "(a miss for a positive; the ROC ranks it at 0). Proportions with the Wilson 95 % "
        "interval.",
        "",
        "| | " + " | ".join(s["task"] for s in sums) + " | target |",
        "|---|" + "---|" * len(sums) + "---|",
    ]

    def row(name: str, cells: list[str], target: str = "") -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {target} |")

    row("model version", [s["model_version"] for s in sums])
    row("studies (positive)", [f"{s['n']} ({s['positives']})" for s in sums], "~30 % positive")
    row(
        "not assessable (positives / negatives)",
        [
            f"{s['not_assessable']} ({s['not_assessable_positives']} / "
            f"{s['not_assessable_negatives']})"
            for s in sums
        ],
        "counted, reported",
    )
    row(
        "AUC (95 % bootstrap CI)",
        [
            f"{s['auc']:.3f} ({s['auc_ci95'][0]:.3f}-{s['auc_ci95'][1]:.3f}) "
            + _ok(s["auc"], TARGETS["auc"])
            for s in sums
        ],
        ">= 0.95",
    )
    row("operating point (config.pbtxt)", [f"{s['threshold']:.4f}" for s in sums])
    row(
        "sensitivity",
        [_pct(s["tp"], s["tp"] + s["fn"]) + " " + _ok(s["sensitivity"], 0.90) for s in sums],
        ">= 0.90",
    )
    row(
        "specificity",
        [_pct(s["tn"], s["tn"] + s["fp"]) + " " + _ok(s["specificity"], 0.85) for s in sums],
        ">= 0.85",
    )
    row(
        "false alerts per study",
        [
            f"{s['false_alerts_per_study']:.3f} " + _ok(s["false_alerts_per_study"], 0.5, False)
            for s in sums
        ],
        "<= 0.5",
    )
    row(
        "ECE (10 bins, assessable studies)",
        [f"{s['ece']:.3f} " + _ok(s["ece"], 0.05, False) for s in sums],
        "<= 0.05",
    )
    row(
        "PPV at 5 % / 15 % prevalence",
        [f"{s['ppv_5pct']:.2f} / {s['ppv_15pct']:.2f}" for s in sums],
    )
    row("key slice within 2 slices of the lesion", [_pct(*s["key_slice_hits"]) for s in sums])
    row(
        "in-memory path: same decision, mean / max abs. probability difference",
        [
            f"{s['in_memory_same_decision'][0]}/{s['in_memory_same_decision'][1]}, "
            f"{_fmt(s['in_memory_mean_abs_diff'])} / {_fmt(s['in_memory_max_abs_diff'])}"
            for s in sums
        ],
    )
    row(
        "time (writing DICOM ahead, 2 processes)",
        [f"{s['seconds']:.0f} s ({s['write_seconds']:.0f} s waiting for DICOM)" for s in sums],
    )
    lines.append("")
    for s in sums:
        lines += [
            f"### {s['task']}",
            "",
            f"![ROC {s['task']}](roc_{s['task']}.png) "
            f"![reliability {s['task']}](reliability_{s['task']}.png)",
            "",
            "Left: ROC (x: 1 - specificity, y: sensitivity; dot: the operating point). Right: "
            "reliability diagram (x: mean predicted probability per bin of 0.1, y: observed "
            "positive fraction; grey diagonal: perfect calibration; dot area: studies).",
            "",
            "| lesion kind | sensitivity |",
            "|---|---|",
        ]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in s["by_kind"].items()]
        lines += ["", "| negatives with look-alike | specificity |", "|---|---|"]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in s["by_mimic"].items()]
        lines += [
            "",
            "| predicted probability | studies | mean predicted | observed positive |",
            "|---|---|---|---|",
        ]
        for lo, hi, k, mp, obs in s["reliability"]:
            lines.append(
                f"| {lo:.1f}-{hi:.1f} | {k} | {mp:.2f} | {obs:.2f} |"
                if k
                else f"| {lo:.1f}-{hi:.1f} | 0 | - | - |"
            )
        if s["not_assessable_reasons"]:
            lines += ["", "Not assessable, by reason:", ""]
            lines += [f"- {k}: {v}" for k, v in s["not_assessable_reasons"].items()]
        lines.append("")
    return lines


def stress_markdown(payload: dict[str, Any]) -> list[str]:
    from triage.training.stress import STRESS_TARGET

    lines = [
        f"## Stress suite ({payload.get('date', '?')}, {payload.get('scorer', 'Triton')}, "
        f"commit {payload.get('commit', '?')})",
        "",
        f"Frozen: seeds {payload['seed0']:,}+ (half positive), the perturbations of "
        "`triage/training/perturb.py` at fixed strengths, applied to the acquired slices at "
        "the model's in-plane resolution and taken to the model grid by the engine's "
        "`resample`; scored at the shipped operating points. Target under every single "
        f"perturbation: sensitivity >= {STRESS_TARGET} and specificity >= {STRESS_TARGET}. "
        "Combinations are reported, not judged. FA = false alerts per study. "
        "Proportions with the Wilson 95 % interval; with 20 studies per class an interval is "
        "about +-0.15 wide.",
        "",
    ]
    for r in payload["results"]:
        lines += [
            f"### {r['task']} ({r['model_version']}, threshold {r['threshold']:.4f}; "
            f"{r['n']} studies, {r['positives']} positive; {r['seconds']:.0f} s)",
            "",
            f"![stress {r['task']}](stress_{r['task']}.png)",
            "",
            "Bars, in the table's order: sensitivity (red), specificity (blue); red line: "
            f"{STRESS_TARGET}.",
            "",
            "| # | perturbation | sensitivity | specificity | FA / study | AUC | "
            "decisions changed | mean prob. shift (neg. / pos.) | target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for i, row in enumerate(r["rows"]):
            verdict = (
                "-"
                if row["meets_target"] is None
                else ("met" if row["meets_target"] else "**not met**")
            )
            lines.append(
                f"| {i} | {row['name']} | {_pct(row['tp'], row['tp'] + row['fn'])} | "
                f"{_pct(row['tn'], row['tn'] + row['fp'])} | "
                f"{row['false_alerts_per_study']:.2f} | {_fmt(row['auc'])} | "
                f"{row['decisions_changed']} | {row['mean_prob_shift_neg']:+.3f} / "
                f"{row['mean_prob_shift_pos']:+.3f} | {verdict} |"
            )
        lines.append("")
    return lines


def controls_markdown(payload: dict[str, Any] | None) -> list[str]:
    lines = ["## Real controls", ""]
    if payload is None:
        return [
            *lines,
            "Not run yet (`triage models controls --out docs/models`, or a held-out run).",
            "",
        ]
    rows = payload["controls"]
    ok = sum(1 for c in rows if c["ok"])
    lines += [
        f"The real third-party series of ../shared/data through the production path "
        f"({payload.get('date', '?')}; `triage.inference.controls`). None shows a bleed or an "
        "embolism: each must be below the operating point or not assessable for the right "
        f"reason. **{ok} of {len(rows)} right.**",
        "",
        "| control | model | series selected | status | probability (threshold) | right? | "
        "reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rows:
        p = (
            f"{c['probability']:.4f} ({_fmt(c['threshold'], 4)})"
            if c["probability"] is not None
            else "-"
        )
        lines.append(
            f"| {c['name']} | {c['model']} | {c['series'] or '-'} | {c['status']} | {p} | "
            f"{'yes' if c['ok'] else '**no**'} | {c['reason'] or '-'} |"
        )
    return [*lines, ""]


def write_report(out_dir: Path) -> Path:
    """``report.md`` from whichever of ``heldout.json``, ``stress.json``, ``controls.json``
    and ``crosscheck-*.json`` are in ``out_dir``."""
    held = _load(out_dir / "heldout.json")
    stress = _load(out_dir / "stress.json")
    controls = _load(out_dir / "controls.json")
    crosses = [_load(p) for p in sorted(out_dir.glob("crosscheck-*.json"))]
    lines = ["# Model validation on synthetic phantoms", "", DISCLAIMER, ""]
    lines += [
        "Regenerated by `triage models validate` (held-out set, production path) and "
        "`triage models stress` (frozen stress suite); every held-out scoring is in "
        "[ledger.md](ledger.md).",
        "",
    ]
    if held:
        lines += heldout_markdown(held)
    else:
        lines += [
            "## Held-out set through the production path",
            "",
            f"Not yet run on the fresh held-out range ({HELDOUT_SEED0:,}+). The earlier "
            "in-memory figures on the retired 5,000,000+ range are in docs/models.md.",
            "",
        ]
    if stress:
        lines += stress_markdown(stress)
    lines += controls_markdown(controls)
    if any(crosses):
        from triage.training.crosscheck import crosscheck_markdown

        for cross in crosses:
            if cross:
                lines += crosscheck_markdown(cross)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
