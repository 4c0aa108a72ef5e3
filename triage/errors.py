"""One exception tree for the whole engine.

Every error the engine raises on purpose derives from :class:`TriageError`. Errors from
libraries (pydicom, hl7apy, tritonclient, sqlalchemy, sockets) are translated into this tree
where they enter the engine, so callers catch our classes, never a library's::

    TriageError
    ├── ConfigError            bad setting value, unreadable config file (names the setting)
    ├── RulesError             invalid rules/*.yaml or model contract (names file and line)
    ├── StoreError             database or data-directory failure
    ├── IngestError            something received from a peer that we cannot accept
    │   ├── DicomIngestError   carries the DICOM status to answer with
    │   └── HL7Error           carries the HL7 ACK code (AE/AR) and error location
    │       └── HL7ParseError  the message cannot be parsed at all
    ├── InferenceError         anything between us and a model answer
    │   ├── TritonUnavailable  server down or not ready; retry later, nothing is dropped
    │   ├── ModelNotReady      the named model is not loaded/ready
    │   └── NotAssessable      the input is outside what the model may judge (with reason)
    └── OutboundError          sending to the RIS failed
        ├── RISUnavailable     connection refused / timed out; retry later
        └── RISRejected        the RIS answered with an AE/AR ACK or a mismatched MSA-2

Protocol code turns these into the peer's own language: a DICOM status, an HL7 ACK, an HTTP
4xx/5xx with a message.
"""

from __future__ import annotations


class TriageError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(TriageError):
    """A configuration value is invalid. ``setting`` names the offending setting."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting = setting
        super().__init__(f"{setting}: {message}")


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


class InferenceError(TriageError):
    """Inference failed for a reason other than the input itself."""


class TritonUnavailable(InferenceError):
    """The inference server cannot be reached or is not ready; retry later."""


class ModelNotReady(InferenceError):
    """The named model is not loaded or not ready on the inference server."""


class NotAssessable(InferenceError):
    """The study is outside what the model may judge; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class OutboundError(TriageError):
    """Sending a message to the RIS failed."""


class RISUnavailable(OutboundError):
    """The RIS cannot be reached (refused, timed out, connection dropped)."""


class RISRejected(OutboundError):
    """The RIS answered with a negative or mismatched acknowledgement."""
