"""HL7 sample messages for the tests: ours (tests/data/hl7) and real third-party files."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "hl7"


def own(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def shared(shared_data: Path, rel: str) -> str:
    return (shared_data / "hl7" / rel).read_bytes().decode("utf-8")


def hapi_messages(shared_data: Path) -> list[str]:
    """messages.txt: LF line ends, messages separated by blank lines and comment lines (and in
    one place by nothing: a new MSH starts the next message)."""
    text = shared(shared_data, "hapi-hl7v2/messages.txt")
    blocks: list[str] = []
    cur: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith(("//", "/*", "*")):
            if cur:
                blocks.append("\n".join(cur))
                cur = []
            continue
        if line.startswith("MSH") and cur:
            blocks.append("\n".join(cur))
            cur = []
        cur.append(line)
    if cur:
        blocks.append("\n".join(cur))
    return blocks
