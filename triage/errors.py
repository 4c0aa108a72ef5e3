"""One exception tree for the whole engine.

Every error the engine raises on purpose derives from :class:`TriageError`. Errors from
libraries (pydicom, hl7apy, tritonclient, sqlalchemy, sockets) are translated into this tree
where they enter the engine, so callers catch our classes, never a library's::

    TriageError
    ├── ConfigError            bad setting value, unreadable config file (names the setting)
    ├── RulesError             invalid rules/*.yaml or model contract (names file and line)
    ├── StoreError             database or data-directory failure (database errors are
    │                          translated in one place: triage.store.db.database_errors)
    ├── IngestError            something received from a peer that we cannot accept
    │   ├── DicomIngestError   carries the DICOM status to answer with
    │   ├── DicomProtocolError a PDU or command that breaks the upper-layer protocol: the
    │   │                      association ends with an A-ABORT (carries its reason)
    │   └── HL7Error           carries the HL7 ACK code (AE/AR) and error location
    │       └── HL7ParseError  the message cannot be parsed at all
    │           └── MLLPError  not a valid MLLP frame
    │               └── MLLPFrameTooLarge  a frame over the size cap (its head kept for the ACK)
    ├── NotAssessable          a verdict on the input, not a failure: the study is outside what
    │                          the model may judge (with reason); scored without AI, not retried
    ├── InferenceError         anything between us and a model answer; the study waits, retried
    │   ├── TritonUnavailable  server down or not ready; retry later, nothing is dropped
    │   │   └── BackendFailed  the server answers but a model's backend process died: the
    │   │                      bundled server is restarted, an external one reported not ready
    │   ├── ModelNotReady      the named model is not loaded/ready
    │   └── RegisterError      the server did not register a shared-memory region (the request
    │                          goes over the network instead)
    ├── OutboundError          sending to the RIS failed
    │   ├── RISUnavailable     connection refused / timed out; retry later
    │   │   └── RISNoAck       written (perhaps in part), no complete ACK back: maybe stored
    │   └── RISRejected        the RIS answered with an AE/AR ACK or a mismatched MSA-2
    │       └── RISNegativeAck  with the RIS's ACK, its MSA-1 and error text
    ├── OutboxError            an outbox command that cannot be done (unknown message, state)
    ├── HeldOutRefused         a model version already scored on the held-out set (the ledger)
    ├── FeedbackError          feedback that cannot be recorded (unknown study, verdict, model)
    └── AuthError              an account operation that cannot be done (users, roles)
        ├── NotAuthenticated   no valid session or bearer token (HTTP 401, or the sign-in page)
        └── Forbidden          the user's role may not do this (HTTP 403)

Every exception class of the engine is defined here; the modules that raise them re-export
them under their old names (``triage.hl7.client.RISNegativeAck``...). Private control-flow
exceptions that never leave their module (the DICOM upper layer's ``_Closed``, the local
Triton launcher's ``_PortInUse``) are not part of the tree.

Protocol code turns these into the peer's own language: a DICOM status, an HL7 ACK, an HTTP
4xx/5xx with a message.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence


class TriageError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(TriageError):
    """A configuration value is invalid. ``setting`` names the offending setting."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")

    @classmethod
    def listen(cls, setting: str, host: str, port: int, exc: OSError) -> ConfigError:
        """A listener that cannot bind ``host:port`` (``setting``: its port's setting). An
        address that is not this machine's, or not an address at all, is ``bind_host``'s
        fault, not the port's."""
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            gai = isinstance(exc, socket.gaierror) or exc.errno is None
            why = exc.strerror if gai else os.strerror(exc.errno or 0)
            return cls("bind_host", f"cannot listen on {host}: {why}")
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        return cls(setting, f"cannot listen on {host}:{port}: {why}")


class RulesError(TriageError):
    """A rules or model-contract file is invalid. The message names the file and line."""

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class StoreError(TriageError):
    """The durable store (database or data directory) failed."""


class IngestError(TriageError):
    """Input from a peer that the engine cannot accept."""


class DicomProtocolError(IngestError):
    """A PDU or DIMSE command that breaks the upper-layer protocol (PS3.8 9.3): the association
    ends with an A-ABORT, source 2 (service provider), ``reason`` (e.g. 0x06 invalid parameter
    value). Raised and handled inside the DICOM upper layer; the peer learns of it only as
    that A-ABORT."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DicomIngestError(IngestError):
    """A C-STORE that must be refused; ``status`` is the DIMSE status to answer with."""

    # Common statuses (PS3.4 B.2.3 / PS3.7 C)
    OUT_OF_RESOURCES = 0xA700
    DATASET_MISMATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_DECODE = 0xC210
    PROCESSING_FAILURE = 0x0110

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"0x{status:04X}: {message}")


class HL7Error(IngestError):
    """An HL7 message that must be answered with ``ack_code`` (AE or AR).

    ``hl7_code`` is the HL7 table 0357 error code (e.g. 100 segment sequence error,
    101 required field missing, 102 data type error, 200 unsupported message type,
    201 unsupported event code, 203 unsupported version id, 207 application internal error).
    """

    def __init__(
        self,
        message: str,
        *,
        ack_code: str = "AE",
        hl7_code: int = 207,
        location: str = "",
    ) -> None:
        self.ack_code = ack_code
        self.hl7_code = hl7_code
        self.location = location
        super().__init__(message)


class HL7ParseError(HL7Error):
    """The message cannot be parsed at all (framing, MSH, encoding)."""

    def __init__(self, message: str, *, hl7_code: int = 100, location: str = "") -> None:
        super().__init__(message, ack_code="AR", hl7_code=hl7_code, location=location)


class MLLPError(HL7ParseError):
    """Framing error: what arrived is not a valid MLLP frame."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hl7_code=207)


class MLLPFrameTooLarge(MLLPError):
    """A frame's payload exceeds the size cap.

    ``head`` holds the first bytes of the oversize payload (for an ACK that echoes MSH-10);
    ``complete_frames`` the frames completed in the same ``MLLPDecoder.feed`` call before
    the oversize one, which the caller still has to process.
    """

    def __init__(
        self, size: int, limit: int, head: bytes, complete_frames: list[bytes] | None = None
    ) -> None:
        self.size = size
        self.limit = limit
        self.head = head
        self.complete_frames = list(complete_frames or [])
        super().__init__(f"MLLP frame exceeds {limit} bytes (at least {size} received)")


class NotAssessable(TriageError):
    """The study is outside what the model may judge; ``reason`` says why.

    Not an :class:`InferenceError`: nothing failed, the input was judged. The pipeline
    records a not-assessable finding and scores the study without AI; it does not wait and
    retry as it does when the inference server is down."""

    def __init__(self, reason: str, reasons: Sequence[str] = ()) -> None:
        """``reason``: the whole message; ``reasons``: each reason on its own when the message
        joins several (the input checks), else just ``reason``."""
        self.reason = reason
        self.reasons: tuple[str, ...] = tuple(reasons) or (reason,)
        super().__init__(reason)


class InferenceError(TriageError):
    """Inference failed for a reason other than the input itself."""


class TritonUnavailable(InferenceError):
    """The inference server cannot be reached or is not ready; retry later."""


class BackendFailed(TritonUnavailable):
    """The server answers, but the process that runs a model's backend died (Triton's Python
    backend: "Stub process ... is not healthy"); the model stays unusable until the server
    is restarted."""


class ModelNotReady(InferenceError):
    """The named model is not loaded or not ready on the inference server."""


class RegisterError(InferenceError):
    """The server refused (or could not be asked) to register a shared-memory region;
    ``__cause__`` is the client library's exception."""


class OutboundError(TriageError):
    """Sending a message to the RIS failed."""


class RISUnavailable(OutboundError):
    """The RIS cannot be reached (refused, timed out, connection dropped)."""


class RISRejected(OutboundError):
    """The RIS answered with a negative or mismatched acknowledgement."""


class RISNoAck(RISUnavailable):
    """The message was written (at least in part) but no complete ACK came back: timed out, or
    the connection closed or failed. The RIS may have stored it."""


class RISNegativeAck(RISRejected):
    """The RIS answered, but not with an acceptance of our message. ``ack`` is its text,
    ``ack_code`` its MSA-1, ``detail`` its error text (ERR-8, else ERR-3.2, else MSA-3)."""

    def __init__(self, message: str, ack: str, ack_code: str = "", detail: str = "") -> None:
        self.ack = ack
        self.ack_code = ack_code
        self.detail = detail
        super().__init__(message)


class OutboxError(TriageError):
    """An outbox action that cannot be done (unknown message, wrong state)."""


class HeldOutRefused(TriageError):
    """This model version was already scored on the held-out set (the ledger says when)."""


class FeedbackError(TriageError):
    """Feedback that cannot be recorded (unknown study, verdict or model)."""


class AuthError(TriageError):
    """An account operation that cannot be done: unknown user, unknown role, a password too
    short, an invalid user name (``triage users``, ``triage.auth``)."""


class NotAuthenticated(AuthError):
    """A request without a valid session or bearer token: HTTP 401 (a page request is sent
    to ``/login`` instead)."""


class Forbidden(AuthError):
    """A signed-in user whose role may not do this: HTTP 403 with the roles that may."""
