"""Calibration error, the held-out ledger, the stress report and the reliability / bar plots
(no torch, no Triton: a stand-in scorer where only the report's structure is tested)."""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from triage.training import metrics
from triage.training.perturb import Scan, suite
from triage.training.plot import bars_png, reliability_png
from triage.training.stress import STRESS_SEED0, stress_task, write_stress
from triage.training.validate import (
    HELDOUT_SEED0,
    HeldOut,
    HeldOutRefused,
    StudyResult,
    append_ledger,
    check_ledger,
    ledger_entries,
    ledger_entry,
    validate,
    write_heldout,
    write_report,
)

from .conftest import MODELS_DIR


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


# -- calibration ------------------------------------------------------------------------------


def test_ece_on_known_cases() -> None:
    y = np.array([1] + [0] * 9)
    assert metrics.ece(np.full(10, 0.1), y) == pytest.approx(0.0)  # 0.1 predicted, 0.1 seen
    assert metrics.ece(np.full(10, 0.9), y) == pytest.approx(0.8)
    # two bins of 10: |0.05 - 0.0| and |0.75 - 0.5|, weighted equally -> 0.15
    p = np.r_[np.full(10, 0.05), np.full(10, 0.75)]
    labels = np.r_[np.zeros(10), np.ones(5), np.zeros(5)]
    assert metrics.ece(p, labels) == pytest.approx(0.15)
    rows = metrics.reliability(p, labels)
    assert len(rows) == 10 and [r[2] for r in rows] == [10, 0, 0, 0, 0, 0, 0, 10, 0, 0]
    assert metrics.reliability(np.array([1.0]), np.array([1]))[-1][2] == 1  # last bin closed


def test_reliability_and_bar_plots(tmp_path: Path) -> None:
    rows = metrics.reliability(np.linspace(0, 1, 50), np.linspace(0, 1, 50) > 0.5)
    assert _png_size(reliability_png(tmp_path / "r.png", [(rows, (200, 0, 0))])) == (420, 420)
    w, h = _png_size(bars_png(tmp_path / "b.png", [[0.9, 0.8]] * 30, [(1, 2, 3), (4, 5, 6)], 0.85))
    assert h == 420 and w > 420  # widened to fit 30 groups


# -- the ledger -------------------------------------------------------------------------------


def _heldout(task: str, version: str) -> HeldOut:
    studies = [
        StudyResult(1, True, ["subdural"], [], "done", 0.9, True, probability_in_memory=0.88),
        StudyResult(2, True, ["epidural"], [], "not_assessable", None, False, "x: too few"),
        StudyResult(3, False, [], ["motion"], "done", 0.2, False, probability_in_memory=0.25),
        StudyResult(4, False, [], [], "done", 0.6, True, probability_in_memory=0.55),
    ]
    return HeldOut(task, version, 0.5, HELDOUT_SEED0, studies)


def test_heldout_summary_counts_not_assessable_as_a_miss() -> None:
    s = _heldout("ich", "ich-x").summary()
    assert (s["tp"], s["fn"], s["tn"], s["fp"]) == (1, 1, 1, 1)
    assert s["not_assessable"] == 1 and s["not_assessable_positives"] == 1
    assert s["sensitivity"] == 0.5 and s["false_alerts_per_study"] == 0.25
    assert s["in_memory_same_decision"] == [3, 3]
    assert s["in_memory_mean_abs_diff"] == pytest.approx((0.02 + 0.05 + 0.05) / 3)


def test_ledger_refuses_a_second_heldout_run(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    versions = {"ich": "ich-x", "pe": "pe-y"}
    check_ledger(ledger, versions)  # empty ledger: allowed
    append_ledger(ledger, [ledger_entry(_heldout("ich", "ich-x"), None, "abc123")])
    with pytest.raises(HeldOutRefused, match="ich-x was already scored"):
        check_ledger(ledger, versions)
    check_ledger(ledger, {"ich": "ich-x2"})  # a new version may be scored
    check_ledger(ledger, versions, seed0=HELDOUT_SEED0 + 10**6)  # another range
    with pytest.raises(HeldOutRefused, match="needs a reason"):
        check_ledger(ledger, versions, again="  ")
    check_ledger(ledger, versions, again="generator fix")
    append_ledger(ledger, [ledger_entry(_heldout("ich", "ich-x"), "generator fix", "abc124")])
    entries = ledger_entries(ledger)
    assert [e["again"] for e in entries] == [None, "generator fix"]
    assert entries[0]["commit"] == "abc123" and entries[0]["not_assessable"] == 1
    md = (tmp_path / "ledger.md").read_text()
    assert "generator fix" in md and md.count("| ich-x |") == 2


def test_validate_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from triage.inference.contract import load_contract

    version = load_contract(MODELS_DIR / "ich" / "config.pbtxt").version
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(
        json.dumps({"task": "ich", "model_version": version, "seed0": HELDOUT_SEED0}) + "\n"
    )
    with pytest.raises(HeldOutRefused):  # no Triton started: it would take seconds
        validate(MODELS_DIR, tmp_path / "out", n=2, tasks=("ich",), ledger=ledger, progress=False)
    assert not (tmp_path / "out").exists() and len(ledger_entries(ledger)) == 1


def test_cli_refusal_exit_code(tmp_path: Path) -> None:
    from triage.cli import main
    from triage.inference.contract import load_contract

    version = load_contract(MODELS_DIR / "pe" / "config.pbtxt").version
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(
        json.dumps({"task": "pe", "model_version": version, "seed0": HELDOUT_SEED0}) + "\n"
    )
    argv = ["models", "validate", "--tasks", "pe", "--ledger", str(ledger), "--out", str(tmp_path)]
    assert main(argv) == 2


def test_the_heldout_report_goes_beside_the_ledger_the_repeatable_ones_to_scratch() -> None:
    """The held-out set is scored once per version: a report written to a scratch folder by
    default could not be regenerated into docs/models without scoring it again."""
    from triage.cli import build_parser
    from triage.training.cli import DEFAULT_LEDGER

    parser = build_parser()
    validate = parser.parse_args(["models", "validate"])
    assert Path(validate.out) == Path(validate.ledger).parent == DEFAULT_LEDGER.parent
    for cmd in ("stress", "controls", "crosscheck"):
        assert parser.parse_args(["models", cmd]).out == "var/validation"


# -- the stress report ------------------------------------------------------------------------


class _MeanScorer:
    """Stand-in: a probability from the volume's soft-tissue mean (fast, deterministic)."""

    def probability(self, task: str, volume: np.ndarray) -> float:
        soft = volume[(volume > 0) & (volume < 80)]
        return float(1.0 / (1.0 + np.exp(-(soft.mean() - 38.0))))


def _toy(task: str, label: bool, seed: int) -> Scan:
    """A small hand-made head or chest (a generated phantom takes seconds per perturbation)."""
    n, nz = 64, 12
    yy, xx = np.ogrid[:n, :n]
    r2 = ((yy - 32) / 28) ** 2 + ((xx - 32) / 24) ** 2
    sl = np.full((n, n), -1000.0, np.float32)
    sl[r2 <= 1.0] = 1200.0 if task == "ich" else 40.0
    sl[r2 <= 0.8] = 32.0
    if task == "pe":
        sl[(yy - 52) ** 2 + (xx - 32) ** 2 <= 25] = 800.0
    if label:
        sl[(yy - 28) ** 2 + (xx - 30) ** 2 <= 9] = 60.0
    hu = np.stack([sl] * nz) + np.random.default_rng(seed).normal(0, 4, (nz, n, n))
    return Scan(np.rint(hu).astype(np.float32), np.arange(nz) * 5.0, 3.6, 5.0)


def test_stress_report_lists_every_perturbation(tmp_path: Path) -> None:
    results = []
    for task in ("ich", "pe"):
        scans = [(s, s % 2 == 1, _toy(task, s % 2 == 1, s)) for s in (11, 12, 13, 14)]
        results.append(stress_task(task, MODELS_DIR, _MeanScorer(), scans=scans))
    for r in results:
        assert r.seeds == [11, 12, 13, 14] and r.labels == [True, False, True, False]
        names = [c.name for c in r.conditions]
        assert names == ["none", *(p.name for p in suite(r.task))]
        assert all(len(c.probs) == 4 for c in r.conditions)
        shift = {row["name"]: row["mean_prob_shift_neg"] for row in r.rows()}
        assert shift["none"] == 0.0 and shift["soft+10"] > 0.5  # the stand-in sees the shift
    write_stress(tmp_path, results, scorer="stand-in")
    report = write_report(tmp_path).read_text()
    for r in results:
        assert (tmp_path / f"stress_{r.task}.png").is_file()
        for p in suite(r.task):
            assert f"| {p.name} |" in report
    assert "Held-out set through the production path" in report and "Real controls" in report
    payload = json.loads((tmp_path / "stress.json").read_text())
    assert {r["task"] for r in payload["results"]} == {"ich", "pe"}


def test_a_run_records_the_code_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work committed while a long run goes on must not be credited with its figures."""
    import triage.training.stress as st
    import triage.training.validate as v

    scored: list[float] = []
    probability = st.OnnxScorer.probability

    def counting(self: st.OnnxScorer, task: str, volume: np.ndarray) -> float:
        scored.append(probability(self, task, volume))
        return scored[-1]

    monkeypatch.setattr(st.OnnxScorer, "probability", counting)
    monkeypatch.setattr(v, "git_commit", lambda: "committed-later" if scored else "at-start")
    run_stress = st.run_stress
    run_stress(
        MODELS_DIR, tmp_path, tasks=("ich",), per_class=1, onnx=True, names=["offset+10"],
        workers=1, progress=False,
    )  # fmt: skip
    payload = json.loads((tmp_path / "stress.json").read_text(encoding="utf-8"))
    assert scored and payload["commit"] == "at-start"


def test_stress_phantoms_come_from_the_stress_range_and_match_the_in_memory_path() -> None:
    from triage.synth import ct
    from triage.training.data import TRAIN_SEED0, TUNE_SEED0, VALID_SEED0
    from triage.training.stress import _scans, to_model_grid

    # every range holds seeds seed0 .. seed0 + 999,999: none overlaps another
    starts = sorted([TRAIN_SEED0, TUNE_SEED0, VALID_SEED0, HELDOUT_SEED0, STRESS_SEED0])
    assert all(b - a >= 1_000_000 for a, b in itertools.pairwise(starts))
    seed = STRESS_SEED0 + 1
    spec = ct.PhantomSpec("ich", False, n_slices=24, slice_thickness=5.0)
    scan = next(iter(_scans("ich", [seed], 128, 1, specs=[spec])))[2]
    assert scan.hu.shape == (24, 128, 128) and scan.pixel_mm == pytest.approx(230.0 / 128)
    ours = to_model_grid(scan, ct.model_shape("ich"), ct.z_resampling("ich"))
    theirs = ct.model_sample(spec, seed).volume
    # same anatomy; the noise is drawn for all acquired slices here, for the needed ones there
    assert np.abs(ours - theirs).mean() < 6.0
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999


def test_heldout_report_and_plots(tmp_path: Path) -> None:
    write_heldout(tmp_path, [_heldout("ich", "ich-x")])
    report = write_report(tmp_path).read_text()
    assert "ich-x" in report and "ECE" in report and "1 (1 / 0)" in report
    assert _png_size(tmp_path / "reliability_ich.png") == (420, 420)
    assert _png_size(tmp_path / "roc_ich.png") == (420, 420)


def test_png_is_valid_zlib(tmp_path: Path) -> None:
    path = bars_png(tmp_path / "x.png", [[0.5]], [(9, 9, 9)])
    data = path.read_bytes()
    n = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT" and zlib.decompress(data[41 : 41 + n])


def test_a_run_for_one_task_keeps_the_other_tasks_results(tmp_path: Path) -> None:
    from triage.training.validate import merged_results

    path = tmp_path / "stress.json"
    old = [{"task": "ich", "n": 1, "date": "2026-01-01"}, {"task": "pe", "n": 2, "date": "x"}]
    path.write_text(json.dumps({"results": old}), encoding="utf-8")
    merged = merged_results(path, [{"task": "ich", "n": 3}])
    assert [(r["task"], r["n"]) for r in merged] == [("ich", 3), ("pe", 2)]
    assert merged[0]["date"] != "2026-01-01"  # the new result carries today's date
    nested = merged_results(tmp_path / "none.json", [{"summary": {"task": "pe"}}], "summary")
    assert [r["summary"]["task"] for r in nested] == ["pe"]


def test_a_controls_run_for_one_task_keeps_the_other_models_controls(tmp_path: Path) -> None:
    from triage.training.validate import write_controls

    def row(name: str, model: str, ok: bool) -> dict[str, object]:
        return {
            "name": name,
            "model": model,
            "series": "",
            "status": "done",
            "probability": 0.1,
            "threshold": 0.3,
            "reason": "",
            "ok": ok,
            "verdict": f"{name} {ok}",
        }

    write_controls(tmp_path, [row("ge", "ich", True), row("lidc", "pe", False)])
    write_controls(tmp_path, [row("lidc", "pe", True)], tasks=("pe",))
    rows = json.loads((tmp_path / "controls.json").read_text(encoding="utf-8"))["controls"]
    assert [(r["name"], r["ok"]) for r in rows] == [("ge", True), ("lidc", True)]
    write_controls(tmp_path, [row("ge2", "ich", False)])  # both tasks: nothing kept
    rows = json.loads((tmp_path / "controls.json").read_text(encoding="utf-8"))["controls"]
    assert [r["name"] for r in rows] == ["ge2"]
    report = write_report(tmp_path).read_text(encoding="utf-8")
    assert "ge2" in report


def test_not_assessable_reasons_are_counted_by_kind() -> None:
    """Reasons are split where the checks join them, never inside a parenthesis (a held-out
    report once counted "the ich model reads non-contrast CT, limit 6 ml)" as a reason)."""
    from triage.training.validate import reason_kinds

    detail = (
        "not assessable by ich: slice thickness 5.5 mm outside the trained range 1.25-5 mm; "
        "contrast-enhanced head CT: 6.1 ml inside the skull (arteries; sinuses: limit 6 ml); "
        "wrong body part: the ich model reads head CT"
    )
    assert reason_kinds(detail) == [
        "slice thickness 5.5 mm outside the trained range 1.25-5 mm",
        "contrast-enhanced head CT",
        "wrong body part",
    ]
    assert reason_kinds("not assessable by pe: too few slices: 10") == ["too few slices"]


def test_not_assessable_reasons_kept_apart_are_counted_as_they_are() -> None:
    """A study that carries its reasons (StudyResult.reasons) is counted from them; one
    stored with only its message falls back to splitting it."""
    apart = StudyResult(
        5,
        False,
        [],
        [],
        "not_assessable",
        None,
        False,
        "not assessable by ich: contrast-enhanced head CT: 7 ml (a; b); too few slices: 3",
        reasons=["contrast-enhanced head CT: 7 ml (a; b)", "too few slices: 3"],
    )
    joined = replace(apart, seed=6, reasons=[])
    held = HeldOut("ich", "ich-x", 0.5, HELDOUT_SEED0, [apart, joined])
    assert held.summary()["not_assessable_reasons"] == {
        "contrast-enhanced head CT": 2,
        "too few slices": 2,
    }
