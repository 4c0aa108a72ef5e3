"""Durable store: the database (SQLite by default) and the data directory's files."""

from triage.store.db import Database
from triage.store.models import (
    Finding,
    HL7Message,
    Instance,
    Order,
    OutboundMessage,
    Study,
    StudyState,
)

__all__ = [
    "Database",
    "Finding",
    "HL7Message",
    "Instance",
    "Order",
    "OutboundMessage",
    "Study",
    "StudyState",
]
