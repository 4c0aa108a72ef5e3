"""The independent look: ``triage models crosscheck``.

Studies painted by :mod:`triage.crosscheck` - generators written from the radiology without
reading the training generator, its feature windows or the input checks - are written as
DICOM and taken by the engine's own code, as the held-out validation takes its own
(:func:`triage.training.validate.production_task`): the routing rules read the headers, then
series selection, ``load_volume``, the input checks and the real Triton give what the
worklist would show. Half the studies are positive (seed parity), so sensitivity and, above
all, the false alerts on normal studies the models never saw the like of are measured side
by side.

Painter "a" (``head.py``, ``chest.py``) may also train a model
(:mod:`triage.training.second_source`); a model trained on it is judged by painter "b"
(``head_b.py``, ``chest_b.py``), written apart from both. The figures go to
``crosscheck-<painter>.json`` and the report (``report.md``); they are synthetic - evidence
about robustness, not a clinical claim.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from triage.crosscheck import PAINTERS
from triage.ingest.dicom_files import index_files
from triage.routing.facts import contrast_given
from triage.training.validate import (
    HeldOut,
    StudyResult,
    analysed,
    engine_session,
    git_commit,
    merged_results,
    write_report,
)

CROSSCHECK_SEED0 = 9_000_000  # never drawn by triage.synth.ct (training 1e6+, held-out 8e6+)
# A model trained on painter "a" (triage.training.second_source) is judged by painter "b".
DEFAULT_PAINTER = "b"
ROUTING_RULES = Path(__file__).resolve().parents[2] / "rules" / "routing.yaml"

Job = tuple[Path, str, int, bool, str]  # folder, task, seed, label, painter


def is_positive(seed: int) -> bool:
    """Half the studies are positive: the odd seeds."""
    return seed % 2 == 1


def write_job(job: Job) -> Any:
    """Paint and write one study (in a worker process); returns its ``CrossStudy``."""
    folder, task, seed, label, which = job
    painter = importlib.import_module(PAINTERS[which][task])
    return painter.write_study(folder, seed, label)


def routed_model(
    rows: Sequence[Any], study: dict[str, str], rules_path: Path = ROUTING_RULES
) -> str | None:
    """The model the routing rules send a study to (its ``rows`` and ``study`` attributes
    from :func:`triage.ingest.dicom_files.index_files`; no order), gathered as the engine
    gathers them (:func:`triage.routing.gather.facts_for_study`), or None when no rule
    matches."""
    from triage.routing import RoutingFacts, load_routing_rules, route

    facts = RoutingFacts.build(
        modalities={r.modality for r in rows},
        body_parts=[study.get("body_part", "")],
        descriptions=[study.get("study_description", ""), *(r.series_description for r in rows)],
        contrast=contrast_given(study.get("contrast_agent", "")),
    )
    rule = route(load_routing_rules(rules_path), facts)
    return rule.model if rule is not None else None


def crosscheck_task(
    task: str,
    analyzer: Any,
    seeds: Sequence[int],
    *,
    work_dir: Path,
    workers: int = 2,
    advance: Any = None,
    painter: str = DEFAULT_PAINTER,
) -> tuple[HeldOut, list[str | None]]:
    """Paint (``painter``), write and analyse each study of ``seeds`` as the engine does;
    returns the results and, per study, the model the routing rules chose."""
    t0 = time.monotonic()
    contract = analyzer.contract(task)
    jobs: list[Job] = [(work_dir / f"x{task}-{s}", task, s, is_positive(s), painter) for s in seeds]
    out = HeldOut(task, contract.version, contract.threshold, int(seeds[0]) if seeds else 0, [])
    routes: list[str | None] = []

    def analyse(study: Any) -> Any:
        index = index_files(study.files)
        routes.append(routed_model(index.rows, index.study))
        return analyzer.analyze(task, index.rows)

    for (_folder, _task, seed, label, _painter), study, a in analysed(
        out, jobs, workers, write_job, analyse, started=t0, advance=advance
    ):
        out.studies.append(
            StudyResult.of(seed, label, study.kinds, study.notes, a, study.lesion_instances)
        )
    return out, routes


def result_json(h: HeldOut, routes: Sequence[str | None]) -> dict[str, Any]:
    """The JSON of one task's crosscheck: the held-out summary and studies, plus routing."""
    payload = h.as_json()
    payload["summary"]["routed_to_model"] = [sum(r == h.task for r in routes), len(routes)]
    for s, r in zip(payload["studies"], routes, strict=True):
        s["routed_to"] = r
    return payload


def report_name(painter: str) -> str:
    """The JSON file of painter ``painter``'s results in the report folder."""
    return f"crosscheck-{painter}.json"


def write_crosscheck(
    out_dir: Path,
    results: Sequence[tuple[HeldOut, list[str | None]]],
    painter: str = DEFAULT_PAINTER,
    commit: str | None = None,
) -> Path:
    """``crosscheck-<painter>.json`` with ``results`` (the other tasks' kept); ``commit``: the
    code that scored them (None: the checkout's now)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / report_name(painter)
    payload = {
        "note": "independent synthetic phantoms (triage/crosscheck/); not for clinical use",
        "painter": painter,
        "modules": PAINTERS[painter],
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit or git_commit(),
        "results": merged_results(path, [result_json(h, r) for h, r in results], "summary"),
    }
    path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    return path


def crosscheck(
    models_dir: Path,
    out_dir: Path,
    *,
    n: int = 40,
    tasks: Sequence[str] = ("ich", "pe"),
    triton_url: str | None = None,
    workers: int = 2,
    seed0: int = CROSSCHECK_SEED0,
    progress: bool = True,
    painter: str = DEFAULT_PAINTER,
) -> list[tuple[HeldOut, list[str | None]]]:
    """``n`` independent studies per task through the production path; writes
    ``crosscheck-<painter>.json`` and regenerates the report."""
    if painter not in PAINTERS:
        raise ValueError(f"painter {painter!r}: one of {', '.join(sorted(PAINTERS))}")
    seeds = list(range(seed0, seed0 + n))
    commit = git_commit()  # the code that scores, taken before the run
    results = []
    with engine_session(models_dir, triton_url, "triage-crosscheck-", progress) as session:
        work, analyzer, _client, bar = session
        for task in tasks:
            job = bar.add_task(f"painter {painter}: {task} (DICOM -> engine)", total=n)
            results.append(
                crosscheck_task(
                    task,
                    analyzer,
                    seeds,
                    work_dir=work,
                    workers=workers,
                    advance=lambda job=job: bar.advance(job),
                    painter=painter,
                )
            )
    write_crosscheck(out_dir, results, painter, commit)
    write_report(out_dir)
    return results


def crosscheck_markdown(payload: dict[str, Any]) -> list[str]:
    """The report's section on the independent look."""
    from triage.training.validate import _ok, _pct

    sums = [r["summary"] for r in payload["results"]]
    painter = payload.get("painter", "a")
    modules = ", ".join(f"`{m}`" for m in payload.get("modules", PAINTERS["a"]).values())
    lines = [
        f"## Independent look, painter {painter}: another generator's studies "
        f"({payload.get('date', '?')})",
        "",
        f"Studies painted by {modules} - written from the radiology without reading the "
        "training generator, the models' features or the input checks "
        f"(seeds {sums[0]['seed0']:,}+, half positive) - "
        "written as DICOM and taken by the engine's own code (routing rules on the headers, "
        "series selection, input checks, Triton). Commit "
        f"`{str(payload.get('commit', '?'))[:10]}`. Synthetic: evidence about robustness, not "
        "a clinical claim.",
        "",
        "| | " + " | ".join(s["task"] for s in sums) + " |",
        "|---|" + "---|" * len(sums),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("model version", [s["model_version"] for s in sums])
    row("studies (positive)", [f"{s['n']} ({s['positives']})" for s in sums])
    row("routed to the model by rules/routing.yaml", [_pct(*s["routed_to_model"]) for s in sums])
    row(
        "not assessable (positives / negatives)",
        [
            f"{s['not_assessable']} ({s['not_assessable_positives']} / "
            f"{s['not_assessable_negatives']})"
            for s in sums
        ],
    )
    row("AUC", [f"{s['auc']:.3f} ({s['auc_ci95'][0]:.3f}-{s['auc_ci95'][1]:.3f})" for s in sums])
    row(
        "sensitivity",
        [_pct(s["tp"], s["tp"] + s["fn"]) + " " + _ok(s["sensitivity"], 0.90) for s in sums],
    )
    row(
        "specificity",
        [_pct(s["tn"], s["tn"] + s["fp"]) + " " + _ok(s["specificity"], 0.85) for s in sums],
    )
    row(
        "false alerts per study",
        [
            f"{s['false_alerts_per_study']:.3f} " + _ok(s["false_alerts_per_study"], 0.5, False)
            for s in sums
        ],
    )
    row("key slice within 2 slices of the lesion", [_pct(*s["key_slice_hits"]) for s in sums])
    lines.append("")
    for r in payload["results"]:
        s = r["summary"]
        lines += [f"### {s['task']} (painter {painter})", "", "| lesion kind | sensitivity |"]
        lines += ["|---|---|"] + [f"| {k} | {_pct(*v)} |" for k, v in s["by_kind"].items()]
        lines += ["", "| negatives carrying | specificity |", "|---|---|"]
        lines += [f"| {k} | {_pct(*v)} |" for k, v in s["by_mimic"].items()]
        if s["not_assessable_reasons"]:
            lines += ["", "Not assessable, by reason:", ""]
            lines += [f"- {k}: {v}" for k, v in s["not_assessable_reasons"].items()]
        alerts = [x for x in r["studies"] if x["positive"] and not x["label"]]
        if alerts:
            lines += ["", "False alerts:", ""]
            lines += [
                f"- seed {x['seed']}: p {x['probability']:.3f} ({', '.join(x['mimics']) or '-'})"
                for x in alerts
            ]
        lines.append("")
    return lines
