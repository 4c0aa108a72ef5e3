"""Durable writes: what is written is whole, and a failure leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage.errors import StoreError
from triage.store import durable
from triage.store.durable import write_durably, write_instance_file


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_write_bytes_and_chunks(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    assert write_durably(target, b"hello") == 5
    assert target.read_bytes() == b"hello"
    assert write_durably(target, [b"new ", memoryview(b"content")]) == 11
    assert target.read_bytes() == b"new content"
    assert _leftovers(target.parent) == ["x.dcm"]


def test_failing_chunks_leave_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    write_durably(target, b"old")

    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ValueError("peer went away")

    with pytest.raises(ValueError, match="peer went away"):
        write_durably(target, chunks())
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == ["x.dcm"]


def test_fsync_failure_raises_store_error_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    target = tmp_path / "d" / "x.dcm"
    target.parent.mkdir()
    monkeypatch.setattr(durable.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="cannot write"):
        write_durably(target, b"data")
    assert _leftovers(target.parent) == []


def test_unwritable_directory_raises_store_error(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file, not a folder")
    with pytest.raises(StoreError):
        write_durably(tmp_path / "blocker" / "x.dcm", b"data")


def test_replace_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(_src: object, _dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable.os, "replace", broken_replace)
    with pytest.raises(StoreError, match="No space"):
        write_durably(tmp_path / "x.dcm", b"data")
    assert _leftovers(tmp_path) == []


def test_write_instance_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "x.dcm"
    assert write_instance_file(target, [b"head", memoryview(b"-body" * 1000)]) == 5004
    assert target.read_bytes() == b"head" + b"-body" * 1000
    assert _leftovers(target.parent) == ["x.dcm"]


def test_write_instance_file_fsync_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", broken_fsync)
    with pytest.raises(StoreError, match="Input/output"):
        write_instance_file(tmp_path / "x.dcm", [b"data"])
    assert _leftovers(tmp_path) == []  # neither the temp file nor the renamed one


def test_write_instance_file_failing_chunks_leave_nothing(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"part"
        raise ValueError("peer went away")

    with pytest.raises(ValueError, match="peer went away"):
        write_instance_file(tmp_path / "x.dcm", chunks())
    assert _leftovers(tmp_path) == []


def test_write_all_writes_every_byte_of_many_small_and_empty_chunks(tmp_path: Path) -> None:
    chunks = [bytes([i % 251]) * (i % 5) for i in range(3 * durable.WRITEV_MAX + 7)]
    chunks.append(memoryview(b"tail"))
    fd = os.open(tmp_path / "x", os.O_WRONLY | os.O_CREAT)
    try:
        assert durable.write_all(fd, chunks) == sum(len(c) for c in chunks)
    finally:
        os.close(fd)
    assert (tmp_path / "x").read_bytes() == b"".join(bytes(c) for c in chunks)
