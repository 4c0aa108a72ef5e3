"""DICOM Storage SCP: receives C-STORE (and answers C-ECHO), stores, indexes, acknowledges.

The rule for every C-STORE: the instance is on disk (fsynced, file and directory) and its index
row committed *before* the peer hears Success (see :mod:`triage.ingest.dicom_index` for what
survives which crash, and the start-up recovery). The data set is written as received, never
decoded: only its header is parsed, from the bytes before the Pixel Data. Anything else gets
a DICOM failure status, never a dropped association:

=============================================  ==============================================
undecodable data set, or a compressed one      0xC210 (cannot understand / decode), no file
whose pixel data is not a stream of its
transfer syntax
transfer syntax with no decoder installed      0xC212 (cannot understand: no decoder)
missing SOP/Study/Series UID, request/data     0xA900 (data set does not match SOP class)
set SOP Instance UID mismatch
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
hangs off ``on_instance(study_uid)``, called after a successful store; it runs before the
response is sent, so it must be quick (e.g. put the UID on a queue). An exception in it is
logged and does not change the answer: the instance is already safe.

pynetdicom hooks used: ``EVT_CONN_OPEN`` sets TCP_NODELAY (pynetdicom has no option for it;
without it small PDUs such as C-STORE-RSP wait on Nagle's algorithm), a read timeout, and the
PDU-length guard (:class:`_GuardedSocket`, which also reads in large chunks instead of
pynetdicom's 4 KiB); ``EVT_REQUESTED`` applies the allowlist. pynetdicom's standard DIMSE/PDU
logging handlers are unbound unless the ``pynetdicom`` logger is at DEBUG: they format every
message even when nothing is logged.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, cast

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
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta as pynetdicom_file_meta
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer

from triage.config import Settings
from triage.errors import ConfigError, DicomIngestError, StoreError
from triage.ingest.dicom_files import (
    check_codestream,
    decoder_available,
    encode_file_meta,
    index_header,
    index_instance,
    read_header,
    safe_instance_path,
    scan_dataset,
    write_instance_file,
)
from triage.ingest.dicom_index import InstanceIndex
from triage.store.db import Database
from triage.store.models import utcnow

log = logging.getLogger(__name__)

SUCCESS = 0x0000
#: A transfer syntax we negotiate but cannot decode here (a decoder plugin is missing).
NO_DECODER = 0xC212  # (pynetdicom itself answers 0xC211 when a handler raises)

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

_STANDARD_LOGGING = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)

# A-ABORT PDU: source 2 (service provider), reason 6 (invalid PDU parameter value).
_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])
_READ_CHUNK = 1 << 20


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
        self.index = InstanceIndex(db)
        self._server: ThreadedAssociationServer | None = None
        self._ae: AE | None = None
        # One store per SOP Instance UID at a time: two associations sending the same
        # instance must not write its file concurrently.
        self._in_flight: set[str] = set()
        self._in_flight_changed = threading.Condition()
        self._allowed = _parse_allowlist(settings.dicom_allowed_peers)
        self._max_claim = max(
            settings.dicom_max_pdu_claim,
            settings.dicom_max_pdu + 6 if settings.dicom_max_pdu else 0,
        )
        self._low_disk = False

    # ------------------------------------------------------------------ lifecycle

    def _make_ae(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.dicom_ae_title)
        ae.maximum_pdu_size = s.dicom_max_pdu
        ae.maximum_associations = s.dicom_max_associations
        ae.acse_timeout = s.dicom_acse_timeout_seconds
        ae.dimse_timeout = s.dicom_dimse_timeout_seconds
        ae.network_timeout = s.dicom_network_timeout_seconds
        ae.require_called_aet = True
        ae.add_supported_context(Verification, TRANSFER_SYNTAXES)
        for cx in StoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        return ae

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
        ae = self._make_ae()
        address = (self.settings.bind_host, self.settings.dicom_port)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ABORTED, _on_aborted),
        ]
        try:
            server = ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ConfigError(
                "dicom_port", f"cannot listen on {address[0]}:{address[1]}: {exc}"
            ) from exc
        assert server is not None  # block=False always returns the server
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            for event_type, handler in _STANDARD_LOGGING:
                server.unbind(event_type, handler)
        self._ae, self._server = ae, server
        host, port = server.server_address[:2]
        log.info("DICOM SCP %s listening on %s:%s", ae.ae_title, host, port)
        return str(host), int(port)

    def stop(self) -> None:
        """Abort open associations, stop listening and close the socket. Idempotent."""
        ae, self._ae, self._server = self._ae, None, None
        if ae is not None:
            ae.shutdown()
        self.index.close()

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

    # ------------------------------------------------------------------ association policy

    def _on_connection(self, event: Event) -> None:
        """EVT_CONN_OPEN: TCP_NODELAY, a read timeout and the PDU-length guard; pynetdicom's
        logging handlers off unless its logger is at DEBUG."""
        if not logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
            for event_type, handler in _STANDARD_LOGGING:
                event.assoc.unbind(event_type, handler)
        sock = event.assoc.dul.socket
        raw = sock.socket if sock is not None else None
        if sock is None or raw is None:
            return
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(self.settings.dicom_network_timeout_seconds)
        except OSError as exc:  # not fatal: only latency / a stalled peer holds a thread
            log.debug("could not set socket options: %s", exc)
        if type(sock) is AssociationSocket:
            sock.__class__ = _GuardedSocket
            cast(_GuardedSocket, sock).max_pdu_claim = self._max_claim

    def _on_requested(self, event: Event) -> None:
        """EVT_REQUESTED: reject a calling AE title/address pair not in the allowlist."""
        if not self._allowed:
            return
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive else "").strip()
        address = str(assoc.requestor.address)
        if _is_allowed(self._allowed, calling, address):
            return
        log.warning(
            "association from %s, calling AE %r, rejected: not in dicom_allowed_peers",
            address,
            calling,
        )
        assoc.acse.send_reject(0x01, 0x01, 0x03)  # permanent, service user, calling AE
        assoc.kill()  # waits until the reject is sent and the peer has closed

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

    def _store(self, event: Event) -> str | None:
        """Persist and index one instance. Returns its Study UID, or None for a duplicate."""
        request = cast(C_STORE, event.request)
        transfer_syntax = str(event.context.transfer_syntax)
        if not decoder_available(transfer_syntax):
            raise DicomIngestError(
                NO_DECODER, f"no decoder installed for transfer syntax {transfer_syntax}"
            )
        self._check_free_space()
        body = cast(BytesIO, request.DataSet).getbuffer()
        try:
            scan = scan_dataset(body, transfer_syntax)
            if scan.header_length is None:  # deflated: pydicom inflates it to read the header
                meta = pynetdicom_file_meta(event.file_meta)
                ds = read_header(b"\x00" * 128 + b"DICM" + meta + bytes(body))
                fields, study_attrs = index_instance(ds)
            else:
                check_codestream(body, scan.header_length, transfer_syntax)
                fields, study_attrs = index_header(scan, transfer_syntax)
            affected = str(request.AffectedSOPInstanceUID or "").strip("\x00 ")
            sop_uid = fields["sop_instance_uid"]
            if affected and affected != sop_uid:
                raise DicomIngestError(
                    DicomIngestError.DATASET_MISMATCH,
                    f"Affected SOP Instance UID {affected!r:.80} differs from the data set's",
                )
            calling_ae = str(event.assoc.requestor.ae_title).strip()[:16]
            with self._one_at_a_time(sop_uid):
                if self.index.is_stored(sop_uid):
                    log.info("duplicate SOP Instance UID %s: already stored", sop_uid)
                    return None
                path = safe_instance_path(
                    self.data_dir, fields["study_uid"], fields["series_uid"], sop_uid
                )
                head = encode_file_meta(
                    fields["sop_class_uid"], sop_uid, transfer_syntax, calling_ae
                )
                size = write_instance_file(path, (head, body))
                row = {
                    **fields,
                    "path": path.relative_to(self.data_dir).as_posix(),
                    "size_bytes": size,
                    "calling_ae": calling_ae,
                    "received_at": utcnow(),
                }
                try:
                    new = self.index.record(row, study_attrs)
                except StoreError:
                    try:  # a commit can fail after it took effect: then the row is there
                        indexed = self.index.is_stored(sop_uid)
                    except StoreError:
                        indexed = False
                    if not indexed:
                        _remove(path)  # nothing refers to it; the peer will resend
                        raise
                    new = True
        finally:
            body.release()
        return fields["study_uid"] if new else None

    @contextlib.contextmanager
    def _one_at_a_time(self, sop_uid: str) -> Iterator[None]:
        with self._in_flight_changed:
            while sop_uid in self._in_flight:
                self._in_flight_changed.wait()
            self._in_flight.add(sop_uid)
        try:
            yield
        finally:
            with self._in_flight_changed:
                self._in_flight.discard(sop_uid)
                self._in_flight_changed.notify_all()


class _GuardedSocket(AssociationSocket):
    """pynetdicom's socket with two changes to :meth:`recv`, which the DUL calls with the
    length a PDU header claims: a claim above ``max_pdu_claim`` is answered with A-ABORT and
    nothing is read (pynetdicom would otherwise try to buffer up to 4 GiB), and reads are
    done in large chunks into one buffer (pynetdicom reads 4 KiB at a time)."""

    max_pdu_claim: int = 0

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        if sock is None:
            return bytearray()
        if self.max_pdu_claim and nr_bytes > self.max_pdu_claim:
            log.warning(
                "peer %s claims a PDU of %d bytes (limit %d, dicom_max_pdu_claim): A-ABORT",
                self.assoc.requestor.address,
                nr_bytes,
                self.max_pdu_claim,
            )
            with contextlib.suppress(OSError):
                sock.sendall(_ABORT_INVALID_PDU)
                sock.shutdown(socket.SHUT_RDWR)
            return bytearray()  # short read: pynetdicom closes the connection
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = sock.recv_into(view[got:], min(nr_bytes - got, _READ_CHUNK))
            if n == 0:
                break
            got += n
        view.release()
        if got < nr_bytes:
            del buf[got:]
        return buf


Allowlist = dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network | None]]


def _parse_allowlist(peers: dict[str, list[str]]) -> Allowlist:
    """{AE title: [network, ...]}; None stands for any address ('*')."""
    return {
        ae: [None if a == "*" else ipaddress.ip_network(a, strict=False) for a in addresses]
        for ae, addresses in peers.items()
    }


def _is_allowed(allowed: Allowlist, calling_ae: str, address: str) -> bool:
    networks = allowed.get(calling_ae)
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None in networks
    return any(net is None or ip in net for net in networks)


def _on_aborted(event: Event) -> None:
    """EVT_ABORTED: what was acknowledged is kept; completion waits for a quiet period as for
    any study, so an aborted transfer is never taken for a complete one."""
    log.warning(
        "association from %s (%s) aborted; instances already acknowledged are kept",
        event.assoc.requestor.address,
        str(event.assoc.requestor.ae_title).strip(),
    )


def disk_free_bytes(path: Path) -> int:
    """Free bytes for unprivileged writers on the disk holding ``path`` (tests replace it)."""
    return int(shutil.disk_usage(path).free)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        log.warning("could not remove %s after a failed index: %s", path, exc)
