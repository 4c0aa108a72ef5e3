"""What routing looks at: facts gathered from the study, its series and its order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


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
