"""What routing looks at: facts gathered from the study, its series and its order."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

# ContrastBolusAgent values that say no contrast was given (sites write these instead of
# leaving the attribute out): compared upper-case, without spaces and punctuation at the ends
_NO_AGENT = re.compile(
    r"NONE|NO|NON|NIL|N/?A|0|-+|NATIVE?|NATIF|SIN|WITHOUT|PLAIN"
    r"|NONE ?GIVEN|NOT GIVEN|NO ?CONTRAST|NON[ -]CONTRAST"
)


def contrast_given(agent: str | None) -> bool:
    """Whether a ContrastBolusAgent value says contrast was given: any value but an empty one
    or one that says none ("NONE", "NO", "N/A", "-", "NON CONTRAST", ...)."""
    value = (agent or "").strip().strip(".:;,").strip().upper()
    return bool(value) and _NO_AGENT.fullmatch(value) is None


@dataclass(frozen=True)
class RoutingFacts:
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()  # upper case
    descriptions: tuple[str, ...] = ()
    procedure_codes: frozenset[str] = frozenset()
    contrast: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        *,
        modalities: Iterable[str] = (),
        body_parts: Iterable[str] = (),
        descriptions: Iterable[str] = (),
        procedure_codes: Iterable[str] = (),
        contrast: bool = False,
    ) -> RoutingFacts:
        return cls(
            modalities=frozenset(m.strip().upper() for m in modalities if m and m.strip()),
            body_parts=frozenset(b.strip().upper() for b in body_parts if b and b.strip()),
            descriptions=tuple(dict.fromkeys(d.strip() for d in descriptions if d and d.strip())),
            procedure_codes=frozenset(p.strip() for p in procedure_codes if p and p.strip()),
            contrast=contrast,
        )
