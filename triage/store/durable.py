"""Durable file writes: a file we acknowledged survives power loss, and a failed write leaves
nothing behind.

- :func:`write_durably`: temp file, fsync, atomic rename, directory fsync (the AI results'
  key images);
- :func:`write_instance_file`: a received instance, temp file, rename, then fsync and
  directory fsync (one journal commit on ext4; why the order is safe is in its docstring);
- :func:`publish_file`: the rename and the fsyncs of a complete temp file, shared with the
  streamed write (:mod:`triage.ingest.dicom_stream`);
- :func:`make_dirs_durably` / :func:`fsync_dir`: new folders whose entries survive a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from triage.errors import StoreError

#: Buffers per ``writev`` call (the kernel refuses more than IOV_MAX, 1024 on Linux).
WRITEV_MAX = 512


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(directory: Path) -> None:
    """``mkdir -p`` that also fsyncs the parent of every directory it creates, so the new
    directory entries themselves survive a crash."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created concurrently: fine
            new.mkdir()
        fsync_dir(new.parent)


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temp file (fd, name) in ``path``'s folder, created durably if missing; named
    ``.<name>.*.tmp`` (the start-up recovery removes leftovers). Raises StoreError."""
    try:
        make_dirs_durably(path.parent)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot create {path.parent}: {exc}") from exc


def write_durably(path: Path, data: bytes | Iterable[bytes | memoryview]) -> int:
    """Write ``data`` (bytes, or an iterable of byte chunks) to ``path`` atomically and durably.

    The bytes go to a temp file in the same directory, which is flushed, fsynced and renamed
    over ``path`` (``os.replace``), then the directory is fsynced. Readers see the old file or
    the complete new one, never a partial one. On any error the temp file is removed and
    :class:`StoreError` is raised (errors raised by the ``data`` iterable itself propagate
    unchanged, after the same clean-up). Returns the number of bytes written.
    """
    path = Path(path)
    fd, tmp_name = _temp_beside(path)
    tmp = Path(tmp_name)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                size += f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc}") from exc
        raise
    return size


def write_instance_file(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    """Write a received instance to ``path`` durably, with one disk-cache flush where the
    file system allows it. Returns the number of bytes written; raises :class:`StoreError`
    (nothing is left behind: neither the temp file nor ``path``).

    The bytes go to a temp file in the same directory, which is renamed to ``path`` and only
    then fsynced, followed by the directory. Every byte is written before the rename, so a
    reader never sees a partial file; the order differs from :func:`write_durably` (fsync,
    then rename) only in what a power cut in the middle can leave: a file under its final
    name whose blocks were not flushed. Such a file was never acknowledged nor indexed, and
    the start-up recovery (:meth:`triage.ingest.dicom_index.InstanceIndex.recover`) checks
    every unindexed file and removes it. The gain: on ext4 the file's fsync commits the rename
    in the same journal transaction, so the directory fsync is left with a cache flush, where
    fsync-then-rename pays two journal commits (docs/performance.md).

    ``path`` must not be written concurrently by another thread (the SCP serialises per SOP
    Instance UID).
    """
    path = Path(path)
    fd, tmp_name = _temp_beside(path)
    try:
        size = write_all(fd, list(chunks))
    except BaseException as exc:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc}") from exc
        raise
    publish_file(fd, Path(tmp_name), path)
    return size


def write_all(fd: int, chunks: Sequence[bytes | bytearray | memoryview]) -> int:
    """Write every byte of ``chunks`` to ``fd`` at its offset (``writev`` of at most
    :data:`WRITEV_MAX` buffers at a time, resumed after a short write); returns the number of
    bytes written. Raises OSError."""
    views = [view for c in chunks if (view := memoryview(c).cast("B"))]
    size = 0
    while views:
        n = os.writev(fd, views[:WRITEV_MAX])
        size += n
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if n:
            views[0] = views[0][n:]
    return size


def publish_file(fd: int, written: Path, path: Path) -> None:
    """Give the complete temp file ``written`` (open as ``fd``, closed here) its final name
    ``path`` in an existing folder, then fsync it and the folder: on ext4 the file's fsync
    commits the rename in the same journal transaction. Raises :class:`StoreError`; nothing
    is left under either name."""
    try:
        try:
            os.replace(written, path)
            written = path
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            written.unlink()
        raise StoreError(f"cannot write {path}: {exc}") from exc
