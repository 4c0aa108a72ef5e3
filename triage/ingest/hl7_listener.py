"""HL7 v2 MLLP listener: RIS orders in, durable, then acknowledged.

For every frame on a connection (a connection may carry any number of messages, answered in
order):

1. decode the bytes (MSH-18: ASCII, 8859/n, UTF-8; default UTF-8 with ISO 8859-1 fallback);
2. read the header and parse the orders (ORM^O01, OMI^O23); other well-formed message types
   are stored and answered AA but not applied;
3. in ONE transaction: store the raw message in ``HL7Message`` together with the ACK we are
   about to send and its code, and upsert one ``Order`` per ORC group (key: accession number +
   sending facility);
4. only after the commit, write the ACK to the socket; then call ``on_order(order_id)`` for
   every order applied (from a worker thread, one call at a time per connection).

So AA means: the message is stored durably and applied. A message that cannot be parsed gets
AR, one we do not support or that lacks required fields AE (ERR carries the table-0357 code);
both are stored with their ACK when the database allows. A database failure rolls everything
back and answers AE 207. A frame over ``hl7_max_message_bytes`` is answered AR and the
connection closed; a peer idle for ``idle_timeout`` seconds is disconnected.

Parsing happens before the ACK in this version. To move it behind the ACK later, split
:meth:`HL7Listener.process` after the header check: commit the raw message (processed=False)
and AA, then parse and apply from a queue, setting ``processed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from triage.config import Settings
from triage.errors import HL7Error, StoreError
from triage.hl7.ack import ack_for_error, build_ack
from triage.hl7.mllp import MLLPDecoder, MLLPFrameTooLarge, frame
from triage.hl7.parse import MessageHeader, ParsedOrder, parse_orders, peek_header, read_header
from triage.store.db import Database
from triage.store.models import HL7Message, Order, utcnow

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0
READ_CHUNK = 64 * 1024

# ORC-1 values that create or update the order, and those that cancel it (with ORC-5 to set).
UPDATE_CONTROLS = frozenset({"NW", "OK", "SN", "NA", "XO", "XR", "SC"})
CANCEL_CONTROLS: dict[str, str] = {
    "CA": "CA",
    "CR": "CA",
    "OC": "CA",
    "DC": "DC",
    "DR": "DC",
    "OD": "DC",
}
APPLIED_CONTROLS = UPDATE_CONTROLS | frozenset(CANCEL_CONTROLS)
# Order fields copied from the message when the message has a value for them.
_ORDER_FIELDS = (
    "placer_order_number",
    "filler_order_number",
    "patient_id",
    "patient_name",
    "patient_class",
    "ordered_priority",
    "procedure_code",
    "procedure_text",
    "modality",
    "study_uid",
    "ordering_location",
    "sending_application",
)

# HL7 table 0211 (character sets) -> Python codec
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
}


def declared_charset(payload: bytes) -> str:
    """MSH-18 (first repetition) read from the raw bytes, upper-case; "" when absent."""
    if not payload.startswith(b"MSH") or len(payload) < 8:
        return ""
    end = len(payload)
    for sep in (b"\r", b"\n"):
        i = payload.find(sep)
        if 0 <= i < end:
            end = i
    fs = payload[3:4]
    parts = payload[:end].split(fs)
    if len(parts) < 18:
        return ""
    rep = parts[1][1:2] or b"~"
    return parts[17].split(rep)[0].decode("latin-1").strip().upper()


def decode_message(payload: bytes) -> tuple[str, str]:
    """(text, codec) for a frame payload: the MSH-18 charset when declared and the bytes fit
    it, else UTF-8, else ISO 8859-1 (which always decodes)."""
    declared = _CHARSETS.get(declared_charset(payload), "")
    for codec in dict.fromkeys(c for c in (declared, "utf-8", "latin-1") if c):
        try:
            return payload.decode(codec), codec
        except UnicodeDecodeError:
            continue
    return payload.decode("latin-1"), "latin-1"  # pragma: no cover - latin-1 never fails


@dataclass
class Outcome:
    """What :meth:`HL7Listener.process` decided for one message."""

    ack: str
    ack_code: str
    order_ids: list[int] = field(default_factory=list)
    message_id: int | None = None
    error: str = ""


class HL7Listener:
    """Asyncio MLLP server storing RIS orders. ``on_order(order_id)`` runs after each ACK."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        on_order: Callable[[int], None] | None = None,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.db = db
        self.on_order = on_order
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._apply_lock = threading.Lock()  # one message applied at a time (no duplicate rows)

    @property
    def ready(self) -> bool:
        """True while the listener accepts connections."""
        return self._server is not None and self._server.is_serving()

    @property
    def address(self) -> tuple[str, int] | None:
        return self._address

    async def start(self) -> tuple[str, int]:
        """Bind ``bind_host:hl7_port`` (port 0: an ephemeral one) and return the address."""
        if self._server is not None:
            raise RuntimeError("listener already started")
        self._server = await asyncio.start_server(
            self._on_connection, host=self.settings.bind_host, port=self.settings.hl7_port
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("HL7 listener on %s:%d", *self._address)
        return self._address

    async def stop(self) -> None:
        """Stop accepting, drop open connections, wait until all handlers ended."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await asyncio.sleep(0)  # let handlers of just-accepted connections start (and quit)
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
        log.info("HL7 listener stopped")

    # -- connections ------------------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._server is None:  # accepted while stopping
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer_info = writer.get_extra_info("peername")
        peer = f"{peer_info[0]}:{peer_info[1]}" if peer_info else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = MLLPDecoder(self.settings.hl7_max_message_bytes)
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(READ_CHUNK), self.idle_timeout)
                except TimeoutError:
                    log.info("HL7 peer %s idle for %.0fs: disconnecting", peer, self.idle_timeout)
                    break
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except MLLPFrameTooLarge as exc:
                    for payload in exc.complete_frames:
                        await self._answer(payload, peer, writer)
                    await self._answer_oversize(exc, peer, writer)
                    break
                for payload in frames:
                    await self._answer(payload, peer, writer)
        except (ConnectionError, OSError) as exc:
            log.info("HL7 peer %s: connection lost: %s", peer, exc)
        except asyncio.CancelledError:
            pass
        finally:
            if decoder.pending:
                log.warning(
                    "HL7 peer %s left %d bytes of an unfinished frame", peer, decoder.pending
                )
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=2)
            if task is not None:
                self._connections.discard(task)

    async def _answer(self, payload: bytes, peer: str, writer: asyncio.StreamWriter) -> None:
        text, codec = decode_message(payload)
        outcome = await asyncio.to_thread(self.process, text, peer)
        writer.write(frame(outcome.ack.encode(codec, errors="replace")))
        await writer.drain()
        if self.on_order is not None:
            for order_id in outcome.order_ids:
                try:
                    await asyncio.to_thread(self.on_order, order_id)
                except Exception:
                    log.exception("on_order(%d) failed", order_id)

    async def _answer_oversize(
        self, exc: MLLPFrameTooLarge, peer: str, writer: asyncio.StreamWriter
    ) -> None:
        head, _ = decode_message(exc.head)
        ack = self._ack_error(head, exc)
        log.warning("HL7 peer %s: %s; closing the connection", peer, exc)
        await asyncio.to_thread(self._record_failure, head, peer, ack, exc.ack_code, str(exc))
        writer.write(frame(ack.encode("utf-8")))
        await writer.drain()

    # -- one message --------------------------------------------------------------------------

    def _ack_error(self, raw: str | MessageHeader | None, exc: HL7Error) -> str:
        return ack_for_error(
            raw,
            exc,
            sending_application=self.settings.sending_application,
            sending_facility=self.settings.sending_facility,
        )

    def process(self, raw: str, peer: str = "") -> Outcome:
        """Store, apply and acknowledge one decoded message; returns the ACK to send.

        Blocking (database); the server runs it in a worker thread. Never raises for bad input
        or a database failure: those become AE/AR ACKs.
        """
        header: MessageHeader | None = peek_header(raw)
        orders: list[ParsedOrder] = []
        try:
            header = read_header(raw)
            if not header.control_id:
                raise HL7Error(
                    "MSH-10 (message control id) is missing", hl7_code=101, location="MSH^1^10"
                )
            if not header.message_type:
                raise HL7Error("MSH-9 (message type) is missing", hl7_code=101, location="MSH^1^9")
            if header.is_order:
                orders = parse_orders(raw)
                for i, order in enumerate(orders, start=1):
                    if not order.accession_number:
                        raise HL7Error(
                            "order has no accession number (IPC-1, OBR-18, OBR-3, ORC-3 empty)",
                            hl7_code=101,
                            location=f"OBR^{i}^18",
                        )
        except HL7Error as exc:
            ack = self._ack_error(header or raw, exc)
            log.info("HL7 from %s answered %s: %s", peer, exc.ack_code, exc)
            message_id = self._record_failure(raw, peer, ack, exc.ack_code, str(exc), header)
            return Outcome(ack, exc.ack_code, message_id=message_id, error=str(exc))

        ack = build_ack(
            header,
            "AA",
            sending_application=self.settings.sending_application,
            sending_facility=self.settings.sending_facility,
        )
        try:
            with self._apply_lock, self.db.session() as session:
                msg = self._message_row(raw, peer, header, ack, "AA")
                msg.processed = True
                session.add(msg)
                session.flush()
                order_ids = [
                    self._upsert(session, order, msg.id)
                    for order in orders
                    if order.order_control in APPLIED_CONTROLS
                ]
                if len(order_ids) < len(orders):
                    msg.error = "order control not applied: " + ", ".join(
                        sorted({o.order_control for o in orders} - APPLIED_CONTROLS)
                    )
        except Exception as exc:  # database failure or a bug: nothing is half-applied
            if not isinstance(exc, StoreError):
                log.exception("HL7 from %s: applying failed", peer)
            else:
                log.error("HL7 from %s: database failure: %s", peer, exc)
            err = HL7Error(f"could not store the message: {exc}", ack_code="AE", hl7_code=207)
            ack = self._ack_error(header, err)
            message_id = self._record_failure(raw, peer, ack, "AE", str(err), header)
            return Outcome(ack, "AE", message_id=message_id, error=str(err))
        return Outcome(ack, "AA", order_ids=order_ids, message_id=msg.id)

    def _message_row(
        self, raw: str, peer: str, header: MessageHeader | None, ack: str, ack_code: str
    ) -> HL7Message:
        h = header or MessageHeader()
        return HL7Message(
            received_at=utcnow(),
            peer=peer,
            sending_application=h.sending_application,
            sending_facility=h.sending_facility,
            control_id=h.control_id,
            message_type=h.type_code,
            version=h.version,
            raw=raw,
            ack=ack,
            ack_code=ack_code,
        )

    def _record_failure(
        self,
        raw: str,
        peer: str,
        ack: str,
        ack_code: str,
        error: str,
        header: MessageHeader | None = None,
    ) -> int | None:
        """Store a message we answered AE/AR (best effort: the database may be what failed)."""
        if header is None:
            header = peek_header(raw)
        try:
            with self.db.session() as session:
                msg = self._message_row(raw, peer, header, ack, ack_code)
                msg.error = error[:2000]
                msg.processed = True
                session.add(msg)
                session.flush()
                return msg.id
        except Exception as exc:
            log.error("HL7 from %s: could not record the %s answer: %s", peer, ack_code, exc)
            return None

    @staticmethod
    def _upsert(session: Session, parsed: ParsedOrder, message_id: int | None) -> int:
        control = parsed.order_control
        row = session.exec(
            select(Order)
            .where(
                Order.accession_number == parsed.accession_number,
                Order.sending_facility == parsed.sending_facility,
            )
            .order_by(col(Order.updated_at).desc(), col(Order.id).desc())
        ).first()
        if row is None:
            row = Order(
                accession_number=parsed.accession_number,
                sending_facility=parsed.sending_facility,
            )
        row.order_control = control
        if control in CANCEL_CONTROLS:
            row.order_status = parsed.order_status or CANCEL_CONTROLS[control]
        else:
            if control == "NW" or parsed.order_status:
                row.order_status = parsed.order_status
            for name in _ORDER_FIELDS:
                value = getattr(parsed, name)
                if value:
                    setattr(row, name, value)
        if row.id is None:  # a first message that is not NW still records what it carries
            for name in _ORDER_FIELDS:
                value = getattr(parsed, name)
                if value and not getattr(row, name):
                    setattr(row, name, value)
        row.message_id = message_id
        row.updated_at = utcnow()
        session.add(row)
        session.flush()
        if row.id is None:  # pragma: no cover - flush assigns it
            raise StoreError("order row has no id after flush")
        return row.id
