"""The independent look's harness (triage.training.crosscheck): routing from the written
headers, and the report section built from its results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_series
from triage.ingest.dicom_files import index_files
from triage.training.crosscheck import (
    PAINTERS,
    crosscheck_markdown,
    is_positive,
    report_name,
    result_json,
    routed_model,
)
from triage.training.validate import HeldOut, StudyResult, write_report


def _routed(files: list[Path]) -> str | None:
    index = index_files(files)
    return routed_model(index.rows, index.study)


def _series(folder: Path, header: StudyHeader) -> list[Path]:
    hu = np.zeros((2, 16, 16), np.float32)
    return write_series(folder, hu, Acquisition(), header)


def test_routing_reads_the_written_headers(tmp_path: Path) -> None:
    head = StudyHeader(study_description="CT BRAIN WITHOUT CONTRAST", body_part="HEAD")
    ctpa = StudyHeader(
        study_description="CTA CHEST PE PROTOCOL", body_part="CHEST", contrast_agent="IOHEXOL"
    )
    enhanced_head = StudyHeader(study_description="CT HEAD", contrast_agent="IOPAMIDOL")
    assert _routed(_series(tmp_path / "a", head)) == "ich"
    assert _routed(_series(tmp_path / "b", ctpa)) == "pe"
    assert _routed(_series(tmp_path / "c", enhanced_head)) is None


def test_half_the_seeds_are_positive() -> None:
    labels = [is_positive(s) for s in range(9_000_000, 9_000_040)]
    assert sum(labels) == 20


def test_report_section_lists_false_alerts_and_routing() -> None:
    studies = [
        StudyResult(1, True, ["subdural"], [], "done", 0.9, True),
        StudyResult(2, False, [], ["calcified_pineal"], "done", 0.7, True),
        StudyResult(3, False, [], [], "done", 0.1, False),
        StudyResult(4, True, ["subarachnoid"], [], "not_assessable", None, False,
                    reasons=["slice thickness out of range: 7 mm"]),
    ]  # fmt: skip
    h = HeldOut("ich", "ich-x", 0.3, 1, studies)
    payload = {
        "date": "2026-12-07",
        "commit": "abc",
        "painter": "b",
        "modules": PAINTERS["b"],
        "results": [result_json(h, ["ich"] * 3 + [None])],
    }
    text = "\n".join(crosscheck_markdown(payload))
    assert "## Independent look, painter b" in text and "`triage.crosscheck.head_b`" in text
    assert "| routed to the model by rules/routing.yaml | 0.75 (3/4" in text
    assert "seed 2: p 0.700 (calcified_pineal)" in text
    assert "| sensitivity | 0.50 (1/2" in text
    assert "slice thickness out of range: 1" in text


def test_key_slice_hit_is_counted_by_instance_number() -> None:
    """A head-first series (instance 1 at the top): the key slice's index counts from the
    bottom, its InstanceNumber is what the truth lists - the hit is judged on the latter."""
    s = StudyResult(1, True, ["subdural"], [], "done", 0.9, True, key_slice=2,
                    lesion_instances=[25, 26, 27], key_instance=26)  # fmt: skip
    old = StudyResult(2, True, ["subdural"], [], "done", 0.9, True, key_slice=2,
                      lesion_instances=[3, 4])  # fmt: skip
    h = HeldOut("ich", "ich-x", 0.3, 1, [s, old])
    assert h.summary()["key_slice_hits"] == [2, 2]
    s.key_instance = 9
    assert h.summary()["key_slice_hits"] == [1, 2]


def test_report_shows_each_painters_look(tmp_path: Path) -> None:
    import json

    for painter in ("a", "b"):
        h = HeldOut("pe", "pe-x", 0.3, 9_000_000, [StudyResult(1, True, ["lobar"], [], "done",
                    0.9, True), StudyResult(2, False, [], [], "done", 0.1, False)])  # fmt: skip
        payload = {
            "painter": painter,
            "modules": PAINTERS[painter],
            "results": [result_json(h, ["pe", "pe"])],
        }
        (tmp_path / report_name(painter)).write_text(json.dumps(payload))
    text = write_report(tmp_path).read_text()
    assert "Independent look, painter a" in text and "Independent look, painter b" in text
