"""DICOM Storage SCP: receives C-STORE (and answers C-ECHO), stores, indexes, acknowledges.

The rule for every C-STORE: the instance is on disk (fsynced) and indexed in the database
(one transaction) *before* the peer hears success. Anything else gets a DICOM failure status,
never a dropped association:

=============================================  ==============================================
undecodable data set                           0xC210 (cannot understand / decode), no file
missing SOP/Study/Series UID, request/data     0xA900 (data set does not match SOP class)
set SOP Instance UID mismatch
UID too long or with control characters        0xC000 (cannot understand)
disk or database failure                       0xA700 (out of resources)
unexpected bug                                 0x0110 (processing failure)
duplicate SOP Instance UID                     0x0000: stored once, the copy is not rewritten
=============================================  ==============================================

Protocol code only persists and acknowledges. Business logic (completion, routing, scoring)
hangs off ``on_instance(study_uid)``, called after a successful store; it runs before the
response is sent, so it must be quick (e.g. put the UID on a queue). An exception in it is
logged and does not change the answer: the instance is already safe.

Compressed transfer syntaxes are accepted and stored as received; only the header is decoded.

TCP_NODELAY: pynetdicom has no option for it (``pynetdicom._config`` has none and
``AssociationServer.get_request`` sets no socket options), so an ``EVT_CONN_OPEN`` handler
sets it on each accepted socket before the association is negotiated. Small PDUs (A-ASSOCIATE-AC,
C-STORE-RSP) then go out at once instead of waiting on Nagle's algorithm.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any, cast

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
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
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlmodel import select

from triage.config import Settings
from triage.errors import ConfigError, DicomIngestError, StoreError
from triage.ingest.dicom_files import (
    check_encoding,
    index_instance,
    read_header,
    safe_instance_path,
    write_durably,
)
from triage.store import repo
from triage.store.db import Database
from triage.store.models import Instance, utcnow

log = logging.getLogger(__name__)

SUCCESS = 0x0000

#: Transfer syntaxes we accept: the uncompressed ones, then the common compressed ones.
TRANSFER_SYNTAXES: list[str] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


class DicomListener:
    """The Storage SCP. ``start()`` listens in background threads; ``stop()`` ends it.

    ``on_instance(study_uid)`` is called after each newly stored instance.
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        on_instance: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.on_instance = on_instance
        self.data_dir = Path(settings.data_dir)
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None
        # SQLite takes one writer at a time anyway; serialising the index step in-process
        # also keeps two associations that start the same study from racing on its row.
        self._index_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.settings.dicom_ae_title)
        ae.maximum_pdu_size = self.settings.dicom_max_pdu
        ae.require_called_aet = True
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

    def start(self) -> tuple[str, int]:
        """Listen on ``bind_host:dicom_port`` (port 0: any free port), without blocking.

        Returns the address actually bound. Raises :class:`ConfigError` (naming
        ``dicom_port``) when the address cannot be bound.
        """
        if self._server is not None:
            raise RuntimeError("DicomListener already started")
        ae = self._make_ae()
        address = (self.settings.bind_host, self.settings.dicom_port)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_CONN_OPEN, _set_nodelay),
        ]
        try:
            server = ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(
                "dicom_port", f"cannot listen on {address[0]}:{address[1]}: {exc}"
            ) from exc
        assert server is not None  # block=False always returns the server
        self._ae, self._server = ae, server
        host, port = server.server_address[:2]
        log.info("DICOM SCP %s listening on %s:%s", ae.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        """Abort open associations, stop listening and close the socket. Idempotent."""
        ae, self._ae, self._server = self._ae, None, None
        if ae is not None:
            ae.shutdown()

    @property
    def ready(self) -> bool:
        """True while the listener is accepting associations."""
        server = self._server
        return server is not None and server.socket is not None and server.socket.fileno() >= 0

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), or None when not started."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    # ------------------------------------------------------------------ C-STORE

    def _handle_store(self, event: Event) -> int:
        """EVT_C_STORE: always answers a status; never raises into pynetdicom."""
        try:
            study_uid = self._store(event)
        except DicomIngestError as exc:
            log.warning("C-STORE refused: %s", exc)
            return exc.status
        except StoreError as exc:
            log.error("C-STORE failed, store unavailable: %s", exc)
            return DicomIngestError.OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE failed unexpectedly")
            return DicomIngestError.PROCESSING_FAILURE
        if study_uid is not None and self.on_instance is not None:
            try:
                self.on_instance(study_uid)
            except Exception:
                log.exception("on_instance hook failed for study %s", study_uid)
        return SUCCESS

    def _store(self, event: Event) -> str | None:
        """Persist and index one instance. Returns its Study UID, or None for a duplicate."""
        request = cast(C_STORE, event.request)
        transfer_syntax = str(event.context.transfer_syntax)
        body = cast(BytesIO, request.DataSet).getbuffer()
        try:
            check_encoding(body, transfer_syntax)
            head = b"\x00" * 128 + b"DICM" + encode_file_meta(event.file_meta)
            ds = read_header(head + body)
            fields, study_attrs = index_instance(ds)
            affected = str(request.AffectedSOPInstanceUID or "").strip("\x00 ")
            if affected and affected != fields["sop_instance_uid"]:
                raise DicomIngestError(
                    DicomIngestError.DATASET_MISMATCH,
                    f"Affected SOP Instance UID {affected!r:.80} differs from the data set's",
                )
            sop_uid = fields["sop_instance_uid"]
            if self._is_stored(sop_uid):
                log.info("duplicate SOP Instance UID %s: already stored", sop_uid)
                return None
            path = safe_instance_path(
                self.data_dir, fields["study_uid"], fields["series_uid"], sop_uid
            )
            size = write_durably(path, (head, body))
        finally:
            body.release()
        inst = Instance(
            **fields,
            path=path.relative_to(self.data_dir).as_posix(),
            size_bytes=size,
            calling_ae=str(event.assoc.requestor.ae_title)[:16],
            received_at=utcnow(),
        )
        try:
            with self._index_lock, self.db.session() as session:
                new = repo.record_instance(session, inst, study_attrs)
        except StoreError:
            try:
                stored = self._is_stored(sop_uid)  # a concurrent copy may have won the race
            except StoreError:
                stored = False
            if not stored:
                _remove(path)  # nothing refers to it; the peer will resend
            raise
        return fields["study_uid"] if new else None

    def _is_stored(self, sop_uid: str) -> bool:
        with self.db.session() as session:
            found = session.exec(
                select(Instance.id).where(Instance.sop_instance_uid == sop_uid)
            ).first()
        return found is not None


def _set_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN: disable Nagle on the accepted socket (see the module docstring)."""
    try:
        sock = event.assoc.dul.socket.socket  # type: ignore[union-attr]
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # not fatal: only latency
        log.debug("could not set TCP_NODELAY: %s", exc)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove %s after a failed index: %s", path, exc)
