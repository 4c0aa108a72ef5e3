"""The streamed write on its own: fragments appended as they come, the file renamed into place
and made durable at the end, nothing left behind on any failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from triage.errors import StoreError
from triage.ingest import dicom_stream
from triage.ingest.dicom_stream import IncomingFile, clear_incoming, incoming_dir


def _incoming(tmp_path: Path) -> Path:
    directory = incoming_dir(tmp_path)
    directory.mkdir()
    return directory


def test_fragments_of_any_size_end_up_in_order_after_the_head(tmp_path: Path) -> None:
    directory = _incoming(tmp_path)
    head = b"H" * 132
    f = IncomingFile(directory, head, "1.2", "1.2.3")
    fragments = [os.urandom(n) for n in (1, 7, 16384, 200_000, 3, 65536)]
    fragments += [os.urandom(2) for _ in range(dicom_stream.MAX_BATCH_FRAGMENTS + 5)]
    for fragment in fragments:
        f.add(bytearray(fragment))
    # the batches written so far are in the file already, before finish
    assert len(list(directory.iterdir())) == 1
    assert next(directory.iterdir()).stat().st_size >= 132 + 200_000
    target = tmp_path / "dicom" / "1.2.9" / "1.2.8" / "1.2.3.dcm"
    size = f.finish(target)
    expected = head + b"".join(fragments)
    assert target.read_bytes() == expected and size == len(expected)
    assert list(directory.iterdir()) == []
    f.discard()  # after finish: a no-op, the file stays
    assert target.is_file()


def test_discard_removes_the_file(tmp_path: Path) -> None:
    directory = _incoming(tmp_path)
    f = IncomingFile(directory, b"head", "1.2", "1.2.3")
    f.add(bytearray(b"x" * 300_000))
    f.discard()
    f.discard()
    assert list(directory.iterdir()) == [] and not f.usable
    with pytest.raises(StoreError):
        f.finish(tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_a_write_error_marks_the_file_failed_and_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _incoming(tmp_path)
    f = IncomingFile(directory, b"head", "1.2", "1.2.3")

    def full(*_args: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dicom_stream.os, "writev", full)
    f.add(bytearray(dicom_stream.WRITE_BATCH))  # never raises
    assert not f.usable and "No space left" in (f.failed or "")
    assert list(directory.iterdir()) == []
    with pytest.raises(StoreError, match="No space left"):
        f.finish(tmp_path / "x.dcm")


def test_a_failing_fsync_leaves_nothing_under_either_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _incoming(tmp_path)
    f = IncomingFile(directory, b"head", "1.2", "1.2.3")
    f.add(bytearray(b"body"))

    def broken(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dicom_stream.os, "fsync", broken)
    target = tmp_path / "d" / "x.dcm"
    with pytest.raises(StoreError, match="Input/output error"):
        f.finish(target)
    assert not target.exists() and list(directory.iterdir()) == []


def test_clear_incoming_removes_leftovers(tmp_path: Path) -> None:
    assert clear_incoming(tmp_path) == 0  # no folder yet
    directory = _incoming(tmp_path)
    unfinished = IncomingFile(directory, b"head", "1.2", "1.2.3")
    unfinished.add(bytearray(b"x"))
    (directory / "other.tmp").write_bytes(b"y")
    assert clear_incoming(tmp_path) == 2
    assert list(directory.iterdir()) == []
    unfinished.discard()  # its name is gone already: closing is all that is left


def test_cannot_create_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot create"):
        IncomingFile(tmp_path / "missing", b"head", "1.2", "1.2.3")
