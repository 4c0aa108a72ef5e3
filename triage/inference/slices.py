"""Slices read while a study arrives, so that a complete study's volume is only stacked.

The DICOM listener tells the cache about each CT image it stored (:meth:`SliceCache.offer`,
after the instance's index row is committed, on the association's thread: it only queues the
path). One worker thread reads each file as :func:`~triage.inference.volume.load_volume`
would (:func:`~triage.inference.volume.read_slice`: header, pixels in HU) and keeps the
result. At completion the analyzer's ``load_volume`` :meth:`takes <SliceCache.take>` each
read from here; a file not read yet is read there and then (the worker skips it), one being
read is waited for. The volume is the same either way; the cache only moves the work earlier.

Bounded: at most ``budget_bytes`` of pixels are kept (the oldest reads are dropped first, and
are read again at completion if needed), at most ``max_queued`` paths wait (more are not
queued). A read is used only if the file is still the one that was read (same inode, size and
modification time). The worker runs at a lower CPU priority than the listeners (nice +5 for
its thread, where the OS allows it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.inference.volume import SliceRead, read_slice

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30  # 1 GiB of HU pixels: about 1,000 slices of 512 x 512
DEFAULT_MAX_QUEUED = 20_000
MIN_SERIES_SLICES = 64
DEFAULT_MAX_AGE_SECONDS = 900.0  # a read not taken by then (a study no model reads) is dropped

_QUEUED, _READING = "queued", "reading"


@dataclass
class _Series:
    """One series' slices, placed one after another in one array as they are read, so that
    ``load_volume`` can take them as a view when they arrive in position order (no copy).
    Its capacity costs address space only: pages are backed when a slice is written."""

    array: np.ndarray  # float32 [capacity, y, x]
    used: int = 0
    live: int = 0  # reads in the cache that are views of it


@dataclass
class _Entry:
    file_key: tuple[int, int, int] | None
    read: SliceRead
    at: float  # time.monotonic() when read
    series: tuple[str, tuple[int, int]] | None = None


def _file_key(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class SliceCache:
    """Reads of stored CT slices, made ahead of time on one worker thread (see the module)."""

    def __init__(
        self,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        nice: int = 5,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.max_age_seconds = max_age_seconds
        self.max_queued = max_queued
        self.nice = nice
        self._cond = threading.Condition()
        self._queue: deque[str] = deque()
        self._state: dict[str, str] = {}  # path -> queued | reading
        self._done: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._series: dict[tuple[str, tuple[int, int]], _Series] = {}
        self._bytes = 0
        self._stop = False
        self._thread: threading.Thread | None = None
        self.hits = self.misses = self.waits = self.dropped = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="slice-reader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._state.clear()
            self._done.clear()
            self._series.clear()
            self._bytes = 0
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # -- producer: the DICOM listener -----------------------------------------------------
    def offer(self, path: Path | str) -> bool:
        """Queue a stored file to be read; False when it is not queued (stopped, full)."""
        p = str(path)
        with self._cond:
            if self._stop or self._thread is None:
                return False
            if p in self._state or p in self._done:
                return True
            self._prune()
            if len(self._queue) >= self.max_queued:
                self.dropped += 1
                return False
            self._queue.append(p)
            self._state[p] = _QUEUED
            self._cond.notify()
        return True

    # -- consumer: load_volume ------------------------------------------------------------
    def take(self, path: str) -> SliceRead | None:
        """The read of ``path`` made ahead of time (removed from the cache), waiting for it
        when the worker is reading it now; None when there is none (the caller reads the file:
        a queued path is withdrawn from the worker)."""
        with self._cond:
            while self._state.get(path) == _READING:
                self.waits += 1
                self._cond.wait(timeout=5)
            if self._state.pop(path, None) == _QUEUED:
                with contextlib.suppress(ValueError):
                    self._queue.remove(path)
            entry = self._remove(path)
        if entry is None or entry.file_key is None or entry.file_key != _file_key(path):
            self.misses += 1
            return None
        self.hits += 1
        return entry.read

    def discard(self, paths: list[str]) -> None:
        """Forget these files (a study analysed or given up): their reads free their memory."""
        with self._cond:
            for p in paths:
                if self._state.pop(p, None) == _QUEUED:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(p)
                self._remove(p)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._done)

    # -- the worker -----------------------------------------------------------------------
    def _run(self) -> None:
        if self.nice:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            with self._cond:
                while not self._queue and not self._stop:
                    self._cond.wait(timeout=60)
                    self._prune()
                if self._stop:
                    return
                path = self._queue.popleft()
                if self._state.get(path) != _QUEUED:
                    continue
                self._state[path] = _READING
            key = _file_key(path)
            try:
                read = read_slice(path)
            except Exception:  # a bug here costs only the head start: load_volume reads it
                log.exception("reading %s ahead of time failed", path)
                read = None
            with self._cond:
                self._state.pop(path, None)
                if read is not None and not self._stop:
                    entry = _Entry(key, read, time.monotonic(), self._place(read))
                    self._done[path] = entry
                    self._bytes += read.nbytes
                    while self._bytes > self.budget_bytes and self._done:
                        self._remove(next(iter(self._done)))
                self._cond.notify_all()

    def _place(self, read: SliceRead) -> tuple[str, tuple[int, int]] | None:
        """Put the read's pixels in its series' array (after the slice read before it) and
        make ``read.hu`` a view of them; the series' key (None: the slice stays on its own)."""
        if read.hu is None or read.header is None or read.hu.dtype != np.float32:
            return None
        key = (read.header.series_uid, (int(read.hu.shape[0]), int(read.hu.shape[1])))
        series = self._series.get(key)
        if series is None or series.used == len(series.array):
            capacity = max(MIN_SERIES_SLICES, self.budget_bytes // max(read.hu.nbytes, 1))
            try:
                series = _Series(np.empty((capacity, *key[1]), dtype=np.float32))
            except MemoryError:  # no address space for it: the slice stays on its own
                return None
            self._series[key] = series
        series.array[series.used] = read.hu
        read.hu = series.array[series.used]
        series.used += 1
        series.live += 1
        return key

    def _remove(self, path: str) -> _Entry | None:
        """Take ``path``'s entry out of the cache (the caller holds the lock)."""
        entry = self._done.pop(path, None)
        if entry is None:
            return None
        self._bytes -= entry.read.nbytes
        series = self._series.get(entry.series) if entry.series is not None else None
        if series is not None:
            series.live -= 1
            if series.live <= 0:  # nothing here uses it: forget it (volumes keep their views)
                del self._series[entry.series]  # type: ignore[arg-type]
        return entry

    def _prune(self) -> None:
        """Drop reads older than ``max_age_seconds`` (the caller holds the lock)."""
        limit = time.monotonic() - self.max_age_seconds
        while self._done:
            path, entry = next(iter(self._done.items()))
            if entry.at >= limit:
                return
            self._remove(path)
