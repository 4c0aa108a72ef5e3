"""DICOM Storage SCP: receives C-STORE (and answers C-ECHO), stores, indexes, acknowledges.

The rule for every C-STORE: the instance file is durable (fsynced, file and directory) *before*
the peer hears Success; its index row is committed right after the response is sent, before
the association reads its next PDU, with the SOP Instance UID held until then (a copy on
another association waits for it). A crash between the two leaves a durable file without a
row, which the start-up recovery indexes (see :mod:`triage.ingest.dicom_index` for what
survives which crash). The data set is written as received, never decoded: it goes to disk
while it arrives (:mod:`triage.ingest.dicom_stream`), and only its header is parsed, from the
bytes before the Pixel Data. Anything else gets a DICOM failure status, never a dropped
association:

=============================================  ==============================================
Affected SOP Class UID not the abstract        0x0122 (SOP class not supported), answered by
syntax of its presentation context (a CT on    the upper layer when the command arrives: the
a Verification or MR context), C-ECHO off a    data set is read and dropped, nothing written
Verification context
undecodable data set, or a compressed one      0xC210 (cannot understand / decode), no file
whose pixel data is not a stream of its
transfer syntax
transfer syntax with no decoder installed      0xC212 (cannot understand: no decoder)
missing SOP/Study/Series UID, request/data     0xA900 (data set does not match SOP class)
set SOP Instance or SOP Class UID mismatch
UID too long or with control characters        0xC000 (cannot understand)
disk or database failure, free space below     0xA700 (out of resources)
``dicom_min_free_bytes``
unexpected bug                                 0x0110 (processing failure)
duplicate SOP Instance UID                     0x0000: stored once, the copy is not rewritten
=============================================  ==============================================

Association policy (settings in :class:`~triage.config.Settings`, documented in
docs/dicom-conformance.md): the called AE title must be ours; a calling AE title/address pair
not in ``dicom_allowed_peers`` (when that is set) is rejected (A-ASSOCIATE-RJ permanent,
calling AE not recognised); one association more than ``dicom_max_associations`` is rejected
as transient (local limit exceeded); a PDU claiming more than ``dicom_max_pdu_claim`` bytes
is answered with A-ABORT before anything is read; a read that stalls for
``dicom_network_timeout_seconds`` closes the connection.

Protocol code only persists and acknowledges. Business logic (completion, routing, scoring)
hangs off ``on_instance(study_uid)``, called once a new instance's row is committed; it runs
on the association's thread before the next PDU is read, so it must be quick (e.g. put the UID
on a queue). An exception in it is logged and changes nothing: the instance is already safe.

The upper layer (associations, PDUs, DIMSE commands) is :mod:`triage.ingest.dicom_ul`; this
module is what happens to a C-STORE once it has arrived.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import StoragePresentationContexts

from triage.config import Settings
from triage.errors import ConfigError, DicomIngestError, StoreError
from triage.ingest.dicom_header import InstanceFields, index_header, index_instance, read_header
from triage.ingest.dicom_index import InstanceIndex
from triage.ingest.dicom_meta import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    encode_file_meta,
)
from triage.ingest.dicom_paths import DICOM_SUBDIR, safe_instance_path
from triage.ingest.dicom_pdu import CALLING_AE_NOT_RECOGNIZED, VERIFICATION, Rejection, Status
from triage.ingest.dicom_stream import IncomingFile, clear_incoming, incoming_dir
from triage.ingest.dicom_ul import (
    Counters,
    Handlers,
    Limits,
    Peer,
    StoreRequest,
    StoreStart,
    UpperLayerServer,
)
from triage.ingest.dicom_walk import check_codestream, decoder_available, scan_dataset
from triage.peers import Network, address_in, network
from triage.store.db import Database
from triage.store.durable import make_dirs_durably, write_instance_file
from triage.store.models import DicomAssociation, utcnow

log = logging.getLogger(__name__)

SUCCESS = 0x0000
#: A transfer syntax we negotiate but cannot decode here (a decoder plugin is missing).
NO_DECODER = 0xC212

#: Transfer syntaxes we accept, in our order of preference: the uncompressed ones, then the
#: common compressed ones (stored as received, decoded when read).
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]

#: SOP classes we accept: Verification and every storage SOP class pynetdicom knows.
ABSTRACT_SYNTAXES: list[str] = [VERIFICATION] + [
    str(cx.abstract_syntax) for cx in StoragePresentationContexts if cx.abstract_syntax
]


class DicomListener:
    """The Storage SCP. ``start()`` listens in background threads; ``stop()`` ends it.

    ``on_instance(study_uid)`` is called after each newly stored instance, and
    ``on_stored(row)`` with its index row (``path`` relative to the data dir), on the
    association's thread after the row's commit: it must only hand the work on.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        on_instance: Callable[[str], None] | None = None,
        on_stored: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.on_instance = on_instance
        self.on_stored = on_stored
        self.data_dir = Path(settings.data_dir)
        self.index = InstanceIndex(db)
        self._server: UpperLayerServer | None = None
        # One store per SOP Instance UID at a time: two associations sending the same
        # instance must not write its file concurrently.
        self._in_flight: set[str] = set()
        self._in_flight_changed = threading.Condition()
        self._allowed = _parse_allowlist(settings.dicom_allowed_peers)
        self._low_disk = False
        self.incoming = incoming_dir(self.data_dir)
        self._streaming = False  # decided at start (see _can_stream)
        # per open association (its Peer): what it brought, written to DicomAssociation when
        # it ends (each association's own thread counts its own; no lock, no I/O per instance)
        self._tally: dict[Peer, _Tally] = {}
        # the rows are written by a thread of their own, never by an association's thread
        self._recorder: _AssociationRecorder | None = None

    # ------------------------------------------------------------------ lifecycle

    def _limits(self) -> Limits:
        s = self.settings
        return Limits(
            ae_title=s.dicom_ae_title,
            max_pdu=s.dicom_max_pdu,
            max_pdu_claim=max(s.dicom_max_pdu_claim, s.dicom_max_pdu + 6 if s.dicom_max_pdu else 0),
            max_associations=s.dicom_max_associations,
            max_dataset_bytes=s.dicom_max_dataset_bytes,
            spill_bytes=s.dicom_spill_bytes,
            spool_dir=self.data_dir,
            acse_timeout=s.dicom_acse_timeout_seconds,
            dimse_timeout=s.dicom_dimse_timeout_seconds,
            network_timeout=s.dicom_network_timeout_seconds,
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        )

    def start(self) -> tuple[str, int]:
        """Recover unindexed files, then listen on ``bind_host:dicom_port`` (port 0: any free
        port), without blocking.

        Returns the address actually bound. Raises :class:`ConfigError` (naming
        ``dicom_port``) when the address cannot be bound, :class:`StoreError` when the
        recovery cannot read the database.
        """
        if self._server is not None:
            raise RuntimeError("DicomListener already started")
        report = self.index.recover(self.data_dir)
        report.removed += clear_incoming(self.data_dir)
        self._streaming = self._can_stream()
        if report.indexed or report.removed:
            log.warning("DICOM start-up recovery: %s", report)
        else:
            log.info("DICOM start-up recovery: %s", report)
        missing = [ts for ts in TRANSFER_SYNTAXES if not decoder_available(ts)]
        if missing:
            log.warning(
                "no decoder installed for %s: C-STORE in these is refused (0x%04X)",
                ", ".join(missing),
                NO_DECODER,
            )
        if self._allowed:
            log.info("DICOM allowlist: %s", ", ".join(sorted(self._allowed)))
        else:
            log.warning(
                "DICOM allowlist empty (dicom_allowed_peers): any calling AE title from any "
                "address is accepted"
            )
        handlers = Handlers(
            store=self._handle_store, check=self._check_peer, closed=self._closed, begin=self._begin
        )
        server = UpperLayerServer(self._limits(), ABSTRACT_SYNTAXES, TRANSFER_SYNTAXES, handlers)
        address = (self.settings.bind_host, self.settings.dicom_port)
        recorder = _AssociationRecorder(self.db)
        self._recorder = recorder
        try:
            host, port = server.start(*address)
        except OSError as exc:
            self._recorder = None
            recorder.stop()
            raise ConfigError.listen("dicom_port", *address, exc) from exc
        self._server = server
        log.info("DICOM SCP %s listening on %s:%s", self.settings.dicom_ae_title, host, port)
        return host, port

    def _can_stream(self) -> bool:
        """Whether instances can be written while they arrive: the incoming folder must exist
        on the same file system as the instance folders (else each would be renamed in vain
        and written again from memory)."""
        instances = self.data_dir / DICOM_SUBDIR
        try:
            self.incoming.mkdir(parents=True, exist_ok=True)
            make_dirs_durably(instances)  # instance files will live under it
            same = same_file_system(self.incoming, instances)
        except OSError as exc:  # every store writes from memory; the disk check decides
            log.error("cannot prepare %s: %s; instances are written when complete", instances, exc)
            return False
        if not same:
            log.warning(
                "%s and %s are on different file systems: instances are written when complete, "
                "not while they arrive (slower; keep data_dir on one file system)",
                self.incoming,
                instances,
            )
        return same

    def stop(self) -> None:
        """Abort open associations, stop listening and close the socket. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.stop()  # writes the rows of the associations that have ended
        self._retry_owed("the start-up recovery indexes them")
        self.index.close()

    @property
    def ready(self) -> bool:
        """True while the listener is accepting associations."""
        server = self._server
        return server is not None and server.address is not None

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), or None when not started."""
        server = self._server
        return None if server is None else server.address

    @property
    def counters(self) -> dict[str, int]:
        """Protocol events counted since start (see :class:`~triage.ingest.dicom_ul.Counters`:
        ``released_mid_message``, ``sop_class_refused``, ``protocol_aborts``); all zero
        when not started. For ``/healthz`` or a periodic log line."""
        server = self._server
        if server is None:
            return dict.fromkeys(Counters.NAMES, 0)
        return server.counters.snapshot()

    @property
    def associations(self) -> list[Peer]:
        """The peers of the associations open now."""
        server = self._server
        return [] if server is None else [a.peer for a in server.active]

    # ------------------------------------------------------------------ association policy

    def _check_peer(self, peer: Peer) -> Rejection | None:
        """Reject a calling AE title/address pair not in the allowlist (when there is one)."""
        if not self._allowed or _is_allowed(self._allowed, peer.calling_ae, peer.address):
            return None
        log.warning(
            "association from %s, calling AE %r, rejected: not in dicom_allowed_peers",
            peer.address,
            peer.calling_ae,
        )
        return CALLING_AE_NOT_RECOGNIZED

    # ------------------------------------------------------------------ C-STORE

    def _begin(self, start: StoreStart) -> IncomingFile | None:
        """A C-STORE command arrived: open its file, to be written while the data set arrives
        (:mod:`triage.ingest.dicom_stream`). None (write from memory at the end, if at all) for
        a deflated data set, a transfer syntax we cannot decode, a low disk, a command without
        UIDs, or an instance stored already (a re-send writes nothing)."""
        ts = start.transfer_syntax
        if not self._streaming or self._low_disk:
            return None
        if ts == DeflatedExplicitVRLittleEndian or not decoder_available(ts):
            return None
        if not start.sop_class_uid or not start.sop_instance_uid:
            return None
        try:
            if self.index.is_stored(start.sop_instance_uid):
                return None
            head = encode_file_meta(
                start.sop_class_uid, start.sop_instance_uid, ts, start.peer.calling_ae[:16]
            )
            return IncomingFile(self.incoming, head, start.sop_class_uid, start.sop_instance_uid)
        except (StoreError, ValueError, UnicodeError) as exc:
            log.debug("no streamed write for %s: %s", start.sop_instance_uid, exc)
            return None

    def _handle_store(self, request: StoreRequest) -> Status:
        """One C-STORE: always a status; never raises into the upper layer."""
        status = self._store_status(request)
        tally = self._tally.get(request.peer)
        if tally is None:
            tally = self._tally[request.peer] = _Tally(utcnow())
        tally.count(status.code, new=request.after is not None)
        return status

    def _store_status(self, request: StoreRequest) -> Status:
        try:
            self._store(request)
        except DicomIngestError as exc:
            log.warning("C-STORE refused: %s", exc)
            return Status(exc.status, str(exc))
        except StoreError as exc:
            log.error("C-STORE failed, store unavailable: %s", exc)
            return Status(DicomIngestError.OUT_OF_RESOURCES, "store unavailable")
        except Exception:
            log.exception("C-STORE failed unexpectedly")
            return Status(DicomIngestError.PROCESSING_FAILURE, "processing failure")
        return Status(SUCCESS)

    def _check_free_space(self) -> None:
        minimum = self.settings.dicom_min_free_bytes
        if minimum <= 0:
            return
        try:
            free = disk_free_bytes(self.data_dir)
        except OSError as exc:
            raise StoreError(f"cannot read free space of {self.data_dir}: {exc}") from exc
        if free < minimum:
            if not self._low_disk:
                log.error(
                    "free space on the data disk %d MiB < dicom_min_free_bytes (%d MiB): "
                    "refusing C-STORE with 0xA700 until there is room",
                    free >> 20,
                    minimum >> 20,
                )
            self._low_disk = True
            raise DicomIngestError(
                DicomIngestError.OUT_OF_RESOURCES,
                f"only {free >> 20} MiB free on the data disk (minimum {minimum >> 20} MiB)",
            )
        if self._low_disk:
            self._low_disk = False
            log.warning("free space on the data disk is back above the minimum: storing again")

    def _store(self, request: StoreRequest) -> None:
        """Check one instance and make its file durable; its index row is committed by
        ``request.after``, once the Success is sent (nothing is set for a duplicate).

        The SOP Instance UID stays held from the duplicate check until the row is committed, so
        a copy arriving on another association waits and is then found stored."""
        transfer_syntax = request.transfer_syntax
        if not decoder_available(transfer_syntax):
            raise DicomIngestError(
                NO_DECODER, f"no decoder installed for transfer syntax {transfer_syntax}"
            )
        self._check_free_space()
        body = memoryview(request.dataset)
        try:
            scan = scan_dataset(body, transfer_syntax)
            if scan.header_length is None:  # deflated: pydicom inflates it to read the header
                meta = encode_file_meta(
                    request.sop_class_uid, request.sop_instance_uid, transfer_syntax, ""
                )
                ds = read_header(meta + bytes(body))  # meta: preamble, DICM and group 2
                fields, study_attrs = index_instance(ds)
            else:
                check_codestream(body, scan.header_length, transfer_syntax)
                fields, study_attrs = index_header(scan, transfer_syntax)
            affected = request.sop_instance_uid
            sop_uid = fields["sop_instance_uid"]
            if affected and affected != sop_uid:
                raise DicomIngestError(
                    DicomIngestError.DATASET_MISMATCH,
                    f"Affected SOP Instance UID {affected!r:.80} differs from the data set's",
                )
            # The upper layer checked the command's SOP Class against its presentation
            # context (0x0122); the data set must be of that class too.
            if request.sop_class_uid != fields["sop_class_uid"]:
                raise DicomIngestError(
                    DicomIngestError.DATASET_MISMATCH,
                    "Affected SOP Class UID differs from the data set's: "
                    f"{request.sop_class_uid!r:.70} vs {fields['sop_class_uid']!r:.70}",
                )
            calling_ae = request.peer.calling_ae[:16]
            self._hold(sop_uid)
            try:
                if self.index.is_stored(sop_uid):
                    log.info("duplicate SOP Instance UID %s: already stored", sop_uid)
                    self._release(sop_uid)
                    return
                path = safe_instance_path(
                    self.data_dir, fields["study_uid"], fields["series_uid"], sop_uid
                )
                size = self._write(request, fields, calling_ae, path, body)
            except BaseException:
                self._release(sop_uid)
                raise
        finally:
            body.release()
        row = {
            **fields,
            "path": path.relative_to(self.data_dir).as_posix(),
            "size_bytes": size,
            "calling_ae": calling_ae,
            "received_at": utcnow(),
        }
        request.after = partial(self._index, row, study_attrs)

    def _write(
        self,
        request: StoreRequest,
        fields: InstanceFields,
        calling_ae: str,
        path: Path,
        body: memoryview,
    ) -> int:
        """The instance file, durable: the streamed file when it matches the data set, else
        written from memory. Returns its size."""
        sink = request.sink
        if (
            isinstance(sink, IncomingFile)
            and sink.usable
            and sink.sop_class_uid == fields["sop_class_uid"]
            and sink.sop_instance_uid == fields["sop_instance_uid"]
        ):
            try:
                return sink.finish(path)
            except StoreError as exc:
                log.warning("streamed write failed, writing from memory: %s", exc)
        head = encode_file_meta(
            fields["sop_class_uid"], fields["sop_instance_uid"], request.transfer_syntax, calling_ae
        )
        return write_instance_file(path, (head, body))

    def _index(self, row: dict[str, Any], study_attrs: dict[str, str]) -> None:
        """After the Success: commit the instance's index row (a failed commit is owed and
        retried: the file is durable), release its SOP Instance UID, tell business logic."""
        try:
            studies = self.index.record_acknowledged(row, study_attrs)
        finally:
            self._release(row["sop_instance_uid"])
        if self.on_stored is not None:  # the file is durable, its row committed or owed
            try:
                self.on_stored(row)
            except Exception:
                log.exception("on_stored hook failed for %s", row.get("sop_instance_uid"))
        for study_uid in studies:
            self._notify(study_uid)

    def _closed(self, peer: Peer, how: str) -> None:
        _on_closed(peer, how)
        self._record_association(peer, how, self._tally.pop(peer, _NO_STORES))
        if self.index.owed:
            self._retry_owed("retried with the next instance")

    def _record_association(self, peer: Peer, how: str, tally: _Tally) -> None:
        """One DicomAssociation row for an association that ended, handed to the recorder's
        thread: the association's thread never waits on the database for it."""
        row = DicomAssociation(
            ended_at=utcnow(),
            first_store_at=tally.first_at,
            calling_ae=peer.calling_ae[:16],
            called_ae=peer.called_ae[:16],
            address=peer.address,
            port=peer.port,
            outcome=how,
            stored=tally.stored,
            duplicates=tally.duplicates,
            refused=tally.refused,
            statuses=json.dumps(tally.statuses, sort_keys=True),
        )
        recorder = self._recorder
        if recorder is None:
            log.warning("association from %s not recorded: the listener is stopped", peer.address)
            return
        recorder.put(row)

    def _retry_owed(self, then: str) -> None:
        try:
            studies = self.index.retry_owed()
        except StoreError as exc:
            log.error("%d stored instance(s) not indexed yet (%s): %s", self.index.owed, exc, then)
            return
        for study_uid in studies:
            self._notify(study_uid)

    def _notify(self, study_uid: str) -> None:
        if self.on_instance is not None:
            try:
                self.on_instance(study_uid)
            except Exception:
                log.exception("on_instance hook failed for study %s", study_uid)

    def _hold(self, sop_uid: str) -> None:
        with self._in_flight_changed:
            while sop_uid in self._in_flight:
                self._in_flight_changed.wait()
            self._in_flight.add(sop_uid)

    def _release(self, sop_uid: str) -> None:
        with self._in_flight_changed:
            self._in_flight.discard(sop_uid)
            self._in_flight_changed.notify_all()


class _Tally:
    """What one association brought: C-STOREs answered Success (new or duplicate) or
    refused, with each failure status."""

    __slots__ = ("duplicates", "first_at", "refused", "statuses", "stored")

    def __init__(self, first_at: datetime | None) -> None:
        self.first_at = first_at
        self.stored = self.duplicates = self.refused = 0
        self.statuses: dict[str, int] = {}

    def count(self, code: int, *, new: bool) -> None:
        if code == SUCCESS:
            if new:
                self.stored += 1
            else:
                self.duplicates += 1
            return
        self.refused += 1
        key = f"{code:04X}"
        self.statuses[key] = self.statuses.get(key, 0) + 1


_NO_STORES = _Tally(None)  # an association that sent no C-STORE (read only)


class _AssociationRecorder:
    """Writes DicomAssociation rows on a thread of its own, in the order the associations
    ended, as many as are waiting in one transaction. A row is monitoring data, not an input:
    a failed write is logged and the row dropped, and when the queue is full (the database
    stuck) a new row is dropped with a warning, so that a slow or failing database never
    holds up the listener."""

    #: rows waiting at most (a few minutes of a busy site's associations)
    MAX_WAITING = 10_000

    def __init__(self, db: Database) -> None:
        self.db = db
        self._queue: queue.Queue[DicomAssociation | None] = queue.Queue(self.MAX_WAITING)
        self._dropped = 0
        self._thread = threading.Thread(
            target=self._run, name="dicom-association-rows", daemon=True
        )
        self._thread.start()

    def put(self, row: DicomAssociation) -> None:
        """Queue ``row``; never blocks, never raises."""
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "association from %s not recorded: %d rows waiting for the database "
                    "(%d dropped so far)",
                    row.address,
                    self.MAX_WAITING,
                    self._dropped,
                )

    def stop(self, timeout: float = 10.0) -> None:
        """Write the rows queued so far (waiting at most ``timeout`` seconds), then end."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("association rows still waiting for the database at stop: not written")

    def _run(self) -> None:
        while True:
            rows = [self._queue.get()]
            while True:  # what else is waiting goes into the same transaction
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = any(row is None for row in rows)
            batch = [row for row in rows if row is not None]
            if batch:
                self._write(batch)
            if done:
                return

    def _write(self, rows: list[DicomAssociation]) -> None:
        try:
            with self.db.session() as s:
                s.add_all(rows)
        except Exception as exc:  # monitoring only: the instances are stored regardless
            log.warning(
                "%d association(s) not recorded (from %s): %s",
                len(rows),
                ", ".join(sorted({row.address for row in rows})),
                exc,
            )


Allowlist = dict[str, list[Network | None]]


def _parse_allowlist(peers: dict[str, list[str]]) -> Allowlist:
    """{AE title: [network, ...]}; None stands for any address ('*')."""
    return {
        ae: [None if a == "*" else network(a) for a in addresses] for ae, addresses in peers.items()
    }


def _is_allowed(allowed: Allowlist, calling_ae: str, address: str) -> bool:
    entries = allowed.get(calling_ae)
    if not entries:
        return False
    return None in entries or address_in(address, [n for n in entries if n is not None])


def _on_closed(peer: Peer, how: str) -> None:
    """An association ended. After an abort what was acknowledged is kept; completion waits for
    a quiet period as for any study, so an aborted transfer is never taken for a complete
    one."""
    if how in ("aborted", "timeout", "protocol", "connection"):
        why = {
            "aborted": "A-ABORT from the peer",
            "timeout": "timed out",
            "protocol": "protocol error, A-ABORT sent",
            "connection": "connection closed without A-RELEASE",
        }[how]
        log.warning(
            "association from %s (%s) ended: %s; any instance acknowledged is kept",
            peer.address,
            peer.calling_ae,
            why,
        )


def same_file_system(a: Path, b: Path) -> bool:
    """Whether two existing folders are on one file system (a rename between them works)."""
    return os.stat(a).st_dev == os.stat(b).st_dev


def disk_free_bytes(path: Path) -> int:
    """Free bytes for unprivileged writers on the disk holding ``path`` (tests replace it)."""
    return int(shutil.disk_usage(path).free)
