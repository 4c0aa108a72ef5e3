"""The engine's one vocabulary of priority codes: HL7 v2 table 0027.

Every priority the engine stores, scores or sends is one of these letters. A site's own values
(``"1"``, ``"URG"``...) are accepted only where they enter: the HL7 parser translates them with
the sender's ``priority_codes`` from ``rules/hl7-mapping.yaml`` (each must map to a letter
here), and common words (``STAT``, ``ROUTINE``...) with :data:`PRIORITY_WORDS`. The urgency
rules (``rules/urgency.yaml``) must give a level to every code, and to nothing else; the
loader refuses any other code, so scoring can never produce a priority the RIS cannot be sent.
"""

from __future__ import annotations

from collections.abc import Mapping

#: HL7 v2 table 0027 (priority), in the standard's order.
PRIORITY_LABELS: dict[str, str] = {
    "S": "Stat",
    "A": "ASAP",
    "R": "Routine",
    "P": "Preop",
    "C": "Callback",
    "T": "Timing critical",
}
PRIORITY_CODES = frozenset(PRIORITY_LABELS)

#: Words some RIS send instead of the code letter.
PRIORITY_WORDS: dict[str, str] = {
    "STAT": "S",
    "EMERGENCY": "S",
    "EMERG": "S",
    "ASAP": "A",
    "URGENT": "A",
    "ROUTINE": "R",
    "ROUT": "R",
    "PREOP": "P",
    "PRE-OP": "P",
    "CALLBACK": "C",
    "CALL BACK": "C",
    "TIMING CRITICAL": "T",
}


def codes_text() -> str:
    """``S, A, R, P, C, T``: the codes, for messages."""
    return ", ".join(PRIORITY_LABELS)


def is_priority_code(value: str) -> bool:
    """True for a table-0027 code letter exactly as the engine stores it (upper case)."""
    return value in PRIORITY_CODES


def normalise_priority(value: str, site_codes: Mapping[str, str] | None = None) -> str:
    """The table-0027 code for ``value``, or "" when it is none.

    ``site_codes`` (a sender's ``priority_codes``: upper-case site value -> code) are checked
    first, then the code letters, then :data:`PRIORITY_WORDS`; case and surrounding spaces
    do not matter.
    """
    v = value.strip().upper()
    if not v:
        return ""
    if site_codes:
        mapped = site_codes.get(v, "")
        if mapped in PRIORITY_CODES:
            return mapped
    if v in PRIORITY_CODES:
        return v
    return PRIORITY_WORDS.get(v, "")
