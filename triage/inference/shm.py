"""System shared memory for the input tensor when Triton runs on this host.

A 4 MiB volume sent over gRPC is copied into a protobuf, written to the loopback socket, read
and copied again by the server. With a local Triton the client can instead write the volume
into a POSIX shared memory region that the server has mapped, and send only the region's
name (Triton's system shared memory extension).

:class:`ShmPool` holds the regions of one :class:`~triage.inference.client.InferenceClient`:
one region per request in flight (several threads may share a client), reused afterwards.
Each region is created in ``/dev/shm``, registered with the server (which maps it), then
**unlinked at once**: both processes keep their mappings, and nothing is left in
``/dev/shm`` even if the engine is killed (only a kill between creating a region and the
server's answer to its registration - a call to Triton, slower under load - can leave one).
:meth:`ShmPool.close` unregisters every region from the server and unmaps it. A region left
by a process killed inside that window is removed by the next pool created on the host
(:func:`reap_dead`: its owner's PID is gone); so are the bundled Triton's Python-backend
regions of an engine that is gone, unless a live server still names their prefix.

Everything here is best effort: a failed create or register raises, and the client then
sends the volume over the network as before.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from triage.errors import RegisterError as RegisterError

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
# a pool's region: triage_<pid>_<8 hex>_<n> (LocalTriton's own are triage_triton_...)
REGION_NAME = re.compile(r"triage_(\d+)_[0-9a-f]{8}_\d+")
# the bundled Triton's Python-backend regions: triage_triton_<engine pid>_<12 hex>_<anything>
# (triage.inference.local_triton, its shm-region-prefix-name, which its command line carries)
TRITON_REGION = re.compile(r"(triage_triton_(\d+)_[0-9a-f]{12}_).+")
PROC_DIR = Path("/proc")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def reap_dead(shm_dir: Path = SHM_DIR) -> int:
    """Remove the regions in ``shm_dir`` whose owning process no longer exists (killed between
    creating a region and unlinking it); returns how many. Best effort: a region that cannot
    be removed is left."""
    removed = 0
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return 0
    orphans: dict[str, list[str]] = {}  # bundled-Triton prefix -> its regions (engine gone)
    for name in names:
        t = TRITON_REGION.fullmatch(name)
        if t is not None:
            if not _alive(int(t.group(2))):
                orphans.setdefault(t.group(1), []).append(name)
            continue
        m = REGION_NAME.fullmatch(name)
        if m is None or _alive(int(m.group(1))):
            continue
        removed += _unlink(shm_dir, name)
    if orphans:
        # a Triton killed outright (SIGKILL, out of memory) after its engine left its Python
        # backend's regions; a server still running under that prefix keeps them
        in_use = _prefixes_in_use(orphans)
        for prefix, regions in orphans.items():
            if prefix not in in_use:
                removed += sum(_unlink(shm_dir, name) for name in regions)
    return removed


def _unlink(shm_dir: Path, name: str) -> int:
    with contextlib.suppress(OSError):
        (shm_dir / name).unlink()
        log.info("removed shared memory region %s left by a process that is gone", name)
        return 1
    return 0


def _prefixes_in_use(prefixes: dict[str, list[str]], proc: Path = PROC_DIR) -> set[str]:
    """Those of ``prefixes`` that a live process names on its command line (a tritonserver
    started with ``shm-region-prefix-name=<prefix>``). Unreadable: all of them (kept)."""
    wanted = {p.encode() for p in prefixes}
    found: set[str] = set()
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return set(prefixes)
    for entry in entries:
        try:
            cmdline = (proc / entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        found.update(p.decode() for p in wanted if p in cmdline)
    return found


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_REGIONS = 16  # more requests in flight than this go over the network
UNREGISTER_WAIT_SECONDS = 2.0


def is_local_url(url: str) -> bool:
    """True when ``url`` ("host:port", optionally with a scheme) names this host's loopback."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):  # [::1]:8001
        host = rest[: rest.find("]") + 1]
    else:
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
    return host.lower() in LOCAL_HOSTS


@dataclass
class Region:
    """One registered region: ``name`` for Triton, ``size`` bytes mapped at ``buf``."""

    name: str
    size: int
    buf: mmap.mmap = field(repr=False)
    generation: int = 0

    def write(self, array: np.ndarray) -> None:
        """Copy ``array`` (C-contiguous) to the start of the region."""
        if array.nbytes > self.size:
            raise ValueError(f"{array.nbytes} bytes do not fit in region {self.name}")
        np.ndarray(array.shape, array.dtype, buffer=self.buf)[...] = array


class ShmPool:
    """Regions registered with one Triton through ``register(name, key, size)`` and
    ``unregister(name)`` (the tritonclient calls of that client)."""

    def __init__(
        self,
        register: Callable[[str, str, int], object],
        unregister: Callable[[str], object],
        max_regions: int = MAX_REGIONS,
    ) -> None:
        self._register = register
        self._unregister = unregister
        self.max_regions = max_regions
        self._lock = threading.Lock()
        self._free: list[Region] = []
        self._busy: set[str] = set()
        self._generation = 0  # bumped by reset(): regions of older generations are dropped
        self._prefix = f"triage_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self._count = 0
        self.closed = False
        self.created = 0  # regions created and registered (for tests and logs)
        reap_dead()

    @property
    def regions(self) -> int:
        """Regions currently held (free or in use)."""
        with self._lock:
            return len(self._free) + len(self._busy)

    def acquire(self, nbytes: int) -> Region | None:
        """A registered region of at least ``nbytes`` for one request; None when the pool is
        closed or full. Raises :class:`RegisterError` when the server does not register a new
        region, ``OSError`` when it cannot be created here."""
        evicted: Region | None = None
        with self._lock:
            if self.closed:
                return None
            for i, region in enumerate(self._free):
                if region.size >= nbytes:
                    del self._free[i]
                    self._busy.add(region.name)
                    return region
            if len(self._free) + len(self._busy) >= self.max_regions:
                if not self._free:
                    return None
                evicted = self._free.pop(0)  # too small: make room
            self._count += 1
            name = f"{self._prefix}_{self._count}"
            generation = self._generation
            self._busy.add(name)
        if evicted is not None:
            self._drop(evicted)
        try:
            region = self._create(name, nbytes, generation)
        except BaseException:
            with self._lock:
                self._busy.discard(name)
            raise
        with self._lock:
            self.created += 1
        return region

    def release(self, region: Region) -> None:
        """Give ``region`` back after its request; dropped if the pool was reset or closed."""
        with self._lock:
            self._busy.discard(region.name)
            if not self.closed and region.generation == self._generation:
                self._free.append(region)
                return
        self._drop(region)

    def reset(self) -> None:
        """Forget every region (e.g. the server restarted and lost its registrations); the
        next :meth:`acquire` registers new ones. Regions in use are dropped on release."""
        with self._lock:
            self._generation += 1
            free, self._free = self._free, []
        for region in free:
            self._drop(region)

    def close(self) -> None:
        """Unregister and unmap every free region; those in use follow on release."""
        with self._lock:
            self.closed = True
            free, self._free = self._free, []
        for region in free:
            self._drop(region)

    # -- internals ----------------------------------------------------------------------------

    def _create(self, name: str, nbytes: int, generation: int) -> Region:
        path = SHM_DIR / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        buf: mmap.mmap | None = None
        try:
            os.ftruncate(fd, nbytes)
            buf = mmap.mmap(fd, nbytes)
            os.close(fd)
            fd = -1
            try:
                self._register(name, "/" + name, nbytes)
            except Exception as exc:
                raise RegisterError(f"registering {name}: {exc}") from exc
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if buf is not None:
                buf.close()
            raise
        finally:
            # the server has its own mapping now (or failed): no name left in /dev/shm
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        log.debug("shared memory region %s registered (%d bytes)", name, nbytes)
        return Region(name, nbytes, buf, generation)

    def _drop(self, region: Region) -> None:
        # Triton releases a request's hold on the region a moment after the response ("Cannot
        # unregister shared memory region ..., it is currently in use"): retry for a while.
        deadline = time.monotonic() + UNREGISTER_WAIT_SECONDS
        while True:
            try:
                self._unregister(region.name)
                break
            except Exception as exc:  # server gone or restarted: nothing to unregister
                if "in use" in str(exc).lower() and time.monotonic() < deadline:
                    time.sleep(0.005)
                    continue
                log.debug("unregistering shared memory region %s: %s", region.name, exc)
                break
        with contextlib.suppress(BufferError, ValueError):
            region.buf.close()
