"""A test RIS: an MLLP server on 127.0.0.1 that records each message and acknowledges it.

It counts what it receives and what it acknowledges, dedupes on MSH-10 as a RIS should
(``applied``: each control id once, in the order first received), and can misbehave: refuse
connections (:meth:`FakeRIS.down` / :meth:`FakeRIS.up`, same port), store a message and lose
its ACK (``lose_ack``), answer AE/AR with an ERR segment (``reject``), or never answer
(``ack_code = None``).
"""

from __future__ import annotations

from collections.abc import Callable

from triage.demo_ris import LoopbackMLLPServer


def control_id(msg: str) -> str:
    return msg.split("\r")[0].split("|")[9]


class FakeRIS(LoopbackMLLPServer):
    """Answers ``ack_code`` (AA by default) with MSA-2 echoing MSH-10; ``messages`` holds what
    arrived, in order (resends included). ``ack_code = None`` closes the connection without
    answering.

    - ``lose_ack``: control ids whose next receipt is stored (``messages``, ``applied``) but
      whose ACK is lost: the connection closes without it (once per id).
    - ``reject``: control id -> (MSA-1, error text): answered AE/AR with ERR-3 207 and ERR-8.
    - ``on_message``: called with each message after it is recorded, before the answer.
    """

    def __init__(self, port: int = 0) -> None:
        self.messages: list[str] = []
        self.acked: list[str] = []  # control ids answered AA, in order
        self.applied: list[str] = []  # control ids, each once (a RIS deduping on MSH-10)
        self.ack_code: str | None = "AA"
        self.lose_ack: set[str] = set()
        self.reject: dict[str, tuple[str, str]] = {}
        self.on_message: Callable[[str], None] | None = None
        self._applied_ids: set[str] = set()
        super().__init__(port)

    def answer(self, text: str) -> str | None:
        cid = control_id(text)
        with self._lock:
            self.messages.append(text)
            if cid not in self._applied_ids:
                self._applied_ids.add(cid)
                self.applied.append(cid)
            lost = cid in self.lose_ack
            self.lose_ack.discard(cid)
        if self.on_message is not None:
            self.on_message(text)
        if self.ack_code is None or lost:
            return None
        code, error = self.reject.get(cid, (self.ack_code, ""))
        msh = text.split("\r")[0].split("|")
        ack = (
            f"MSH|^~\\&|RIS|HOSP|{msh[2]}|{msh[3]}|20260101000000||ACK|A{msh[9]}|P|"
            f"{msh[11]}\rMSA|{code}|{msh[9]}"
        )
        if error:
            ack += f"|{error}\rERR|||207^Application internal error^HL70357|E||||{error}"
        return ack + "\r"

    def answered(self, text: str, reply: str) -> None:
        if "\rMSA|AA|" in reply:
            with self._lock:
                self.acked.append(control_id(text))
