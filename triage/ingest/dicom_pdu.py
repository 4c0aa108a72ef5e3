"""The DICOM upper layer's vocabulary (PS3.8 9.3, PS3.7 E.1): PDU types, A-ABORT reasons,
A-ASSOCIATE-RJ parameters, DIMSE command fields and statuses, the fixed-size PDUs we send,
and :func:`check_fixed_length`.

Used by :mod:`triage.ingest.dicom_ul` (associations), :mod:`triage.ingest.dicom_dimse`
(command sets) and :mod:`triage.ingest.dicom_negotiation` (A-ASSOCIATE-RQ/AC).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from triage.errors import DicomProtocolError

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07

# A-ABORT reasons, source 2 (service provider) (PS3.8 9.3.8)
UNRECOGNIZED_PDU, UNEXPECTED_PDU = 0x01, 0x02
UNEXPECTED_PARAMETER, INVALID_PARAMETER = 0x05, 0x06

# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0030, 0x0FFF
NO_DATA_SET = 0x0101
UNRECOGNIZED_OPERATION = 0x0211
SOP_CLASS_NOT_SUPPORTED = 0x0122

#: The largest A-ASSOCIATE-RQ read (hundreds of presentation contexts fit in 64 KiB).
MAX_ASSOCIATE_RQ_BYTES = 1 << 20
#: The largest command set we read (a C-STORE-RQ is ~200 bytes).
MAX_COMMAND_BYTES = 1 << 16
HEADER = struct.Struct(">BBI")
PDV = struct.Struct(">IBB")
ELEMENT = struct.Struct("<HHI")
US = struct.Struct("<H")


class Rejection(NamedTuple):
    """A-ASSOCIATE-RJ parameters (PS3.8 9.3.4)."""

    result: int  # 1 permanent, 2 transient
    source: int  # 1 service user, 2 provider (ACSE), 3 provider (presentation)
    reason: int


CALLING_AE_NOT_RECOGNIZED = Rejection(1, 1, 3)
CALLED_AE_NOT_RECOGNIZED = Rejection(1, 1, 7)
CONTEXT_NOT_SUPPORTED = Rejection(1, 1, 2)
PROTOCOL_VERSION_NOT_SUPPORTED = Rejection(1, 2, 2)
LOCAL_LIMIT_EXCEEDED = Rejection(2, 3, 2)


class Status(NamedTuple):
    """A DIMSE status to answer, with an optional Error Comment (0000,0902; 64 characters)."""

    code: int
    comment: str = ""


def abort_pdu(source: int, reason: int) -> bytes:
    return bytes([ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason])


def reject_pdu(rejection: Rejection) -> bytes:
    return bytes([ASSOCIATE_RJ, 0, 0, 0, 0, 4, 0]) + bytes(rejection)


RELEASE_RP_PDU = bytes([RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])
PDU_TYPES = frozenset(
    (ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT)
)


def check_fixed_length(pdu_type: int, length: int) -> None:
    """A-RELEASE-RQ/RP and A-ABORT are 4 bytes after their header (PS3.8 9.3.6-9.3.8); any
    other length is an invalid PDU (Evt19: A-ABORT, reason 6)."""
    if length != 4:
        raise DicomProtocolError(
            INVALID_PARAMETER, f"PDU type 0x{pdu_type:02X} of length {length}, not 4"
        )
