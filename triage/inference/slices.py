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
from pathlib import Path

from triage.inference.volume import SliceRead, read_slice

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 1 << 30  # 1 GiB of HU pixels: about 1,000 slices of 512 x 512
DEFAULT_MAX_QUEUED = 20_000
DEFAULT_MAX_AGE_SECONDS = 900.0  # a read not taken by then (a study no model reads) is dropped

_QUEUED, _READING = "queued", "reading"


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
        # path -> (file key, read, when read): oldest first
        self._done: OrderedDict[str, tuple[tuple[int, int, int] | None, SliceRead, float]] = (
            OrderedDict()
        )
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
            entry = self._done.pop(path, None)
            if entry is not None:
                self._bytes -= entry[1].nbytes
        if entry is None or entry[0] is None or entry[0] != _file_key(path):
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def discard(self, paths: list[str]) -> None:
        """Forget these files (a study analysed or given up): their reads free their memory."""
        with self._cond:
            for p in paths:
                if self._state.pop(p, None) == _QUEUED:
                    with contextlib.suppress(ValueError):
                        self._queue.remove(p)
                entry = self._done.pop(p, None)
                if entry is not None:
                    self._bytes -= entry[1].nbytes

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
                    self._done[path] = (key, read, time.monotonic())
                    self._bytes += read.nbytes
                    while self._bytes > self.budget_bytes and self._done:
                        _, (_, old, _) = self._done.popitem(last=False)
                        self._bytes -= old.nbytes
                self._cond.notify_all()

    def _prune(self) -> None:
        """Drop reads older than ``max_age_seconds`` (the caller holds the lock)."""
        limit = time.monotonic() - self.max_age_seconds
        while self._done:
            path, (_, read, at) = next(iter(self._done.items()))
            if at >= limit:
                return
            del self._done[path]
            self._bytes -= read.nbytes
