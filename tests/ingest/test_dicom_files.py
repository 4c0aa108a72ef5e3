"""Files on disk indexed as the DICOM listener indexes what it receives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.errors import InvalidDicomError

from triage.crosscheck.dicomio import Acquisition, StudyHeader, write_series
from triage.ingest.dicom_files import index_files, instance_rows


def _series(folder: Path) -> list[Path]:
    header = StudyHeader(study_description="CT HEAD", body_part="HEAD")
    return write_series(folder, np.zeros((3, 8, 8), np.float32), Acquisition(), header)


def test_rows_and_study_attributes(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    index = index_files(files)
    assert [r.path for r in index.rows] == [str(p) for p in files]
    assert len({r.sop_instance_uid for r in index.rows}) == 3
    assert len({r.series_uid for r in index.rows}) == 1
    assert index.study["study_description"] == "CT HEAD"
    assert index.study["body_part"] == "HEAD"
    assert index.skipped == []


def test_a_file_that_is_not_dicom_raises_unless_skipped(tmp_path: Path) -> None:
    files = _series(tmp_path / "s")
    stray = tmp_path / "LICENSE.txt"
    stray.write_text("not an image\n")
    with pytest.raises(InvalidDicomError):
        instance_rows([*files, stray])
    index = index_files([stray, *files], skip_unreadable=True)
    assert len(index.rows) == 3 and index.skipped == [stray]
