"""Outbound: what the engine tells the RIS (ORM order change, ORU AI result), as an outbox."""

from triage.outbound.ris import RISNotifier

__all__ = ["RISNotifier"]
