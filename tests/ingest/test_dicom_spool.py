"""The data-set spool: memory below the threshold, an unnamed file above it."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from triage.errors import StoreError
from triage.ingest.dicom_spool import Spool


def _fragments(total: int, size: int) -> list[bytearray]:
    data = os.urandom(total)
    return [bytearray(data[i : i + size]) for i in range(0, total, size)]


def test_small_data_set_stays_in_memory(tmp_path: Path) -> None:
    spool = Spool(1000, tmp_path)
    parts = _fragments(900, 100)
    for part in parts:
        spool.add(part)
    assert not spool.on_disk and spool.size == 900
    out = spool.finish()
    assert isinstance(out, bytearray) and out == b"".join(parts)
    spool.close()


def test_large_data_set_goes_to_an_unnamed_file(tmp_path: Path) -> None:
    spool = Spool(1000, tmp_path)
    parts = _fragments(5000, 300)
    for i, part in enumerate(parts):
        spool.add(part)
        assert spool.on_disk == (sum(map(len, parts[: i + 1])) > 1000)
    assert list(tmp_path.iterdir()) == []  # nothing to clean up after a crash
    out = spool.finish()
    assert isinstance(out, mmap.mmap)
    view = memoryview(out)
    assert view.tobytes() == b"".join(parts)
    view.release()
    spool.close()
    spool.close()  # idempotent
    assert out.closed


def test_spool_that_cannot_be_written_raises_store_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    spool = Spool(10, not_a_dir / "spool")
    spool.add(bytearray(5))
    with pytest.raises(StoreError, match="cannot spool"):
        spool.add(bytearray(50))
    assert not spool.on_disk
