"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 1).

A frame is ``0x0B <message bytes> 0x1C 0x0D``. :class:`MLLPDecoder` is incremental: feed it
whatever a socket read returned and it hands back every complete message payload. It copes
with frames split across reads, several frames in one read, bytes before a start block
(skipped and counted), and a start block inside an unfinished frame (the sender restarted: the
unfinished part is dropped). A frame whose payload grows past ``max_size`` bytes raises
:class:`MLLPFrameTooLarge`.
"""

from __future__ import annotations

from triage.errors import MLLPError as MLLPError
from triage.errors import MLLPFrameTooLarge as MLLPFrameTooLarge

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
TRAILER = END_BLOCK + CARRIAGE_RETURN

DEFAULT_MAX_SIZE = 16 * 1024 * 1024
# How many leading bytes of an oversize frame are kept, so that an ACK can echo its MSH-10.
HEAD_BYTES = 4096


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block. Raises :class:`MLLPError` if the payload contains a
    block character (0x0B or 0x1C), which would make the frame ambiguous."""
    if START_BLOCK in payload or END_BLOCK in payload:
        raise MLLPError("message contains an MLLP block character (0x0B or 0x1C)")
    return START_BLOCK + payload + TRAILER


class MLLPDecoder:
    """Incremental MLLP decoder. Not thread-safe; one per connection."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.max_size = max_size
        self._buf = bytearray()
        self._in_frame = False
        self._scan_from = 0  # where the search for the trailer resumes inside _buf
        self.discarded_bytes = 0  # junk outside frames and abandoned partial frames

    @property
    def in_frame(self) -> bool:
        """True while a started frame has not been completed."""
        return self._in_frame

    @property
    def pending(self) -> int:
        """Bytes buffered for an unfinished frame."""
        return len(self._buf) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes from the wire; return the payloads of all frames completed by them."""
        out: list[bytes] = []
        buf = self._buf
        buf += data
        while buf:
            if not self._in_frame:
                start = buf.find(START_BLOCK)
                if start < 0:
                    self.discarded_bytes += len(buf)
                    buf.clear()
                    break
                self.discarded_bytes += start
                del buf[: start + 1]
                self._in_frame = True
                self._scan_from = 0
                continue
            end = buf.find(TRAILER, self._scan_from)
            restart = buf.find(START_BLOCK, self._scan_from, end if end >= 0 else len(buf))
            if restart >= 0:
                # A new start block before the trailer: the sender gave up on the frame.
                self.discarded_bytes += restart
                del buf[: restart + 1]
                self._scan_from = 0
                continue
            if end < 0:
                if len(buf) > self.max_size + 1:  # +1: a trailing 0x1C may await its 0x0D
                    head = bytes(buf[:HEAD_BYTES])
                    size = len(buf)
                    self.reset()
                    raise MLLPFrameTooLarge(size, self.max_size, head, out)
                # Resume the search one byte back: the 0x1C may be the last byte so far.
                self._scan_from = max(0, len(buf) - 1)
                break
            if end > self.max_size:
                head = bytes(buf[:HEAD_BYTES])
                self.reset()
                raise MLLPFrameTooLarge(end, self.max_size, head, out)
            out.append(bytes(buf[:end]))
            del buf[: end + len(TRAILER)]
            self._in_frame = False
            self._scan_from = 0
        return out

    def reset(self) -> None:
        """Forget any buffered bytes (after an error, or to reuse the decoder)."""
        self._buf.clear()
        self._in_frame = False
        self._scan_from = 0
