"""What monitoring needs stored: one DicomAssociation row per association when it ends (with
what it stored, what was a duplicate and what was refused, and why), and the input mix of an
analysed study (``Finding.inputs``) read from the images the model was given."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import select
from support.dcmtk import echoscu, storescu
from support.net import wait_for

from triage.config import Settings
from triage.inference.analyze import input_mix
from triage.inference.checks import InputFacts
from triage.inference.volume import load_volume, select_series
from triage.ingest import dicom_scp
from triage.ingest.dicom_scp import DicomListener
from triage.store.db import Database
from triage.store.models import DicomAssociation, Instance
from triage.synth import write_head_ct


@dataclass
class Running:
    listener: DicomListener
    port: int
    db: Database
    data_dir: Path


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings.model_validate(
        {"data_dir": data_dir, "dicom_port": 0, "bind_host": "127.0.0.1"}
    )
    db = Database(settings.resolved_database_url)
    db.create_all()
    listener = DicomListener(settings, db)
    _, port = listener.start()
    try:
        yield Running(listener, port, db, data_dir)
    finally:
        listener.stop()
        db.dispose()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("head")
    study = write_head_ct(
        out, hemorrhage=False, seed=11, patient_id="P1", accession="A1", n_slices=10, size=64
    )
    return list(study.files)


def _associations(run: Running, n: int) -> list[DicomAssociation]:
    """The association rows, once ``n`` are written (the row is written after the peer has
    its A-RELEASE-RP, so storescu may exit first)."""

    def rows() -> list[DicomAssociation] | None:
        with run.db.session() as s:
            found = list(s.exec(select(DicomAssociation).order_by(DicomAssociation.id)).all())
        return found if len(found) >= n else None

    return wait_for(rows, 15, f"{n} association rows")


def test_each_association_is_recorded_when_it_ends(scp: Running, head: list[Path]) -> None:
    assert storescu(scp.port, head, aet="CT_ONE", check=True).returncode == 0
    assert storescu(scp.port, head[:2], aet="CT_ONE", check=True).returncode == 0  # again
    rows = _associations(scp, 2)
    assert [(r.calling_ae, r.called_ae, r.outcome) for r in rows] == [
        ("CT_ONE", "TRIAGE", "released"),
        ("CT_ONE", "TRIAGE", "released"),
    ]
    assert [(r.stored, r.duplicates, r.refused) for r in rows] == [(10, 0, 0), (0, 2, 0)]
    assert rows[0].address == "127.0.0.1" and rows[0].port > 0
    assert rows[0].first_store_at is not None and json.loads(rows[0].statuses) == {}
    assert scp.listener._tally == {}  # nothing kept once the association is written


def test_refused_instances_are_counted_with_their_status(
    scp: Running, head: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicom_scp, "disk_free_bytes", lambda _path: 0)  # disk full: 0xA700
    storescu(scp.port, head[:1], aet="CT_TWO")
    (row,) = _associations(scp, 1)
    assert (row.calling_ae, row.stored, row.refused) == ("CT_TWO", 0, 1)
    assert json.loads(row.statuses) == {"A700": 1}


def test_an_echo_only_association_is_recorded_without_stores(scp: Running) -> None:
    assert echoscu(scp.port, aet="PINGER").returncode == 0
    (row,) = _associations(scp, 1)
    assert (row.calling_ae, row.outcome, row.stored, row.first_store_at) == (
        "PINGER",
        "released",
        0,
        None,
    )


def test_input_mix_reads_scanner_kernel_thickness_and_reference_hu(
    scp: Running, head: list[Path]
) -> None:
    storescu(scp.port, head, aet="CT_ONE", check=True)
    with scp.db.session() as s:
        rows = list(s.exec(select(Instance)).all())
    series = select_series(rows)
    volume = load_volume([scp.data_dir / i.path for i in series])
    facts = InputFacts("CT", 10, 45.0, 5.0, tissue_hu=31.44)
    mix = json.loads(input_mix(scp.data_dir, series, volume, facts))
    assert mix["manufacturer"] == "TRIAGE SYNTHETIC"
    assert mix["scanner"] and mix["kernel"]
    assert (mix["thickness_mm"], mix["tissue_hu"]) == (5.0, 31.4)
    assert "slab_slices" not in mix
    # thin slices read as slabs of two: the slabs' thickness went in, and it says so
    slabs = json.loads(input_mix(scp.data_dir, series, volume, facts, per_slab=2))
    assert slabs["slab_slices"] == 2
    # not assessable (no facts): the header and the thickness of the volume only
    assert "tissue_hu" not in json.loads(input_mix(scp.data_dir, series, volume, None))
    # nothing readable: "" (the finding is stored without it)
    assert input_mix(scp.data_dir, [], None, None) == ""
