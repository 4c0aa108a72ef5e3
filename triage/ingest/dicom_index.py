"""The Storage SCP's index writer: ``Instance`` rows and their ``Study``, fast, and recoverable.

What "Success" means:

1. before the response, the file is durable: written (while the data set arrived, see
   :mod:`triage.ingest.dicom_stream`), renamed to its final name, fsynced, its directory
   fsynced;
2. right after the response, before the association reads its next PDU, the index row is
   committed (this module, :meth:`InstanceIndex.record_acknowledged`), visible to every
   reader at once. A crash in between leaves a durable file without a row: the recovery
   below indexes it. A commit that fails while the engine runs is *owed*: kept and retried
   (:meth:`InstanceIndex.retry_owed`); an acknowledged file is never removed.

On SQLite the index connection commits with ``synchronous=NORMAL`` (WAL): a commit is in the
WAL file, so it survives the engine being killed (SIGKILL, OOM, crash), but not necessarily
a power cut or kernel crash that follows within the next checkpoint. That gap is closed by
:meth:`InstanceIndex.recover`, run at every start before the SCP listens: it indexes the
files written since shortly before the newest surviving row that have no row (and removes
temp files and files that are not a complete, well-formed instance: those were never
acknowledged). A commit with ``synchronous=FULL`` would cost a second flush of the disk cache
per instance (as much again as the file's own fsync); measured in docs/performance.md.

The rows are written by :class:`triage.store.instances.InstanceWriter` (the SQL, its fast
path for a known study, and the translation of database errors live in :mod:`triage.store`);
this module adds the rows owed and the recovery.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triage.errors import DicomIngestError, StoreError
from triage.ingest.dicom_meta import read_instance_file
from triage.ingest.dicom_paths import DICOM_SUBDIR, is_valid_uid
from triage.store.db import Database
from triage.store.instances import InstanceWriter

log = logging.getLogger(__name__)

#: Files whose directory changed up to this long before the newest indexed instance are
#: checked by :meth:`InstanceIndex.recover` (covers clock steps and slow concurrent stores).
RECOVERY_MARGIN = timedelta(minutes=10)


@dataclass
class RecoveryReport:
    indexed: int = 0  # files that had no index row and now have one
    removed: int = 0  # temp files and incomplete/undecodable files removed
    checked_dirs: int = 0  # series directories looked into

    def __str__(self) -> str:
        return (
            f"{self.indexed} instance(s) re-indexed, {self.removed} incomplete file(s) "
            f"removed, {self.checked_dirs} series folder(s) checked"
        )


class InstanceIndex:
    """Writes the index rows of received instances (:class:`InstanceWriter`), keeps those
    whose commit failed, and recovers after a crash. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writer = InstanceWriter(db)
        # Rows of acknowledged instances whose commit failed (see record_acknowledged).
        self._owed: list[tuple[dict[str, Any], dict[str, str]]] = []
        self._owed_lock = threading.Lock()

    def close(self) -> None:
        self.writer.close()

    def is_stored(self, sop_instance_uid: str) -> bool:
        """True when an instance with this SOP Instance UID is indexed."""
        return self.writer.is_stored(sop_instance_uid)

    def record(self, row: dict[str, Any], study_attrs: dict[str, str]) -> bool:
        """Index an instance and update its study, committed (:meth:`InstanceWriter.record`).
        False: the SOP UID is already indexed. Raises :class:`StoreError`."""
        return self.writer.record(row, study_attrs)

    # ------------------------------------------------------------------ rows owed

    def record_acknowledged(self, row: dict[str, Any], study_attrs: dict[str, str]) -> list[str]:
        """:meth:`record` for an instance already answered Success (its file is durable).
        Never raises: a commit that fails is logged and the row kept, to be retried first by
        the next call and by :meth:`retry_owed` (the start-up recovery indexes it after a
        crash). Returns the Study UIDs of the instances newly indexed by this call (this one,
        and any owed rows that went through)."""
        studies: list[str] = []
        if self._owed:
            try:
                studies += self.retry_owed()
            except StoreError as exc:  # this row still gets its own try
                log.debug("retrying owed index rows: %s", exc)
        try:
            if self.record(row, study_attrs):
                studies.append(row["study_uid"])
        except StoreError as exc:
            try:  # a commit can fail after it took effect: then the row is there
                if self.is_stored(row["sop_instance_uid"]):
                    return [*studies, row["study_uid"]]
            except StoreError:
                pass
            with self._owed_lock:
                self._owed.append((row, study_attrs))
            log.error(
                "instance %s stored in %s (acknowledged) but not indexed: %s; retried with the "
                "next instance, when an association ends, at stop, and by the start-up recovery",
                row["sop_instance_uid"],
                row["path"],
                exc,
            )
        return studies

    @property
    def owed(self) -> int:
        """How many acknowledged instances wait for their index row."""
        return len(self._owed)

    def retry_owed(self) -> list[str]:
        """Commit the owed rows; returns the Study UIDs of those newly indexed. Raises
        :class:`StoreError` at the first that fails again, which goes to the back of the list
        (one bad row cannot hold up the rest for ever)."""
        studies: list[str] = []
        with self._owed_lock:
            for _ in range(len(self._owed)):
                row, study_attrs = self._owed.pop(0)
                try:
                    new = self.record(row, study_attrs)
                except StoreError:
                    self._owed.append((row, study_attrs))
                    raise
                log.warning("instance %s indexed on retry", row["sop_instance_uid"])
                if new:
                    studies.append(row["study_uid"])
        return studies

    # ------------------------------------------------------------------ recovery

    def recover(self, data_dir: Path) -> RecoveryReport:
        """Index the instance files that have no index row (see the module docstring).

        Only series folders changed since :data:`RECOVERY_MARGIN` before the newest indexed
        instance are read (all of them when nothing is indexed), so the cost follows what was
        received lately, not the size of the archive.
        """
        report = RecoveryReport()
        root = Path(data_dir) / DICOM_SUBDIR
        if not root.is_dir():
            return report
        since = self._newest_received()
        cutoff = None if since is None else (since - RECOVERY_MARGIN).timestamp()
        for study_dir in _subdirs(root):
            for series_dir in _subdirs(study_dir):
                try:
                    if cutoff is not None and series_dir.stat().st_mtime < cutoff:
                        continue
                except OSError:
                    continue
                report.checked_dirs += 1
                self._recover_series(Path(data_dir), study_dir, series_dir, report)
        return report

    def _newest_received(self) -> datetime | None:
        return self.writer.newest_received()

    def _indexed_paths(self, data_dir: Path, study_dir: Path) -> set[str]:
        if is_valid_uid(study_dir.name):  # the folder is named after the study UID
            return self.writer.paths_of_study(study_dir.name)
        return self.writer.paths_under(study_dir.relative_to(data_dir).as_posix() + "/")

    def _recover_series(
        self, data_dir: Path, study_dir: Path, series_dir: Path, report: RecoveryReport
    ) -> None:
        indexed: set[str] | None = None
        for entry in sorted(os.scandir(series_dir), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            path = Path(entry.path)
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                _unlink(path, "temp file of an interrupted store")
                report.removed += 1
                continue
            if not entry.name.endswith(".dcm"):
                continue
            if indexed is None:
                indexed = self._indexed_paths(data_dir, study_dir)
            rel = path.relative_to(data_dir).as_posix()
            if rel in indexed:
                continue
            try:
                fields, study_attrs, source_ae = read_instance_file(path)
            except (DicomIngestError, OSError) as exc:
                _unlink(path, f"not a complete instance ({exc})")
                report.removed += 1
                continue
            mtime = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            row = {
                **fields,
                "path": rel,
                "size_bytes": entry.stat().st_size,
                "calling_ae": source_ae[:16],
                "received_at": mtime,
            }
            if self.record(row, study_attrs):
                report.indexed += 1
                log.info("re-indexed %s (no index row after a crash)", rel)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _unlink(path: Path, why: str) -> None:
    try:
        path.unlink()
        log.warning("removed %s: %s", path, why)
    except OSError as exc:
        log.warning("could not remove %s (%s): %s", path, why, exc)
