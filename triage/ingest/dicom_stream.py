"""The streamed write: a C-STORE's data set goes to disk while it is still arriving.

An instance file is its File Meta Information, which the C-STORE-RQ command already gives
(SOP Class and Instance UIDs, the context's transfer syntax, the calling AE title), followed by
the data set exactly as received. So the file can be opened when the command arrives and each
data set fragment appended as it comes in, while the peer is still sending the rest; the
kernel is asked to start writing each 128 KiB out at once (``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``, Linux; a hint, not a guarantee). When the last fragment is in and
the header has been checked, :meth:`IncomingFile.finish` writes the tail, renames the file to
its final name, fsyncs it and its directory: by then most of its pages are on disk already, so
the fsync, which the Success waits for, costs a fraction of writing the whole file then
(measured: docs/performance.md).

The file is written under ``<data_dir>/.incoming/`` until it is renamed: its final folder
depends on the Study and Series UIDs, which are in the data set. Whatever is left there (an
association aborted mid-transfer, a crash) was never acknowledged; :func:`clear_incoming`
removes it at start-up.

Nothing here is needed for correctness: a file that fails to write, or whose command does not
match its data set, is discarded and the instance written from memory as before
(:func:`~triage.store.durable.write_instance_file`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from triage.errors import StoreError
from triage.store.durable import make_dirs_durably, publish_file, write_all

log = logging.getLogger(__name__)

INCOMING_SUBDIR = ".incoming"
#: Fragments are written (one ``writev``) and their write-back started every this many bytes.
WRITE_BATCH = 128 << 10
#: ... or every this many fragments (a peer sending tiny PDVs; below the kernel's IOV_MAX).
MAX_BATCH_FRAGMENTS = 256
SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux only; the os module does not offer it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_start_write_back = _sync_file_range()


def incoming_dir(data_dir: Path) -> Path:
    return Path(data_dir) / INCOMING_SUBDIR


def clear_incoming(data_dir: Path) -> int:
    """Remove what an earlier run left in the incoming folder (never acknowledged); returns
    how many files were removed."""
    removed = 0
    directory = incoming_dir(data_dir)
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except OSError as exc:
                    log.warning("could not remove %s: %s", entry.path, exc)
    return removed


class IncomingFile:
    """One instance file written as its data set arrives. :meth:`add` never raises: a write
    error marks the file failed (and removes it); :meth:`finish` then raises
    :class:`StoreError` and the caller writes the instance another way."""

    def __init__(self, directory: Path, head: bytes, sop_class_uid: str, sop_instance_uid: str):
        #: What the File Meta Information says; the data set must agree for the file to be used.
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.failed: str | None = None
        self._pending: list[bytearray] = []
        self._pending_bytes = 0
        self._synced = 0  # bytes whose write-back has been started
        try:
            fd, name = tempfile.mkstemp(dir=directory, suffix=".tmp")
        except OSError as exc:
            raise StoreError(f"cannot create a file in {directory}: {exc}") from exc
        self._fd: int | None = fd
        self._name = name
        self.size = 0
        self._write([head])

    @property
    def usable(self) -> bool:
        """Open and not failed (a failure closes and removes the file)."""
        return self._fd is not None

    def add(self, fragment: bytearray) -> None:
        """Append a data set fragment (the caller keeps it unchanged until :meth:`finish`)."""
        if self._fd is None:
            return
        self._pending.append(fragment)
        self._pending_bytes += len(fragment)
        if self._pending_bytes >= WRITE_BATCH or len(self._pending) >= MAX_BATCH_FRAGMENTS:
            self._flush(start_write_back=True)

    def _flush(self, start_write_back: bool) -> None:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        self._write(pending)
        if start_write_back and self._fd is not None and _start_write_back is not None:
            # Errors are ignored: this only starts the write-back early, fsync still decides.
            _start_write_back(
                self._fd, self._synced, self.size - self._synced, SYNC_FILE_RANGE_WRITE
            )
            self._synced = self.size

    def _write(self, chunks: list[bytearray] | list[bytes]) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            self.size += write_all(fd, chunks)
        except OSError as exc:
            self.failed = f"cannot write {self._name}: {exc}"
            log.warning("streamed write abandoned: %s", self.failed)
            self.discard()

    def finish(self, path: Path) -> int:
        """Write the rest, rename to ``path``, fsync the file and the folder; returns the file
        size. Raises :class:`StoreError` (nothing left behind under either name)."""
        self._flush(start_write_back=False)
        fd = self._fd
        if fd is None:
            raise StoreError(self.failed or "streamed file already closed")
        path = Path(path)
        try:
            make_dirs_durably(path.parent)
        except OSError as exc:
            self.discard()
            raise StoreError(f"cannot create {path.parent}: {exc}") from exc
        self._fd = None  # publish_file closes it and cleans up after itself
        publish_file(fd, Path(self._name), path)
        return self.size

    def discard(self) -> None:
        """Close and remove the file, unless :meth:`finish` renamed it. Idempotent."""
        fd, self._fd = self._fd, None
        self._pending = []
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self._name)
