"""The DICOM upper layer of the Storage SCP: associations and their PDUs (PS3.8, PS3.7).
Its vocabulary is :mod:`triage.ingest.dicom_pdu`, the negotiation
:mod:`triage.ingest.dicom_negotiation`, the DIMSE command sets :mod:`triage.ingest.dicom_dimse`.

Why our own: pynetdicom runs every PDU through two threads, an event queue, its state machine
and a DIMSE decoder, and that CPU before our handler runs kept the SCP far behind dcmtk's
storescp (docs/performance.md, "DICOM C-STORE"). Here one thread per association reads each
PDU header, then each PDV straight into the data set buffer with ``recv_into``, and calls the
handler once the last fragment is in. pynetdicom still does what it does well and what is not
on the hot path: decoding the A-ASSOCIATE-RQ, negotiating presentation contexts and SCP/SCU
roles, encoding the A-ASSOCIATE-AC.

Protocol code triggers events, business logic handles them (the listener in
:mod:`triage.ingest.dicom_scp`):

- ``check(peer) -> Rejection | None``: after the A-ASSOCIATE-RQ passed our own checks (protocol
  version, application context, called AE title, association limit); an allowlist lives here;
- ``begin(start) -> Sink | None``: a C-STORE-RQ command arrived; a sink returned gets each
  fragment of its data set as it arrives (the streamed write, :mod:`triage.ingest.dicom_stream`);
- ``store(request) -> Status``: one complete C-STORE; what it returns is sent as the response,
  then ``request.after`` (if the handler set it) runs before the next PDU is read;
- ``closed(peer, how)``: the association ended (``released``, ``aborted`` by the peer,
  ``timeout``, ``protocol`` error, ``connection`` lost or ``shutdown``); called after the
  association's slot is released (it no longer counts against the limit), on the association's
  own thread, so it must be quick: slow work belongs on a thread of its own.

Every peer gets an answer in the protocol: A-ASSOCIATE-RJ for a refused association, a DIMSE
status for a refused operation (with an Error Comment saying why), A-ABORT for a PDU that
breaks the protocol; the connection is closed only after that. A C-STORE whose Affected SOP
Class UID is not its presentation context's abstract syntax, or a C-ECHO off a Verification
context, is answered 0x0122 as soon as its command is in (:func:`refuse_operation`), and its
data set read and dropped. The states and events follow PS3.8 Table 9-10 (deviations:
docs/dicom-conformance.md); an A-RELEASE-RQ in the middle of a message is answered, and the
half message dropped, logged and counted (:class:`Counters`).

Timeouts (seconds): ``acse`` for the A-ASSOCIATE-RQ to arrive; ``network`` for any read
(an association idle, or a stalled read, this long is aborted); ``dimse`` for each read while
a message's data set is arriving (the smaller of the two applies).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pynetdicom.presentation import build_context

from triage.errors import DicomProtocolError, StoreError
from triage.ingest.dicom_dimse import (
    command_name,
    encode_response,
    p_data_pdus,
    parse_command,
    refuse_operation,
    text_value,
    us_value,
)
from triage.ingest.dicom_negotiation import (
    NO_CONTEXTS,
    RQ_FIXED,
    AcceptedContext,
    Negotiated,
    ae_title,
    negotiate,
)
from triage.ingest.dicom_pdu import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    ASSOCIATE_RQ,
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    CALLED_AE_NOT_RECOGNIZED,
    CONTEXT_NOT_SUPPORTED,
    HEADER,
    INVALID_PARAMETER,
    LOCAL_LIMIT_EXCEEDED,
    MAX_ASSOCIATE_RQ_BYTES,
    MAX_COMMAND_BYTES,
    NO_DATA_SET,
    P_DATA,
    PDU_TYPES,
    PDV,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    RELEASE_RP,
    RELEASE_RP_PDU,
    RELEASE_RQ,
    UNEXPECTED_PARAMETER,
    UNEXPECTED_PDU,
    UNRECOGNIZED_OPERATION,
    UNRECOGNIZED_PDU,
    VERIFICATION,
    Rejection,
    Status,
    abort_pdu,
    check_fixed_length,
    reject_pdu,
)
from triage.ingest.dicom_spool import DataSetBuffer, Spool

log = logging.getLogger(__name__)

#: Distinct A-ASSOCIATE-RQ item sets whose negotiation is remembered (oldest dropped first),
#: and the largest item set remembered (storescu's ~120 contexts take ~10 KiB).
_NEGOTIATION_CACHE = 64
_NEGOTIATION_CACHE_ITEM_BYTES = 1 << 16
#: A connection that has sent no A-ASSOCIATE-RQ for this long gives its place to a new one
#: when the listener is full (see UpperLayerServer._evict_idle)
IDLE_EVICT_SECONDS = 2.0


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of an association."""

    address: str
    port: int
    calling_ae: str = ""
    called_ae: str = ""


class Sink(Protocol):
    """Where a C-STORE's data set fragments also go while they arrive (see ``begin``)."""

    def add(self, fragment: bytearray) -> None: ...  # must not raise

    def discard(self) -> None: ...  # idempotent; a no-op once the store handler used it


@dataclass(frozen=True)
class StoreStart:
    """A C-STORE-RQ command whose data set is about to arrive."""

    peer: Peer
    abstract_syntax: str
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class StoreRequest:
    """One complete C-STORE-RQ: its command and its data set as received (not decoded)."""

    peer: Peer
    abstract_syntax: str
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    message_id: int
    priority: int
    dataset: DataSetBuffer
    #: What ``begin`` returned for this message, given every fragment of the data set.
    sink: Sink | None = None
    #: Set by the store handler: run once the response has been sent (or could not be), before
    #: the next PDU is read.
    after: Callable[[], None] | None = None


@dataclass
class Handlers:
    store: Callable[[StoreRequest], Status]
    check: Callable[[Peer], Rejection | None] = lambda _peer: None
    closed: Callable[[Peer, str], None] = lambda _peer, _how: None
    begin: Callable[[StoreStart], Sink | None] = lambda _start: None


@dataclass
class Limits:
    """Association settings; see :class:`triage.config.Settings` for what each means."""

    ae_title: str
    max_pdu: int = 1 << 20  # announced; 0: unlimited
    max_pdu_claim: int = 1 << 24  # a PDU header claiming more is aborted before any read
    max_associations: int = 10
    max_dataset_bytes: int = 1 << 32
    spill_bytes: int = 1 << 26  # a data set past this waits in an unlinked file, not memory
    spool_dir: Path | None = None
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


class Counters:
    """Protocol events worth watching, counted since the server started (thread-safe; only
    rare paths count, never the C-STORE hot path). Names:

    - ``released_mid_message``: an A-RELEASE-RQ arrived while a DIMSE message (its command or
      its data set) was only partly received; the partial message was dropped, not stored;
    - ``sop_class_refused``: a C-STORE or C-ECHO answered 0x0122 because its Affected SOP
      Class UID, or the operation, does not belong to its presentation context;
    - ``protocol_aborts``: associations we ended with an A-ABORT for a protocol error.
    """

    NAMES = ("released_mid_message", "sop_class_refused", "protocol_aborts")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _Closed(Exception):
    """The peer closed the connection, reset it, or a read timed out."""

    def __init__(self, how: str, message: str) -> None:
        super().__init__(message)
        self.how = how


#: Closing: how long (the ARTIM timer of PS3.8 9.1.5, short), and how many bytes, to read what
#: the peer still sends after our last PDU while waiting for it to close.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20


def close_gently(sock: socket.socket) -> None:
    """Close after our last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT) as PS3.8's state
    machine says (Sta13): wait for the peer to close the connection, reading and dropping what
    it still sends (up to a limit), and close ourselves only when it has, or when the timer
    runs out. Closing first can make a busy peer see the connection end before it has
    handled our A-ASSOCIATE-RJ (a pynetdicom requestor under load once reported neither a
    rejection nor an abort); closing a
    socket with unread bytes makes the kernel send a reset, which can destroy the PDU in
    flight."""
    with contextlib.suppress(OSError):
        sock.settimeout(_LINGER_SECONDS)
        deadline = time.monotonic() + _LINGER_SECONDS
        budget = _LINGER_BYTES
        while budget > 0 and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            budget -= len(data)
    sock.close()


# --------------------------------------------------------------------------- one association


@dataclass
class _Message:
    """A DIMSE message being received."""

    context_id: int
    command: dict[int, bytes]
    spool: Spool
    size: int = 0
    refusal: Status | None = None  # set: the rest of the data set is read and dropped
    sink: Sink | None = None

    def drop_sink(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.discard()


class Association:
    """One association on an accepted socket; :meth:`run` serves it to the end."""

    def __init__(self, server: UpperLayerServer, sock: socket.socket, address: tuple[str, int]):
        self.server = server
        self.sock = sock
        self.peer = Peer(address[0], address[1])
        self.contexts: Mapping[int, AcceptedContext] = NO_CONTEXTS
        self.peer_max_pdu = 0
        self.established = False
        self._send_lock = threading.Lock()
        self._message: _Message | None = None  # the message whose data set is arriving
        self._command = bytearray()  # fragments of the next command set
        self._timeout: float | None = None
        self.opened_at = time.monotonic()
        # its A-ASSOCIATE-RQ has come in whole (until then the connection is idle: when the
        # listener is full, the oldest idle one gives its place to a new connection)
        self.requested = False
        self.evicted = False

    # ------------------------------------------------------------------ socket I/O

    def _recv_into(self, view: memoryview, timeout: float, deadline: float | None = None) -> None:
        """Fill ``view``; each read waits at most ``timeout`` s, and all of them together end
        by ``deadline`` (``time.monotonic()``) when one is given."""
        if timeout != self._timeout:  # settimeout costs two fcntl calls: only on a change
            self.sock.settimeout(timeout)
            self._timeout = timeout
        got, n = 0, len(view)
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Closed("timeout", "the A-ASSOCIATE-RQ did not arrive in time")
                self.sock.settimeout(min(timeout, left))
                self._timeout = None
            try:
                k = self.sock.recv_into(view[got:], n - got)
            except TimeoutError as exc:
                raise _Closed("timeout", f"nothing received for {timeout:g} s") from exc
            except OSError as exc:
                raise _Closed("connection", f"connection lost: {exc}") from exc
            if k == 0:
                raise _Closed("connection", "connection closed by the peer")
            got += k

    def _recv(self, n: int, timeout: float, deadline: float | None = None) -> bytearray:
        buf = bytearray(n)
        with memoryview(buf) as view:
            self._recv_into(view, timeout, deadline)
        return buf

    def send(self, data: bytes) -> None:
        """Send ``data`` whole (raises OSError; also used by the server to abort)."""
        with self._send_lock:
            self.sock.sendall(data)

    def abort_established(self, pdu: bytes) -> None:
        """Send ``pdu`` (an A-ABORT) if the A-ASSOCIATE-AC has gone out; checked under the send
        lock, so that an association accepted at this very moment is aborted, not missed."""
        with self._send_lock:
            if self.established:
                self.sock.sendall(pdu)

    def _reply(self, data: bytes) -> None:
        """:meth:`send` inside the protocol: a peer that stops reading ends the association."""
        try:
            self.send(data)
        except OSError as exc:
            raise _Closed("connection", f"cannot send to the peer: {exc}") from exc

    def _read_header(self, timeout: float, deadline: float | None = None) -> tuple[int, int]:
        pdu_type, _, length = HEADER.unpack(self._recv(6, timeout, deadline))
        claim = self.server.limits.max_pdu_claim
        if claim and length > claim:
            log.warning(
                "peer %s claims a PDU of %d bytes (limit %d, dicom_max_pdu_claim): A-ABORT",
                self.peer.address,
                length,
                claim,
            )
            raise DicomProtocolError(
                INVALID_PARAMETER, f"PDU length {length} over the limit {claim}"
            )
        return pdu_type, length

    # ------------------------------------------------------------------ the association

    def run(self) -> None:
        how = "connection"
        try:
            how = self._serve()
        except DicomProtocolError as exc:
            log.warning("association from %s aborted: %s", self.peer.address, exc)
            self.server.counters.add("protocol_aborts")
            with contextlib.suppress(OSError):
                self.send(abort_pdu(2, exc.reason))
            how = "protocol"
        except _Closed as exc:
            how = exc.how
            if exc.how == "timeout" and not self.server.stopping:
                log.warning("association from %s timed out: %s", self.peer.address, exc)
            else:  # the closed handler says it, once
                log.debug("association from %s ended: %s", self.peer.address, exc)
            # Idle or stalled inside an association: A-ABORT. The ACSE timer (ARTIM) expiring
            # before the A-ASSOCIATE-RQ is in only closes the connection (PS3.8 AA-2).
            if exc.how == "timeout" and self.established:
                with contextlib.suppress(OSError):
                    self.send(abort_pdu(2, 0))
        except Exception:
            log.exception("association from %s failed", self.peer.address)
            with contextlib.suppress(OSError):
                self.send(abort_pdu(2, 0))
            how = "protocol"
        finally:
            if self._message is not None:
                self._message.spool.close()
                self._message.drop_sink()
                self._message = None
            if self.server.stopping:
                how = "shutdown"
            # The association is over: its slot is free now, before the linger on the socket
            # and before the closed handler (whatever it does), so that a peer's next
            # association is never turned away by one that has ended.
            self.server.release(self)
            close_gently(self.sock)
            if self.established:
                try:
                    self.server.handlers.closed(self.peer, how)
                except Exception:
                    log.exception("closed handler failed")

    def _serve(self) -> str:
        limits = self.server.limits
        # the whole request within the ACSE timeout, however slowly its bytes trickle in
        deadline = time.monotonic() + limits.acse_timeout
        pdu_type, length = self._read_header(limits.acse_timeout, deadline)
        if pdu_type == ABORT:  # PS3.8 Sta2 + Evt16: AA-2, close without a word
            raise _Closed("aborted", "A-ABORT before A-ASSOCIATE-RQ")
        if pdu_type != ASSOCIATE_RQ:
            reason = UNEXPECTED_PDU if pdu_type in PDU_TYPES else UNRECOGNIZED_PDU
            raise DicomProtocolError(reason, f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ")
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise DicomProtocolError(INVALID_PARAMETER, f"A-ASSOCIATE-RQ of {length} bytes")
        body = self._recv(length, limits.acse_timeout, deadline)
        self.requested = True
        rejection = self._negotiate(HEADER.pack(pdu_type, 0, length) + body)
        if rejection is not None:
            self._reply(reject_pdu(rejection))
            return "rejected"
        while True:
            timeout = limits.network_timeout
            if self._message is not None or self._command:
                timeout = min(timeout, limits.dimse_timeout)
            pdu_type, length = self._read_header(timeout)
            if pdu_type == P_DATA:
                if length == 0:
                    raise DicomProtocolError(INVALID_PARAMETER, "P-DATA-TF without a PDV")
                self._p_data(length, timeout)
            elif pdu_type == RELEASE_RQ:
                check_fixed_length(pdu_type, length)
                self._recv(length, timeout)
                self._drop_partial_message()
                self._reply(RELEASE_RP_PDU)
                return "released"
            elif pdu_type == ABORT:  # the closed handler reports it
                check_fixed_length(pdu_type, length)
                self._recv(length, timeout)
                return "aborted"
            elif pdu_type in (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, RELEASE_RP):
                raise DicomProtocolError(UNEXPECTED_PDU, f"unexpected PDU type 0x{pdu_type:02X}")
            else:
                raise DicomProtocolError(UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")

    def _drop_partial_message(self) -> None:
        """An A-RELEASE-RQ arrived: a DIMSE message whose command or data set is only partly
        in is dropped (never handed to the store handler), logged and counted. The release is
        still answered with A-RELEASE-RP (PS3.8: the release is always affirmative); the peer
        has no response for that message, so it knows the instance was not stored."""
        message, partial_command = self._message, bytes(self._command)
        if message is None and not partial_command:
            return
        self._message, self._command = None, bytearray()
        self.server.counters.add("released_mid_message")
        if message is not None:
            what = (
                f"{command_name(us_value(message.command, 0x0100))} data set after "
                f"{message.size} bytes, SOP Instance "
                f"{text_value(message.command, 0x1000) or '(none given)'}"
            )
            message.spool.close()
            message.drop_sink()
        else:
            what = f"command set after {len(partial_command)} bytes, SOP Instance unknown"
        log.warning(
            "association from %s (%s): A-RELEASE-RQ in the middle of a %s: the partial "
            "message is dropped, nothing of it is stored; answered A-RELEASE-RP",
            self.peer.address,
            self.peer.calling_ae,
            what,
        )

    def _negotiate(self, raw: bytes) -> Rejection | None:
        """Check the A-ASSOCIATE-RQ; send the AC, or return why it is rejected."""
        server, limits = self.server, self.server.limits
        if len(raw) < RQ_FIXED:
            raise DicomProtocolError(INVALID_PARAMETER, f"A-ASSOCIATE-RQ of {len(raw)} bytes")
        negotiated = server.negotiate(bytes(raw[RQ_FIXED:]))
        called, calling = ae_title(raw[10:26]), ae_title(raw[26:42])
        self.peer = Peer(self.peer.address, self.peer.port, calling, called)
        if not int.from_bytes(raw[6:8], "big") & 0x01:
            return PROTOCOL_VERSION_NOT_SUPPORTED
        if negotiated.application_context != APPLICATION_CONTEXT:
            return CONTEXT_NOT_SUPPORTED
        if called != limits.ae_title:
            log.warning(
                "association from %s, calling AE %r, rejected: called AE %r is not ours (%r)",
                self.peer.address,
                calling,
                called,
                limits.ae_title,
            )
            return CALLED_AE_NOT_RECOGNIZED
        rejection = server.handlers.check(self.peer)
        if rejection is not None:
            return rejection
        if not server.admit(self):
            log.warning(
                "association from %s, calling AE %r, rejected: %d associations already "
                "(dicom_max_associations)",
                self.peer.address,
                calling,
                limits.max_associations,
            )
            return LOCAL_LIMIT_EXCEEDED
        self.peer_max_pdu = negotiated.peer_max_pdu
        self.contexts = negotiated.accepted
        # The AC's AE title fields echo the request's (PS3.8 9.3.3); the rest is negotiated.
        body = b"\x00\x01\x00\x00" + bytes(raw[10:42]) + bytes(32) + negotiated.ac_items
        try:
            # established as the AC goes out, under the send lock: stop() aborting at this
            # moment sees either no association yet or one it must abort (abort_established)
            with self._send_lock:
                self.sock.sendall(HEADER.pack(ASSOCIATE_AC, 0, len(body)) + body)
                self.established = True
        except OSError as exc:
            raise _Closed("connection", f"cannot send to the peer: {exc}") from exc
        if not self.contexts:
            log.warning(
                "association from %s (%s): none of its presentation contexts is supported",
                self.peer.address,
                calling,
            )
        return None

    # ------------------------------------------------------------------ P-DATA

    def _p_data(self, length: int, timeout: float) -> None:
        """Read one P-DATA-TF PDU's PDVs; answer each message whose last fragment is in."""
        limits = self.server.limits
        header = memoryview(bytearray(6))
        left = length
        while left > 0:
            if left < 6:
                raise DicomProtocolError(INVALID_PARAMETER, "P-DATA-TF ends inside a PDV header")
            self._recv_into(header, timeout)
            item_length, context_id, control = PDV.unpack(header)
            size = item_length - 2
            left -= 6
            if item_length < 2 or size > left:
                raise DicomProtocolError(
                    INVALID_PARAMETER, f"PDV length {item_length} outside its PDU"
                )
            left -= size
            if context_id not in self.contexts:
                raise DicomProtocolError(
                    INVALID_PARAMETER, f"PDV on presentation context {context_id}"
                )
            message = self._message
            if control & 0x01:  # a command fragment
                if message is not None:
                    raise DicomProtocolError(
                        UNEXPECTED_PARAMETER, "a command arrived inside a data set"
                    )
                if len(self._command) + size > MAX_COMMAND_BYTES:
                    raise DicomProtocolError(INVALID_PARAMETER, "command set over 64 KiB")
                self._command += self._recv(size, timeout)
                if control & 0x02:
                    parsed = parse_command(self._command)
                    self._command = bytearray()
                    message = _Message(
                        context_id, parsed, Spool(limits.spill_bytes, limits.spool_dir)
                    )
                    field_ = us_value(parsed, 0x0100)
                    if field_ in (C_STORE_RQ, C_ECHO_RQ):
                        message.refusal = self._check_operation(field_, message)
                    if us_value(parsed, 0x0800) == NO_DATA_SET:
                        self._answer(message)
                    else:
                        if field_ == C_STORE_RQ and message.refusal is None:
                            message.sink = self._begin(message)
                        self._message = message
                    timeout = min(timeout, limits.dimse_timeout)
                continue
            # a data set fragment
            if message is None or context_id != message.context_id:
                raise DicomProtocolError(
                    UNEXPECTED_PARAMETER, "a data set fragment with no command"
                )
            message.size += size
            if message.refusal is None and message.size > limits.max_dataset_bytes:
                log.warning(
                    "C-STORE from %s refused: data set over %d bytes (dicom_max_dataset_bytes)",
                    self.peer.address,
                    limits.max_dataset_bytes,
                )
                message.refusal = Status(
                    0xA700, f"data set over the {limits.max_dataset_bytes >> 20} MiB limit"
                )
                message.spool.close()
                message.drop_sink()
            if message.refusal is not None:
                self._discard(size, timeout)
            else:
                fragment = self._recv(size, timeout)
                try:
                    message.spool.add(fragment)
                except StoreError as exc:
                    log.error("C-STORE from %s refused: %s", self.peer.address, exc)
                    message.refusal = Status(0xA700, "cannot hold the data set: disk error")
                    message.drop_sink()
                if message.sink is not None:
                    if message.spool.on_disk:  # spooled to a file: not written twice
                        message.drop_sink()
                    else:
                        message.sink.add(fragment)
            if control & 0x02:
                self._message = None
                self._answer(message)

    def _check_operation(self, field_: int, message: _Message) -> Status | None:
        """:func:`refuse_operation` for a command that just arrived, logged and counted when it
        refuses (its data set, if any, is then read and dropped: nothing is stored)."""
        context = self.contexts[message.context_id]
        sop_class = text_value(message.command, 0x0002)
        refusal = refuse_operation(field_, context, sop_class)
        if refusal is not None:
            self.server.counters.add("sop_class_refused")
            log.warning(
                "association from %s (%s): %s of SOP Class %r, SOP Instance %r on presentation "
                "context %d (%s) refused: 0x%04X %s",
                self.peer.address,
                self.peer.calling_ae,
                command_name(field_),
                sop_class,
                text_value(message.command, 0x1000),
                context.context_id,
                context.abstract_syntax,
                refusal.code,
                refusal.comment,
            )
        return refusal

    def _discard(self, n: int, timeout: float) -> None:
        scratch = memoryview(bytearray(min(n, 1 << 20)))
        while n > 0:
            k = min(n, len(scratch))
            self._recv_into(scratch[:k], timeout)
            n -= k

    def _begin(self, message: _Message) -> Sink | None:
        context = self.contexts[message.context_id]
        start = StoreStart(
            peer=self.peer,
            abstract_syntax=context.abstract_syntax,
            transfer_syntax=context.transfer_syntax,
            sop_class_uid=text_value(message.command, 0x0002),
            sop_instance_uid=text_value(message.command, 0x1000),
        )
        try:
            return self.server.handlers.begin(start)
        except Exception:
            log.exception("C-STORE begin handler failed")
            return None

    def _answer(self, message: _Message) -> None:
        try:
            self._respond(message)
        finally:
            message.spool.close()
            message.drop_sink()

    def _respond(self, message: _Message) -> None:
        command = message.command
        field_ = us_value(command, 0x0100)
        message_id = us_value(command, 0x0110)
        if field_ is None or message_id is None:
            raise DicomProtocolError(
                INVALID_PARAMETER, "command without Command Field or Message ID"
            )
        context = self.contexts[message.context_id]
        sop_class = text_value(command, 0x0002)
        if field_ == C_STORE_RQ:
            sop_instance = text_value(command, 0x1000)
            request, status = self._store(message, context, sop_class, sop_instance, message_id)
            rsp = encode_response(0x8001, message_id, status, sop_class, sop_instance)
            try:
                self._reply(p_data_pdus(message.context_id, rsp, self.peer_max_pdu))
            finally:
                if request is not None and request.after is not None:
                    try:
                        request.after()
                    except Exception:
                        log.exception("C-STORE after-response handler failed")
            return
        elif field_ == C_ECHO_RQ:
            status = message.refusal or Status(0)
            rsp = encode_response(0x8030, message_id, status, sop_class or VERIFICATION)
        elif field_ == C_CANCEL_RQ:
            return
        elif field_ & 0x8000:
            raise DicomProtocolError(
                UNEXPECTED_PARAMETER, f"a DIMSE response (0x{field_:04X}) from the SCU"
            )
        else:
            log.warning(
                "association from %s: DIMSE command 0x%04X not supported: 0x%04X",
                self.peer.address,
                field_,
                UNRECOGNIZED_OPERATION,
            )
            status = Status(UNRECOGNIZED_OPERATION, "only C-STORE and C-ECHO are served")
            rsp = encode_response(field_ | 0x8000, message_id, status, sop_class)
        self._reply(p_data_pdus(message.context_id, rsp, self.peer_max_pdu))

    def _store(
        self,
        message: _Message,
        context: AcceptedContext,
        sop_class: str,
        sop_instance: str,
        message_id: int,
    ) -> tuple[StoreRequest | None, Status]:
        """Hand a complete C-STORE to the store handler (the spool and the sink are closed by
        the caller)."""
        if message.refusal is not None:
            return None, message.refusal
        try:
            dataset = message.spool.finish()
        except StoreError as exc:
            log.error("C-STORE from %s refused: %s", self.peer.address, exc)
            return None, Status(0xA700, "cannot hold the data set: disk error")
        request = StoreRequest(
            peer=self.peer,
            abstract_syntax=context.abstract_syntax,
            transfer_syntax=context.transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            message_id=message_id,
            priority=us_value(message.command, 0x0700) or 0,
            dataset=dataset,
            sink=message.sink,
        )
        try:
            return request, self.server.handlers.store(request)
        except Exception:
            log.exception("C-STORE handler failed")
            return request, Status(0x0110, "processing failure")


# --------------------------------------------------------------------------- the server


class UpperLayerServer:
    """Accepts TCP connections and serves each as an association in its own thread."""

    def __init__(
        self,
        limits: Limits,
        abstract_syntaxes: list[str],
        transfer_syntaxes: list[str],
        handlers: Handlers,
    ) -> None:
        self.limits = limits
        self.handlers = handlers
        self.counters = Counters()
        supported = []
        for i, uid in enumerate(abstract_syntaxes):
            cx = build_context(uid, transfer_syntaxes)
            cx.context_id = 2 * i + 1
            # Our roles, for a requestor that proposes SCP/SCU role selection (PS3.7 D.3.3.4):
            # it may be the SCU (we are the SCP: we store, we answer C-ECHO); it may not be the
            # SCP (we never send a C-STORE). A context on which the requestor wants to be SCP
            # only is rejected; one where it offers both is accepted with us as SCP only.
            cx.scu_role, cx.scp_role = True, False
            supported.append(cx)
        #: Negotiation input only; associations see :class:`AcceptedContext` values.
        self._supported = tuple(supported)
        self.stopping = False
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._active: set[Association] = set()
        self._connections: dict[Association, threading.Thread] = {}
        self._turned_away_logged = 0.0
        self._evicted_logged = 0.0
        self._negotiated: dict[bytes, Negotiated] = {}

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (0: any free port); returns the bound address. Raises
        OSError when it cannot be bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.2)
        self._listener = sock
        self.stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="dicom-accept", daemon=True)
        self._thread.start()
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    @property
    def address(self) -> tuple[str, int] | None:
        sock = self._listener
        if sock is None or sock.fileno() < 0:
            return None
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.stopping:
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping:
                    return
                log.error("DICOM listener cannot accept a connection: %s", exc)
                time.sleep(0.1)  # e.g. out of file descriptors: do not spin
                continue
            conn.settimeout(None)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                crowded = len(self._connections) >= self.max_connections
            if crowded and not self._evict_idle():
                self._turn_away(conn, str(address[0]))
                continue
            assoc = Association(self, conn, (str(address[0]), int(address[1])))
            thread = threading.Thread(
                target=self._run,
                args=(assoc,),
                name=f"dicom-{address[0]}:{address[1]}",
                daemon=True,
            )
            with self._lock:
                self._connections[assoc] = thread
            thread.start()

    def negotiate(self, items: bytes) -> Negotiated:
        """:func:`negotiate`, remembered: a modality sends the same request items on every
        association, and negotiating its many proposed contexts is the costliest part of a
        short association (docs/performance.md)."""
        found = self._negotiated.get(items)
        if found is None:
            found = negotiate(
                items,
                self._supported,
                max_pdu=self.limits.max_pdu,
                implementation_class_uid=self.limits.implementation_class_uid,
                implementation_version_name=self.limits.implementation_version_name,
            )
            if len(items) > _NEGOTIATION_CACHE_ITEM_BYTES:
                return found
            with self._lock:
                if len(self._negotiated) >= _NEGOTIATION_CACHE:
                    self._negotiated.pop(next(iter(self._negotiated)))
                self._negotiated[items] = found
        return found

    @property
    def max_connections(self) -> int:
        """Open connections (negotiating or associated) served at once: twice the association
        limit and a few more, so that peers over the limit still get their A-ASSOCIATE-RJ
        from a thread, while a flood of idle connections cannot start threads without end."""
        return 2 * self.limits.max_associations + 4

    def _evict_idle(self) -> bool:
        """Close the oldest connection that has sent no A-ASSOCIATE-RQ for IDLE_EVICT_SECONDS,
        so that a new connection takes its place: idle connections (a port scan, a stuck
        peer, a flood) must not keep modalities out until the ACSE timeout. False when there
        is none."""
        now = time.monotonic()
        with self._lock:
            idle = [
                a
                for a in self._connections
                if not a.requested and not a.evicted and now - a.opened_at >= IDLE_EVICT_SECONDS
            ]
            if not idle:
                return False
            oldest = min(idle, key=lambda a: a.opened_at)
            oldest.evicted = True
        if now - self._evicted_logged > 1.0:  # a flood is logged once a second
            self._evicted_logged = now
            log.warning(
                "connection from %s closed after %.0f s without an A-ASSOCIATE-RQ: its place "
                "goes to a new connection (%d connections open)",
                oldest.peer.address,
                now - oldest.opened_at,
                self.max_connections,
            )
        with contextlib.suppress(OSError):
            oldest.sock.shutdown(socket.SHUT_RDWR)  # its thread reads the end and exits
        return True

    def _turn_away(self, conn: socket.socket, address: str) -> None:
        """Too many connections: A-ASSOCIATE-RJ (transient, local limit) without reading the
        request, from the accepting thread; the peer should retry later."""
        now = time.monotonic()
        if now - self._turned_away_logged > 1.0:  # a flood is logged once a second
            self._turned_away_logged = now
            log.warning(
                "connection from %s turned away: %d connections open already",
                address,
                self.max_connections,
            )
        with contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(reject_pdu(LOCAL_LIMIT_EXCEEDED))
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_WR)
            conn.setblocking(False)
            conn.recv(65536)  # drop what already arrived, so the close is not a reset
        conn.close()

    def _run(self, assoc: Association) -> None:
        try:
            assoc.run()
        finally:
            with self._lock:
                self._active.discard(assoc)
                self._connections.pop(assoc, None)

    def release(self, assoc: Association) -> None:
        """``assoc`` has ended: it no longer counts against the association limit (its
        connection still counts against :attr:`max_connections` until its thread ends)."""
        with self._lock:
            self._active.discard(assoc)

    def admit(self, assoc: Association) -> bool:
        """Count ``assoc`` as active unless the limit is reached."""
        with self._lock:
            if len(self._active) >= self.limits.max_associations:
                return False
            self._active.add(assoc)
            return True

    @property
    def active(self) -> list[Association]:
        with self._lock:
            return list(self._active)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, abort open associations (A-ABORT, service user), wait for their
        threads (a store in progress finishes). Idempotent."""
        self.stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            connections = dict(self._connections)
        for assoc in connections:
            with contextlib.suppress(OSError):
                assoc.abort_established(abort_pdu(0, 0))
                assoc.sock.shutdown(socket.SHUT_RDWR)
        for thread in connections.values():
            thread.join(timeout)
