"""A rules file that can change while the engine runs.

:class:`UrgencyRulesWatcher` holds the urgency rules in force. :meth:`~UrgencyRulesWatcher.poll`
(called by the pipeline at every tick) reads the file and hashes its text (a few kilobytes:
microseconds, and no change is missed the way a coarse modification time can): a new valid
text becomes the rules in force and is returned; a text with an error is refused (logged once
with file, line and reason) and the last good rules stay. Every version loaded is remembered
by its id (the hash).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from triage.errors import RulesError
from triage.scoring.rules import UrgencyRules, load_urgency_rules, version_id_of
from triage.store.models import utcnow

log = logging.getLogger("triage.scoring")


@dataclass(frozen=True)
class LoadedVersion:
    version_id: str
    path: str
    loaded_at: datetime


class UrgencyRulesWatcher:
    def __init__(self, path: Path, initial: UrgencyRules | None = None) -> None:
        self.path = Path(path)
        self.current = initial if initial is not None else load_urgency_rules(self.path)
        self.versions: dict[str, LoadedVersion] = {}
        self.refused: RulesError | None = None  # the last refused text's error, while it stays
        self._refused_hash = ""
        self._remember(self.current)

    def _remember(self, rules: UrgencyRules) -> None:
        self.versions.setdefault(
            rules.version_id, LoadedVersion(rules.version_id, rules.path, utcnow())
        )

    def poll(self) -> UrgencyRules | None:
        """The new rules when the file changed to a valid new text; None otherwise."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self._refuse(RulesError(str(self.path), f"cannot read: {exc}"), "unreadable")
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._refuse(RulesError(str(self.path), f"cannot read: {exc}"), "undecodable")
            return None
        digest = version_id_of(text)
        if digest == self.current.version_id:
            self.refused = None
            self._refused_hash = ""
            return None
        if digest == self._refused_hash:
            return None
        try:
            rules = load_urgency_rules(self.path, text)
        except RulesError as exc:
            self._refuse(exc, digest)
            return None
        old = self.current.version_id
        self.current = rules
        self.refused = None
        self._refused_hash = ""
        self._remember(rules)
        log.info("urgency rules %s: version %s in force (was %s)", self.path, digest, old)
        return rules

    def _refuse(self, exc: RulesError, digest: str) -> None:
        if digest and digest == self._refused_hash:
            return
        self.refused = exc
        self._refused_hash = digest
        log.error(
            "urgency rules refused: %s; version %s stays in force", exc, self.current.version_id
        )
