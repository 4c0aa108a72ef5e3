"""The engine's data directory: made and checked when the engine starts, held by one engine.

:func:`claim` creates ``data_dir`` when missing, checks that files can be written in it, and
takes an exclusive lock (``flock`` on ``data_dir/engine.lock``, which also holds the owner's
PID) for as long as the engine runs. A second engine on the same directory would share its
SQLite database, its DICOM files and its ``endpoints.json`` (and remove the first engine's
when it stops), so it is refused at start with a line naming the running one. The kernel
drops the lock when its process ends, however it ends (SIGKILL included): nothing stale is
left to clean up.

Every failure is a :class:`~triage.errors.ConfigError` on ``data_dir`` (one line at start-up,
``triage: error: data_dir: ...``), never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path

from triage.errors import ConfigError

LOCK_NAME = "engine.lock"


class DataDirLock:
    """The held lock on a data directory; :meth:`release` gives it up (idempotent)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def claim(data_dir: Path) -> DataDirLock:
    """Make ``data_dir`` ready for one engine and lock it; raises ConfigError saying why not."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot create {data_dir}: {_why(exc)}") from None
    if not data_dir.is_dir():
        raise ConfigError("data_dir", f"{data_dir} is not a directory")
    try:  # writable: the database, DICOM files and endpoints.json all go here
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot write in {data_dir}: {_why(exc)}") from None
    path = data_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot open {path}: {_why(exc)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = ""
        with contextlib.suppress(OSError, ValueError):
            owner = f" (pid {int(os.pread(fd, 32, 0).split()[0])})"
        os.close(fd)
        raise ConfigError(
            "data_dir",
            f"another engine{owner} is running on {data_dir}; one engine per data directory "
            "(give this one its own data_dir)",
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise ConfigError("data_dir", f"cannot write {path}: {_why(exc)}") from None
    return DataDirLock(path, fd)
