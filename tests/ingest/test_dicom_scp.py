"""The Storage SCP against real peers: dcmtk's storescu/echoscu, and pynetdicom as a client for
what dcmtk will not send (hostile UIDs, garbage data sets)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from ct_fixtures import ct300_study, encoded_dataset
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from raw_peer import RawPeer, command_set, established, status_of
from sqlmodel import select
from support.dcmtk import dcmtk, echoscu
from support.dcmtk import storescu as dcmtk_storescu
from support.net import free_port

from triage.config import Settings
from triage.errors import ConfigError, StoreError
from triage.inference.volume import load_volume
from triage.ingest import dicom_scp
from triage.ingest.dicom_scp import DicomListener
from triage.ingest.dicom_stream import IncomingFile
from triage.store.db import Database
from triage.store.models import Instance, Study
from triage.synth import write_head_ct
from triage.synth.ct import SyntheticStudy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ct300(tmp_path_factory: pytest.TempPathFactory) -> SyntheticStudy:
    return ct300_study(tmp_path_factory)


@dataclass
class Running:
    listener: DicomListener
    host: str
    port: int
    db: Database
    data_dir: Path
    seen: list[str]


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = Settings.model_validate(
        {"data_dir": data_dir, "dicom_port": 0, "bind_host": "127.0.0.1"}
    )
    db = Database(settings.resolved_database_url)
    db.create_all()
    seen: list[str] = []
    listener = DicomListener(settings, db, on_instance=seen.append)
    host, port = listener.start()
    try:
        yield Running(listener, host, port, db, data_dir, seen)
    finally:
        listener.stop()
        db.dispose()


def storescu(run: Running, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return dcmtk_storescu(run.port, files, host=run.host, aet="TESTSCU")


def instances(run: Running) -> list[Instance]:
    with run.db.session() as s:
        return list(s.exec(select(Instance)).all())


def studies(run: Running) -> list[Study]:
    with run.db.session() as s:
        return list(s.exec(select(Study)).all())


def stored_files(data_dir: Path) -> list[Path]:
    """Everything under the data directory except the database files."""
    return [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith("triage.db")]


def client_store(run: Running, items: list[Dataset | Path]) -> list[int]:
    """Send with pynetdicom as the SCU; returns the C-STORE statuses."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(run.host, run.port, ae_title="TRIAGE")
    assert assoc.is_established
    try:
        statuses = []
        for item in items:
            rsp = assoc.send_c_store(item)
            assert "Status" in rsp, "no response: the SCP dropped the association"
            statuses.append(int(rsp.Status))
        return statuses
    finally:
        assoc.release()


# --------------------------------------------------------------------------- dcmtk peers


def test_echoscu_succeeds(scp: Running) -> None:
    res = echoscu(scp.port, host=scp.host, aet="TESTSCU")
    assert res.returncode == 0, res.stderr


def test_wrong_called_ae_title_is_rejected(scp: Running) -> None:
    res = echoscu(scp.port, host=scp.host, aec="NOTUS")
    assert res.returncode != 0


def test_storescu_synthetic_head_ct_is_stored_and_indexed(scp: Running, tmp_path: Path) -> None:
    study = write_head_ct(
        tmp_path / "src", hemorrhage=True, seed=11, patient_id="P-11", accession="ACC11"
    )
    res = storescu(scp, study.files)
    assert res.returncode == 0, res.stderr

    rows = instances(scp)
    assert len(rows) == len(study.files) == 24
    assert {r.study_uid for r in rows} == {study.study_uid}
    assert {r.series_uid for r in rows} == {study.series_uid}
    assert sorted(r.instance_number or 0 for r in rows) == list(range(1, 25))
    assert {r.calling_ae for r in rows} == {"TESTSCU"}
    for row in rows:
        path = scp.data_dir / row.path
        assert path.is_file() and path.stat().st_size == row.size_bytes
        assert path.is_relative_to(scp.data_dir / "dicom" / study.study_uid / study.series_uid)
        ds = pydicom.dcmread(path)
        assert ds.SOPInstanceUID == row.sop_instance_uid
        assert ds.file_meta.TransferSyntaxUID == row.transfer_syntax
        assert ds.pixel_array.shape == (512, 512)
        assert row.modality == "CT" and row.slice_thickness == 5.0

    (st,) = studies(scp)
    assert st.study_uid == study.study_uid
    assert st.accession_number == "ACC11" and st.patient_id == "P-11"
    assert st.body_part == "HEAD" and st.study_description == "CT HEAD WO CONTRAST"
    assert st.contrast_agent == "" and st.instance_count == 24 and st.modality == "CT"
    assert scp.seen == [study.study_uid] * 24
    assert not [p for p in stored_files(scp.data_dir) if p.suffix != ".dcm"]


def _dicom_files(folder: Path) -> list[Path]:
    """The image files of a shared-data folder. Philips DIRFILE files carry a DICM preamble
    but are directory records, not storable instances (see the data README)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.name != "DIRFILE" and not p.name.startswith("LICENSE")
    )


def test_storescu_real_third_party_files(scp: Running, shared_data: Path) -> None:
    dicom = shared_data / "dicom"
    philips = dicom / "philips-head-phantom"
    folders = [
        dicom / "ge-head-ct",
        philips / "S2010",
        philips / "S1000",
        philips / "S4010",
        dicom / "lidc-chest-ct",
        dicom / "dcm4che-wrist-mr",
    ]
    files = [f for folder in folders for f in _dicom_files(folder)]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    expected_series = Counter(str(h.SeriesInstanceUID) for h in headers)
    expected_studies = Counter(str(h.StudyInstanceUID) for h in headers)

    res = storescu(scp, files)
    assert res.returncode == 0, res.stderr

    rows = instances(scp)
    assert len(rows) == len(files) == len({h.SOPInstanceUID for h in headers})
    assert Counter(r.series_uid for r in rows) == expected_series
    by_study = {s.study_uid: s for s in studies(scp)}
    assert {k: s.instance_count for k, s in by_study.items()} == dict(expected_studies)
    assert all((scp.data_dir / r.path).is_file() for r in rows)
    # The Philips phantom: brain, localizer and dose-screen series in one study.
    philips_study = str(headers[len(_dicom_files(dicom / "ge-head-ct"))].StudyInstanceUID)
    philips_rows = [r for r in rows if r.study_uid == philips_study]
    assert Counter(r.series_number for r in philips_rows) == {201: 28, 100: 1, 401: 6}
    assert any("LOCALIZER" in r.image_type for r in philips_rows)
    lidc = next(s for s in by_study.values() if s.patient_id == "LIDC-IDRI-0314")
    assert lidc.body_part == "CHEST" and lidc.instance_count == 100


# --------------------------------------------------------------------------- hostile input


def _slice(tmp_path: Path, seed: int = 5) -> Dataset:
    study = write_head_ct(
        tmp_path / f"src{seed}",
        hemorrhage=False,
        seed=seed,
        patient_id="P",
        accession=f"A{seed}",
        n_slices=2,
        size=64,
    )
    return pydicom.dcmread(study.files[0])


_COLUMN = {
    "SOPInstanceUID": "sop_instance_uid",
    "StudyInstanceUID": "study_uid",
    "SeriesInstanceUID": "series_uid",
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("field", list(_COLUMN))
@pytest.mark.parametrize("bad", ["../../etc/passwd", "..", "1.2/../../../x", "/tmp/abs"])
def test_hostile_uid_never_escapes_data_dir(
    scp: Running, tmp_path: Path, field: str, bad: str
) -> None:
    ds = _slice(tmp_path)
    setattr(ds, field, bad)
    before = {p for p in tmp_path.rglob("*") if not p.is_relative_to(scp.data_dir)}
    (status,) = client_store(scp, [ds])
    after = {p for p in tmp_path.rglob("*") if not p.is_relative_to(scp.data_dir)}
    assert after == before
    assert status in (0x0000, 0xA900, 0xC000)
    for p in stored_files(scp.data_dir):
        assert p.resolve().is_relative_to((scp.data_dir / "dicom").resolve())
    if status == 0x0000:  # accepted: indexed under its real UID, stored under a hashed name
        (row,) = instances(scp)
        assert getattr(row, _COLUMN[field]) == bad
        assert (scp.data_dir / row.path).is_file()
        assert ".." not in row.path and "passwd" not in row.path and "abs" not in row.path


def _raw_file(path: Path, body: bytes, sop_uid: str = "1.2.826.0.1.3680043.10.999.1") -> Path:
    """A file with valid file meta followed by ``body`` as the data set, sent verbatim when
    pynetdicom's STORE_SEND_CHUNKED_DATASET is on."""
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta, enforce_standard=True)
        f.write(body)
    return path


def _grow_pixel_length(body: bytes, extra: int) -> bytes:
    """Claim ``extra`` more Pixel Data bytes than there are."""
    at = body.index(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
    length = int.from_bytes(body[at : at + 4], "little")
    return body[:at] + (length + extra).to_bytes(4, "little") + body[at + 4 :]


def test_undecodable_dataset_gets_c210_and_leaves_no_file(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    good = encoded_dataset(_slice(tmp_path))
    bodies = {
        "garbage": b"this is not a DICOM data set at all" * 20,
        "random": bytes(range(256)) * 8,
        "truncated": good[:-100],
        "length_past_end": _grow_pixel_length(good, 2),
    }
    files = [_raw_file(tmp_path / f"{name}.bin", body) for name, body in bodies.items()]
    statuses = client_store(scp, list(files))
    assert statuses == [0xC210] * len(bodies)
    assert stored_files(scp.data_dir) == []
    assert instances(scp) == [] and scp.seen == []


def test_missing_uid_is_refused(scp: Running, tmp_path: Path) -> None:
    ds = _slice(tmp_path)
    del ds.StudyInstanceUID
    assert client_store(scp, [ds]) == [0xA900]
    assert stored_files(scp.data_dir) == []


def test_duplicate_is_stored_once(scp: Running, tmp_path: Path) -> None:
    study = write_head_ct(tmp_path / "s", hemorrhage=False, seed=3, patient_id="P", accession="A")
    assert storescu(scp, study.files[:3]).returncode == 0
    first = {r.sop_instance_uid: (r.path, r.id) for r in instances(scp)}
    assert storescu(scp, study.files[:3]).returncode == 0
    assert client_store(scp, [pydicom.dcmread(study.files[0])]) == [0x0000]
    assert {r.sop_instance_uid: (r.path, r.id) for r in instances(scp)} == first
    (st,) = studies(scp)
    assert st.instance_count == 3
    assert scp.seen == [study.study_uid] * 3
    assert len(stored_files(scp.data_dir)) == 3


def test_database_down_answers_a700_and_writes_nothing(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> bool:
        raise StoreError("database is locked")

    monkeypatch.setattr(scp.listener.index, "is_stored", broken)
    assert client_store(scp, [_slice(tmp_path)]) == [0xA700]
    assert stored_files(scp.data_dir) == []  # the streamed file was removed too
    assert scp.seen == []


def _rows_eventually(run: Running, n: int) -> set[str]:
    deadline = time.monotonic() + 5
    while len(rows := instances(run)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return {i.sop_instance_uid for i in rows}


def test_commit_failing_after_success_keeps_the_file_and_is_retried(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Success goes out once the file is durable; a commit failing after it leaves the file
    and is retried (before the next instance's row, and when the association ends)."""
    index = scp.listener.index
    record = index.record
    failures = [StoreError("database is locked")] * 2

    def flaky(row: dict[str, Any], attrs: dict[str, str]) -> bool:
        if failures:
            raise failures.pop()
        return record(row, attrs)

    monkeypatch.setattr(index, "record", flaky)
    first, second = _slice(tmp_path, seed=5), _slice(tmp_path, seed=6)
    # first: its commit fails, and so does the retry when the association ends
    assert client_store(scp, [first]) == [0x0000]
    assert len(stored_files(scp.data_dir)) == 1
    deadline = time.monotonic() + 5
    while failures and time.monotonic() < deadline:  # the retry at the association's end
        time.sleep(0.05)
    assert not failures and instances(scp) == [] and scp.seen == []
    # the next instance's commit retries it first
    assert client_store(scp, [second]) == [0x0000]
    assert _rows_eventually(scp, 2) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert sorted(scp.seen) == sorted([first.StudyInstanceUID, second.StudyInstanceUID])


def test_a_row_that_keeps_failing_does_not_hold_up_the_others(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = scp.listener.index
    record = index.record
    poisoned = _slice(tmp_path, seed=7)

    def picky(row: dict[str, Any], attrs: dict[str, str]) -> bool:
        if row["sop_instance_uid"] == poisoned.SOPInstanceUID and not healed:
            raise StoreError("constraint failed")
        return record(row, attrs)

    healed = False
    monkeypatch.setattr(index, "record", picky)
    others = [_slice(tmp_path, seed=8), _slice(tmp_path, seed=9)]
    assert client_store(scp, [poisoned, *others]) == [0x0000] * 3
    assert {i.sop_instance_uid for i in instances(scp)} == {o.SOPInstanceUID for o in others}
    healed = True
    assert client_store(scp, []) == []  # the retry runs when an association ends
    assert poisoned.SOPInstanceUID in _rows_eventually(scp, 3)


def test_commit_failing_until_stop_is_indexed_at_next_start(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> bool:
        raise StoreError("disk I/O error")

    monkeypatch.setattr(scp.listener.index, "record", broken)
    ds = _slice(tmp_path)
    assert client_store(scp, [ds]) == [0x0000]
    scp.listener.stop()  # the retry at stop fails too
    assert instances(scp) == []
    monkeypatch.undo()
    settings = scp.listener.settings
    again = DicomListener(settings, scp.db)
    again.start()
    try:
        assert [i.sop_instance_uid for i in instances(scp)] == [ds.SOPInstanceUID]
    finally:
        again.stop()


def test_disk_failure_answers_a700(scp: Running, tmp_path: Path) -> None:
    (scp.data_dir / "dicom").rmdir()  # made at start; now a file where the folder should be
    (scp.data_dir / "dicom").write_text("a file where the folder should be")
    assert client_store(scp, [_slice(tmp_path)]) == [0xA700]
    assert instances(scp) == []


def test_hook_failure_does_not_change_the_answer(scp: Running, tmp_path: Path) -> None:
    def hook(_uid: str) -> None:
        raise RuntimeError("business logic bug")

    scp.listener.on_instance = hook
    assert client_store(scp, [_slice(tmp_path)]) == [0x0000]
    assert len(instances(scp)) == 1


# --------------------------------------------------------------------------- lifecycle


def test_accepted_sockets_have_tcp_nodelay(scp: Running) -> None:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(scp.host, scp.port, ae_title="TRIAGE")
    assert assoc.is_established
    try:
        server = scp.listener._server
        assert server is not None
        (peer,) = server.active
        assert peer.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert [p.calling_ae for p in scp.listener.associations] == ["PYSCU"]
    finally:
        assoc.release()


def test_start_stop_ready_and_port_in_use(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings.model_validate({"data_dir": tmp_path, "dicom_port": port})
    db = Database(settings.resolved_database_url)
    db.create_all()
    first = DicomListener(settings, db)
    assert not first.ready
    assert first.start() == ("127.0.0.1", port)
    assert first.ready and first.address == ("127.0.0.1", port)
    second = DicomListener(settings, db)
    with pytest.raises(ConfigError) as err:
        second.start()
    assert err.value.setting == "dicom_port"
    first.stop()
    assert not first.ready and first.address is None
    first.stop()  # idempotent
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    db.dispose()


# --------------------------------------------------------------------------- a 300-slice CT


def _check_all_stored(run: Running, study: SyntheticStudy) -> None:
    rows = instances(run)
    assert len(rows) == len(study.files) == 300
    assert sorted(r.instance_number or 0 for r in rows) == list(range(1, 301))
    assert all((run.data_dir / r.path).stat().st_size == r.size_bytes for r in rows)
    (st,) = studies(run)
    assert st.instance_count == 300 and st.state == "receiving"
    assert st.last_received_at == max(r.received_at for r in rows)
    assert len(run.seen) == 300
    # The files are what was sent, byte for byte after the file meta: no decode, no re-encode.
    sent = study.files[137].read_bytes()
    row = next(r for r in rows if r.instance_number == 138)
    stored = (run.data_dir / row.path).read_bytes()
    assert stored[-200_000:] == sent[-200_000:]
    assert pydicom.dcmread(run.data_dir / row.path).file_meta.SourceApplicationEntityTitle == (
        "TESTSCU"
    )


@pytest.mark.parametrize("associations", [1, 4])
def test_storescu_300_slices(scp: Running, ct300: SyntheticStudy, associations: int) -> None:
    parts = [ct300.files[i::associations] for i in range(associations)]
    procs = [
        subprocess.Popen(
            [dcmtk("storescu"), "-aet", "TESTSCU", "-aec", "TRIAGE", scp.host, str(scp.port)]
            + [str(f) for f in part],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )
        for part in parts
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    _check_all_stored(scp, ct300)


# --------------------------------------------------------------------------- compressed


def _compressed_copies(tmp_path: Path) -> tuple[SyntheticStudy, dict[str, tuple[str, list[Path]]]]:
    """A 10-slice CT and lossless compressed copies: {name: (storescu option, files)}."""
    study = write_head_ct(
        tmp_path / "src",
        hemorrhage=True,
        seed=21,
        patient_id="PC",
        accession="AC",
        n_slices=10,
        size=128,
    )
    tools = {
        "jpeg-lossless": ("dcmcjpeg", "-xs"),
        "jpeg-ls": ("dcmcjpls", "-xt"),
        "rle": ("dcmcrle", "-xr"),
    }
    out: dict[str, tuple[str, list[Path]]] = {}
    for name, (tool, option) in tools.items():
        folder = tmp_path / name
        folder.mkdir()
        files = []
        for f in study.files:
            target = folder / f.name
            subprocess.run([dcmtk(tool), str(f), str(target)], check=True, timeout=60)
            files.append(target)
        out[name] = (option, files)
    folder = tmp_path / "j2k"
    folder.mkdir()
    j2k = []
    for f in study.files:  # dcmtk has no JPEG 2000 encoder here: pydicom + OpenJPEG
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless)
        ds.save_as(folder / f.name, enforce_file_format=True)
        j2k.append(folder / f.name)
    out["jpeg2000"] = ("-xv", j2k)
    return study, out


def test_compressed_ct_is_stored_as_sent_and_decodes_when_read(
    scp: Running, tmp_path: Path
) -> None:
    original, copies = _compressed_copies(tmp_path)
    reference = load_volume(original.files)
    for name, (option, files) in copies.items():
        # each copy becomes a study of its own (the same UIDs would be deduplicated)
        sent: dict[str, Dataset] = {}
        for f in files:
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID = generate_uid(entropy_srcs=[original.study_uid, name])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=[original.series_uid, name])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, name])
            ds.save_as(f, enforce_file_format=True)
            sent[ds.SOPInstanceUID] = ds
        syntax = str(next(iter(sent.values())).file_meta.TransferSyntaxUID)
        res = dcmtk_storescu(scp.port, files, host=scp.host, aet="TESTSCU", options=[option])
        assert res.returncode == 0 and "Warning" not in res.stderr, (name, res.stderr)
        study_uid = generate_uid(entropy_srcs=[original.study_uid, name])
        rows = [r for r in instances(scp) if r.study_uid == study_uid]
        assert len(rows) == 10, name
        assert {r.transfer_syntax for r in rows} == {syntax}, name
        for r in rows:  # stored as received: the compressed bytes are the sender's
            stored = pydicom.dcmread(scp.data_dir / r.path)
            assert stored.file_meta.TransferSyntaxUID == syntax
            assert stored.PixelData == sent[r.sop_instance_uid].PixelData
        volume = load_volume([scp.data_dir / r.path for r in rows])
        np.testing.assert_array_equal(volume.hu, reference.hu)  # lossless: same HU


def test_deflated_data_sets_are_stored_and_read(scp: Running, tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian (storescu -xd deflates on the fly): every instance
    was refused 0xA900 'missing required UIDs' - the header reader got the preamble and DICM
    twice (found by a multi-scanner audit)."""
    study = write_head_ct(
        tmp_path / "src", hemorrhage=False, seed=22, patient_id="PD", accession="AD",
        n_slices=10, size=128,
    )  # fmt: skip
    res = dcmtk_storescu(scp.port, study.files, host=scp.host, aet="TESTSCU", options=["-xd"])
    assert res.returncode == 0 and "Warning" not in res.stderr, res.stderr
    rows = [r for r in instances(scp) if r.study_uid == study.study_uid]
    assert len(rows) == 10
    assert {r.transfer_syntax for r in rows} == {"1.2.840.10008.1.2.1.99"}
    volume = load_volume([scp.data_dir / r.path for r in rows])
    np.testing.assert_array_equal(volume.hu, load_volume(study.files).hu)


def _compressed_dataset(tmp_path: Path, fragment: bytes | None = None) -> Dataset:
    ds = _slice(tmp_path)
    if fragment is None:
        ds.compress(JPEG2000Lossless)
    else:
        ds.PixelData = encapsulate([fragment])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    return ds


def _store_compressed(run: Running, ds: Dataset) -> int:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    assoc = ae.associate(run.host, run.port, ae_title="TRIAGE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_compressed_pixel_data_that_is_not_a_codestream_gets_c210(
    scp: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert _store_compressed(scp, _compressed_dataset(tmp_path, b"not a JPEG 2000 stream")) == (
        0xC210
    )
    assert stored_files(scp.data_dir) == [] and instances(scp) == []
    assert "the first fragment is not a compressed image stream" in caplog.text


def test_syntax_without_decoder_gets_c212(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dicom_scp, "decoder_available", lambda ts: ts != JPEG2000Lossless)
    assert _store_compressed(scp, _compressed_dataset(tmp_path)) == dicom_scp.NO_DECODER
    assert stored_files(scp.data_dir) == []
    monkeypatch.undo()
    assert _store_compressed(scp, _compressed_dataset(tmp_path)) == 0x0000


# --------------------------------------------------------------------------- association policy


def _listener(tmp_path: Path, **settings: object) -> Iterator[Running]:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    s = Settings.model_validate({"data_dir": data_dir, "dicom_port": 0, **settings})
    db = Database(s.resolved_database_url)
    db.create_all()
    seen: list[str] = []
    listener = DicomListener(s, db, on_instance=seen.append)
    host, port = listener.start()
    try:
        yield Running(listener, host, port, db, data_dir, seen)
    finally:
        listener.stop()
        db.dispose()


def _associate(run: Running, calling: str = "PYSCU") -> Any:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate(run.host, run.port, ae_title="TRIAGE")


def test_allowlist_accepts_listed_ae_from_its_address_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peers = {"CT1": ["127.0.0.1"], "CT2": ["10.9.9.0/24"], "PACS": ["*"]}
    for run in _listener(tmp_path, dicom_allowed_peers=peers):
        for calling, accepted in (("CT1", True), ("PACS", True), ("CT2", False), ("WHO", False)):
            assoc = _associate(run, calling)
            if accepted:
                assert assoc.is_established, calling
                assert int(assoc.send_c_echo().Status) == 0
                assoc.release()
            else:
                assert assoc.is_rejected, calling
                rj = assoc.acceptor.primitive
                assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)
        assert "calling AE 'WHO', rejected" in caplog.text


def test_empty_allowlist_accepts_anyone_and_says_so(
    scp: Running, caplog: pytest.LogCaptureFixture
) -> None:
    assoc = _associate(scp, "ANYONE")
    assert assoc.is_established
    assoc.release()


def test_one_association_over_the_limit_is_rejected_as_transient(tmp_path: Path) -> None:
    for run in _listener(tmp_path, dicom_max_associations=2):
        held = [_associate(run) for _ in range(2)]
        assert all(a.is_established for a in held)
        extra = _associate(run)
        assert extra.is_rejected
        rj = extra.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)  # transient, limit
        for a in held:
            a.release()
        time.sleep(0.5)
        again = _associate(run)
        assert again.is_established
        again.release()


def _associate_rq_bytes() -> bytes:
    """A real A-ASSOCIATE-RQ (calling RAW, called TRIAGE, Verification), as pynetdicom
    encodes it: captured from pynetdicom sending it to a socket of ours."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        ae = AE(ae_title="RAW")
        ae.acse_timeout = 2
        ae.add_requested_context(Verification)
        port = srv.getsockname()[1]
        t = threading.Thread(target=lambda: ae.associate("127.0.0.1", port, ae_title="TRIAGE"))
        t.start()
        conn, _ = srv.accept()
        with conn:
            head = _recv_exactly(conn, 6)
            body = _recv_exactly(conn, int.from_bytes(head[2:6], "big"))
        t.join(10)
    return head + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _raw_association(run: Running) -> socket.socket:
    sock = socket.create_connection((run.host, run.port), timeout=10)
    sock.sendall(_associate_rq_bytes())
    head = _recv_exactly(sock, 6)
    assert head[0] == 0x02, "A-ASSOCIATE-AC expected"
    _recv_exactly(sock, int.from_bytes(head[2:6], "big"))
    return sock


def test_a_4_gib_pdu_claim_is_aborted_not_buffered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for run in _listener(tmp_path):
        with _raw_association(run) as sock:
            start = time.monotonic()
            sock.sendall(b"\x04\x00" + (0xFFFFFFFF).to_bytes(4, "big") + b"\x00" * 1000)
            reply = _recv_exactly(sock, 10)
            assert reply[:1] == b"\x07" and reply[8:10] == b"\x02\x06"  # A-ABORT, provider
            assert sock.recv(10) == b""  # and the connection is closed
            assert time.monotonic() - start < 5
        assert "claims a PDU of 4294967295 bytes" in caplog.text
        assoc = _associate(run)  # the listener goes on serving
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()


def test_a_stalled_read_is_closed_after_the_network_timeout(tmp_path: Path) -> None:
    for run in _listener(tmp_path, dicom_network_timeout_seconds=1):
        with _raw_association(run) as sock:
            sock.sendall(b"\x04\x00" + (1000).to_bytes(4, "big") + b"\x00" * 10)
            start = time.monotonic()
            sock.settimeout(15)
            while sock.recv(100):
                pass
            assert time.monotonic() - start < 10


def test_aborted_association_keeps_what_was_acknowledged(scp: Running, tmp_path: Path) -> None:
    study = write_head_ct(
        tmp_path / "s",
        hemorrhage=False,
        seed=8,
        patient_id="P8",
        accession="A8",
        n_slices=6,
        size=64,
    )
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(scp.host, scp.port, ae_title="TRIAGE")
    assert assoc.is_established
    for f in study.files[:4]:
        assert int(assoc.send_c_store(f).Status) == 0
    assoc.abort()  # mid-study: 2 slices never sent
    time.sleep(0.3)
    rows = instances(scp)
    assert len(rows) == 4
    assert all((scp.data_dir / r.path).is_file() for r in rows)
    (st,) = studies(scp)
    # Nothing marks the study: it stays RECEIVING and completes (time-based) only after a
    # quiet period counted from its last instance, like any other.
    assert st.state == "receiving" and st.completed_at is None and st.instance_count == 4
    assert st.last_received_at == max(r.received_at for r in rows)
    # The rest arrives on a new association, with a re-send of the first: deduplicated.
    assert storescu(scp, study.files[3:]).returncode == 0
    (st,) = studies(scp)
    assert st.instance_count == 6 and len(instances(scp)) == 6


def test_low_disk_space_refuses_with_a700_until_room_comes_back(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = {"bytes": 10 * 1024 * 1024}
    monkeypatch.setattr(dicom_scp, "disk_free_bytes", lambda _path: free["bytes"])
    first, second = _slice(tmp_path, 31), _slice(tmp_path, 32)
    assert client_store(scp, [first]) == [0xA700]
    assert stored_files(scp.data_dir) == []
    free["bytes"] = 50 * 1024**3
    assert client_store(scp, [first, second]) == [0x0000, 0x0000]
    assert len(instances(scp)) == 2


def test_the_same_instance_from_parallel_associations_is_stored_once(
    scp: Running, tmp_path: Path
) -> None:
    ds = _slice(tmp_path, 41)
    statuses: list[int] = []

    def send() -> None:
        statuses.extend(client_store(scp, [ds] * 5))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert statuses == [0x0000] * 20
    (row,) = instances(scp)
    assert row.sop_instance_uid == ds.SOPInstanceUID
    assert len(stored_files(scp.data_dir)) == 1 and scp.seen == [row.study_uid]
    (st,) = studies(scp)
    assert st.instance_count == 1


def test_instances_past_the_spill_size_are_stored_as_sent(tmp_path: Path) -> None:
    """A data set larger than dicom_spill_bytes waits on disk while it arrives (memory per
    association stays bounded); what is stored is still exactly what was sent."""
    study = write_head_ct(
        tmp_path / "big",
        hemorrhage=False,
        seed=12,
        patient_id="P12",
        accession="A12",
        n_slices=3,
    )
    for run in _listener(tmp_path, dicom_spill_bytes=64 * 1024):
        result = storescu(run, study.files)
        assert result.returncode == 0, result.stderr
        rows = instances(run)
        assert len(rows) == 3
        for row in rows:
            stored = (run.data_dir / row.path).read_bytes()
            sent = next(
                f.read_bytes()
                for f in study.files
                if pydicom.dcmread(f).SOPInstanceUID == row.sop_instance_uid
            )
            assert stored[-400_000:] == sent[-400_000:] and row.size_bytes == len(stored)
        leftovers = [p for p in run.data_dir.iterdir() if p.name.startswith(".spool")]
        assert leftovers == []


# --------------------------------------------------------------------------- streamed write


#: What the raw peer proposes here: Verification (context 1), CT (3), MR (5).
_CONTEXTS = (str(Verification), str(CTImageStorage), str(MRImageStorage))


def _c_store(peer: RawPeer, data: bytes, context_id: int, **command: Any) -> dict[int, bytes]:
    """One C-STORE on an association, the data set in 16 KiB fragments; the response."""
    peer.p_data((context_id, 0x03, command_set(0x0001, 1, data=True, **command)))
    step = 16384
    for i in range(0, len(data), step):
        peer.p_data((context_id, 0x02 if i + step >= len(data) else 0x00, data[i : i + step]))
    return peer.response()


def _send_raw(
    run: Running, data: bytes, *, sop_class: str, sop_instance: str, context_id: int = 3
) -> int:
    """One C-STORE from a raw peer on its own association; returns the status."""
    peer = RawPeer((run.host, run.port))
    try:
        established(peer, abstract_syntaxes=_CONTEXTS)
        rsp = _c_store(peer, data, context_id, sop_class=sop_class, sop_instance=sop_instance)
        peer.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        assert peer.recv_pdu()[0] == 0x06  # the row is committed before the next PDU is read
        return status_of(rsp)
    finally:
        peer.close()


def test_streamed_file_is_the_meta_header_and_the_data_set_as_sent(
    scp: Running, tmp_path: Path
) -> None:
    ds = _slice(tmp_path, 51)
    data = encoded_dataset(ds)
    assert _send_raw(scp, data, sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID) == 0
    (row,) = instances(scp)
    stored = (scp.data_dir / row.path).read_bytes()
    assert stored.endswith(data) and row.size_bytes == len(stored)
    meta = pydicom.dcmread(scp.data_dir / row.path).file_meta
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.SourceApplicationEntityTitle == "RAWPEER"
    assert list((scp.data_dir / ".incoming").iterdir()) == []


def test_a_command_without_its_sop_instance_uid_is_stored_from_the_data_set(
    scp: Running, tmp_path: Path
) -> None:
    ds = _slice(tmp_path, 52)
    data = encoded_dataset(ds)
    assert _send_raw(scp, data, sop_class=CTImageStorage, sop_instance="") == 0
    (row,) = instances(scp)
    stored = pydicom.dcmread(scp.data_dir / row.path)
    assert stored.file_meta.MediaStorageSOPClassUID == CTImageStorage == row.sop_class_uid
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert (scp.data_dir / row.path).read_bytes().endswith(data)
    assert list((scp.data_dir / ".incoming").iterdir()) == []


def _nothing_stored(run: Running) -> None:
    assert stored_files(run.data_dir) == []  # .incoming included
    assert instances(run) == [] and studies(run) == []
    assert list((run.data_dir / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("context_id", "sop_class"),
    [
        (1, CTImageStorage),  # a CT image on the Verification context
        (5, CTImageStorage),  # a CT image on the MR context
        (3, MRImageStorage),  # the CT context, the command says MR (the data set is CT)
    ],
)
def test_a_c_store_off_its_presentation_context_gets_0122_and_stores_nothing(
    scp: Running,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    context_id: int,
    sop_class: str,
) -> None:
    opened = _count_streamed_files(monkeypatch)
    ds = _slice(tmp_path, 59)
    data = encoded_dataset(ds)
    peer = RawPeer((scp.host, scp.port))
    try:
        established(peer, abstract_syntaxes=_CONTEXTS)
        command = {"sop_class": sop_class, "sop_instance": ds.SOPInstanceUID}
        rsp = _c_store(peer, data, context_id, **command)
        assert status_of(rsp) == 0x0122 and b"context" in rsp[0x0902]
        assert opened == []  # no streamed write was begun
        _nothing_stored(scp)
        assert scp.listener.counters["sop_class_refused"] == 1
        # the association goes on: the same instance on the CT context is stored
        rsp = _c_store(peer, data, 3, sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID)
        assert status_of(rsp) == 0
    finally:
        peer.close()
    assert _rows_eventually(scp, 1) == {ds.SOPInstanceUID}


def test_a_data_set_of_another_sop_class_than_its_command_gets_a900(
    scp: Running, tmp_path: Path
) -> None:
    """The command says CT, on the CT context, but the data set is an MR image: refused
    (the streamed file begun for it is removed), not stored under either class."""
    ds = _slice(tmp_path, 60)
    ds.SOPClassUID = MRImageStorage
    data = encoded_dataset(ds)
    status = _send_raw(scp, data, sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID)
    assert status == 0xA900
    _nothing_stored(scp)


def test_a_release_in_the_middle_of_a_data_set_stores_nothing_and_is_counted(
    scp: Running, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds = _slice(tmp_path, 61)
    data = encoded_dataset(ds)
    peer = RawPeer((scp.host, scp.port))
    try:
        established(peer)
        command = command_set(
            0x0001, 1, data=True, sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID
        )
        peer.p_data((3, 0x03, command))
        peer.p_data((3, 0x00, data[: len(data) // 2]))  # past a write batch: on disk already
        peer.sock.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
        assert peer.recv_pdu() == (0x06, b"\x00\x00\x00\x00")  # A-RELEASE-RP
        assert peer.closed()
    finally:
        peer.close()
    deadline = time.monotonic() + 5
    while not scp.listener.counters["released_mid_message"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert scp.listener.counters["released_mid_message"] == 1
    _nothing_stored(scp)
    assert ds.SOPInstanceUID in caplog.text and "RAWPEER" in caplog.text


def test_a_transfer_broken_off_leaves_no_file(scp: Running, tmp_path: Path) -> None:
    ds = _slice(tmp_path, 53)
    data = encoded_dataset(ds)
    peer = RawPeer((scp.host, scp.port))
    try:
        established(peer)
        command = command_set(
            0x0001, 1, data=True, sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID
        )
        peer.p_data((3, 0x03, command))
        peer.p_data((3, 0x00, data[: len(data) // 2]))  # past a write batch: on disk already
        peer.sock.sendall(bytes([7, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT
        assert peer.closed()
    finally:
        peer.close()
    deadline = time.monotonic() + 5
    while list((scp.data_dir / ".incoming").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_files(scp.data_dir) == [] and instances(scp) == []


def test_leftovers_of_a_crash_are_cleared_at_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / ".incoming").mkdir(parents=True)
    (data_dir / ".incoming" / "tmpab12.tmp").write_bytes(b"half an instance")
    for run in _listener(tmp_path):
        assert list((run.data_dir / ".incoming").iterdir()) == []


def _count_streamed_files(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UIDs the listener opens a streamed file for, from now on."""
    opened: list[str] = []

    class Counting(IncomingFile):
        def __init__(self, *args: Any) -> None:
            opened.append(args[3])
            super().__init__(*args)

    monkeypatch.setattr(dicom_scp, "IncomingFile", Counting)
    return opened


def test_a_re_sent_instance_is_not_written_again(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = _slice(tmp_path, 54)
    assert client_store(scp, [ds]) == [0x0000]
    opened = _count_streamed_files(monkeypatch)
    other = _slice(tmp_path, 55)
    assert client_store(scp, [ds, other]) == [0x0000, 0x0000]
    assert opened == [other.SOPInstanceUID]  # the copy streamed nowhere
    assert len(instances(scp)) == 2


def test_a_streamed_file_that_cannot_be_placed_is_written_from_memory(
    scp: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E.g. the incoming folder on another file system (rename: EXDEV): the instance is still
    stored, from the data set in memory, and nothing is left in the incoming folder."""
    tried: list[Path] = []

    def cross_device(self: IncomingFile, path: Path) -> int:
        tried.append(path)
        self.discard()
        raise StoreError("cannot write: [Errno 18] Invalid cross-device link")

    monkeypatch.setattr(IncomingFile, "finish", cross_device)
    ds = _slice(tmp_path, 56)
    assert client_store(scp, [ds]) == [0x0000]
    (row,) = instances(scp)
    stored = scp.data_dir / row.path
    assert stored.read_bytes().endswith(encoded_dataset(ds))
    assert pydicom.dcmread(stored).SOPInstanceUID == ds.SOPInstanceUID
    assert list((scp.data_dir / ".incoming").iterdir()) == []
    assert tried == [stored]  # the streamed file was tried first


def test_incoming_folder_on_another_file_system_writes_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Decided once at start: no streamed write (each would fail its rename), one warning."""
    monkeypatch.setattr(dicom_scp, "same_file_system", lambda _a, _b: False)
    opened = _count_streamed_files(monkeypatch)
    for run in _listener(tmp_path):
        assert client_store(run, [_slice(tmp_path, 57), _slice(tmp_path, 58)]) == [0, 0]
        assert len(instances(run)) == 2 and opened == []
    assert "different file systems" in caplog.text
    assert caplog.text.count("different file systems") == 1


def test_same_file_system_compares_devices(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert dicom_scp.same_file_system(tmp_path / "a", tmp_path / "b")
    assert not dicom_scp.same_file_system(tmp_path, Path("/proc"))
