"""A raw DICOM upper-layer peer for tests: it speaks PDUs byte by byte, to send what toolkits
never would (PDVs on unknown contexts, data before a command, odd fragmentation, a transfer
broken off mid-data set)."""

from __future__ import annotations

import socket
import struct
from typing import Any

from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from triage.ingest.dicom_dimse import encode_response, parse_command
from triage.ingest.dicom_pdu import Status


def associate_rq(
    *,
    max_pdu: int = 0,
    version: int = 1,
    app_context: str = "1.2.840.10008.3.1.1.1",
    called: str = "TRIAGE",
    calling: str = "RAWPEER",
    abstract_syntaxes: tuple[str, ...] = (Verification, CTImageStorage),
    roles: dict[str, tuple[bool, bool]] | None = None,
) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``abstract_syntaxes`` as contexts 1, 3, 5, ... (by default
    Verification as 1 and CT as 3), with SCP/SCU role selection items ``{SOP class: (SCU
    role, SCP role)}`` (the roles the requestor proposes for itself)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(app_context)
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for i, uid in enumerate(abstract_syntaxes):
        cx = build_context(uid, [ExplicitVRLittleEndian])
        cx.context_id = 2 * i + 1
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    item = MaximumLengthNotification()
    item.maximum_length_received = max_pdu
    user: list[Any] = [item]
    for uid, (scu, scp) in (roles or {}).items():
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = UID(uid)
        role.scu_role, role.scp_role = scu, scp
        user.append(role)
    primitive.user_information = user
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    pdu.protocol_version = version
    return bytes(pdu.encode())


class RawPeer:
    """Speaks PDUs byte by byte, to send what toolkits never would."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)

    def close(self) -> None:
        self.sock.close()

    def recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def recv_pdu(self) -> tuple[int, bytes]:
        head = self.recv_exactly(6)
        return head[0], self.recv_exactly(int.from_bytes(head[2:6], "big"))

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def associate(self, **kwargs: Any) -> tuple[int, bytes]:
        self.sock.sendall(associate_rq(**kwargs))
        return self.recv_pdu()

    def p_data(self, *pdvs: tuple[int, int, bytes]) -> None:
        """One P-DATA-TF PDU holding (context id, control header, bytes) PDVs."""
        body = b"".join(struct.pack(">IBB", len(v) + 2, cx, mch) + v for cx, mch, v in pdvs)
        self.sock.sendall(struct.pack(">BBI", 4, 0, len(body)) + body)

    def response(self) -> dict[int, bytes]:
        """Read P-DATA PDUs until a complete command set; return it parsed."""
        command = b""
        while True:
            pdu_type, body = self.recv_pdu()
            assert pdu_type == 0x04, f"P-DATA expected, got PDU type {pdu_type}"
            i = 0
            while i < len(body):
                length, _cx, control = struct.unpack_from(">IBB", body, i)
                command += body[i + 6 : i + 4 + length]
                i += 4 + length
                if control & 0x02:
                    return parse_command(command)


def command_set(
    field_: int, message_id: int, *, data: bool, sop_class: str = "", sop_instance: str = ""
) -> bytes:
    """A request command set; its Command Data Set Type says whether a data set follows."""
    status_like = encode_response(field_, message_id, Status(0), sop_class, sop_instance)
    parsed = parse_command(status_like)
    parsed.pop(0x0120)
    parsed.pop(0x0900)
    parsed[0x0110] = struct.pack("<H", message_id)
    parsed[0x0800] = struct.pack("<H", 0x0000 if data else 0x0101)
    body = b"".join(
        struct.pack("<HHI", 0, elem, len(v)) + v for elem, v in sorted(parsed.items()) if elem
    )
    return struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body


def associate_ac(body: bytes) -> A_ASSOCIATE:
    """The A-ASSOCIATE-AC whose PDU body (after the 6-byte header) is ``body``, decoded."""
    pdu = A_ASSOCIATE_AC()
    pdu.decode(struct.pack(">BBI", 2, 0, len(body)) + body)
    return pdu.to_primitive()


def status_of(command: dict[int, bytes]) -> int:
    return int(struct.unpack("<H", command[0x0900])[0])


def established(raw: RawPeer, **kwargs: object) -> None:
    pdu_type, _ = raw.associate(**kwargs)
    assert pdu_type == 0x02, "A-ASSOCIATE-AC expected"
