"""Where a C-STORE's data set waits while it arrives: in memory, or on disk once it is large.

A CT slice (~0.5 MiB) stays in memory: one buffer, written once when it is complete. A data set
past ``spill_bytes`` (a large multi-frame, or a peer that never stops sending) is moved to an
unlinked temporary file in the data directory and the rest of it appended there, so an
association holds at most ``spill_bytes`` of memory whatever it sends. The complete data set is
then handed over memory-mapped: the header is read and the file written from the page cache,
without a copy in the process.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from pathlib import Path

from triage.errors import StoreError
from triage.store.durable import write_all

#: What a complete data set is handed over as: both support ``memoryview``.
DataSetBuffer = bytearray | mmap.mmap


class Spool:
    """The fragments of one data set, in order. Raises :class:`StoreError` when the spool file
    cannot be created or written (the caller discards the rest and answers 0xA700)."""

    def __init__(self, spill_bytes: int, directory: Path | None) -> None:
        self.spill_bytes = spill_bytes
        self.directory = directory
        self.size = 0
        self._chunks: list[bytearray] = []
        self._file: int | None = None
        self._map: mmap.mmap | None = None

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def add(self, fragment: bytearray) -> None:
        self.size += len(fragment)
        if self._file is None and self.size <= self.spill_bytes:
            self._chunks.append(fragment)
            return
        try:
            if self._file is None:
                self._file = self._open()
                chunks, self._chunks = self._chunks, []
                write_all(self._file, chunks)
            write_all(self._file, [fragment])
        except OSError as exc:
            self.close()
            raise StoreError(
                f"cannot spool a {self.size >> 20} MiB data set to disk: {exc}"
            ) from exc

    def _open(self) -> int:
        directory = self.directory if self.directory is not None else Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile:  # a file with no name: nothing to clean up after a crash
            try:
                return os.open(directory, tmpfile | os.O_RDWR, 0o600)
            except OSError:  # a file system without O_TMPFILE
                pass
        fd, name = tempfile.mkstemp(dir=directory, prefix=".spool-")
        os.unlink(name)
        return fd

    def finish(self) -> DataSetBuffer:
        """The whole data set (call once, then :meth:`close` when done with it)."""
        if self._file is None:
            chunks, self._chunks = self._chunks, []
            if len(chunks) == 1:
                return chunks[0]
            return bytearray().join(chunks)
        try:
            self._map = mmap.mmap(self._file, self.size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            self.close()
            raise StoreError(f"cannot map the spooled data set: {exc}") from exc
        return self._map

    def close(self) -> None:
        """Free the memory or the temporary file. Idempotent."""
        self._chunks = []
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still exported: freed when it goes
                self._map.close()
            self._map = None
        if self._file is not None:
            os.close(self._file)
            self._file = None
