"""The live worklist: server-sent events that push the worklist's rows when it changes.

Each open worklist page holds one ``GET /worklist/events`` stream. Every second the stream
reads a cheap *change marker* from the store (one aggregate query: how many studies, the
newest arrival, completion, score and retry times, the newest finding, priority change,
outbound message and feedback ids); when the marker differs from what the page last got, the
rows are built again (once for all open pages: :class:`WorklistFeed` caches them by marker)
and sent. Every ``refresh_seconds`` they are sent anyway, so the time each study has waited
stays current. :meth:`WorklistFeed.close` ends every stream (the engine calls it when it
stops, so an open page never holds the HTTP server's shutdown).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import func, select

from triage.scoring import UrgencyRules
from triage.store import Database
from triage.store.db import database_errors
from triage.store.models import Feedback, Finding, OutboundMessage, PriorityChange, Study

Render = Callable[[list[dict[str, Any]]], str]


def _newest_id(model: Any) -> Any:
    return select(func.max(model.__table__.c.id)).scalar_subquery()


def change_marker(db: Database) -> str:
    """A short text that changes whenever anything the worklist shows changes."""
    st = Study.__table__  # type: ignore[attr-defined]
    query = select(
        func.count(st.c.id),
        func.max(st.c.last_received_at),
        func.max(st.c.completed_at),
        func.max(st.c.scored_at),
        func.max(st.c.ai_next_attempt_at),
        func.sum(st.c.failures),
        _newest_id(Finding),
        _newest_id(PriorityChange),
        _newest_id(OutboundMessage),
        _newest_id(Feedback),
    )
    with database_errors("cannot read the worklist's change marker"), db.engine.connect() as c:
        values = c.execute(query).one()
    return "|".join("" if v is None else str(v) for v in values)


class WorklistFeed:
    """Builds the worklist rows at most once per change (shared by every open page) and
    streams them as server-sent events."""

    def __init__(
        self,
        db: Database,
        rules: Callable[[], UrgencyRules],
        rows: Callable[[Any, UrgencyRules], list[dict[str, Any]]],
        *,
        poll_seconds: float = 1.0,
        refresh_seconds: float = 30.0,
    ) -> None:
        self.db = db
        self.rules = rules
        self._rows = rows
        self.poll_seconds = poll_seconds
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._cached: tuple[str, float, str, list[dict[str, Any]]] | None = None
        self._stop = threading.Event()

    def close(self) -> None:
        """End every stream (within one poll period)."""
        self._stop.set()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def snapshot(self, max_age: float | None = None) -> tuple[str, list[dict[str, Any]]]:
        """(marker, rows) now; rows built again only when the marker (or the rules version)
        changed, or they are older than ``max_age`` seconds."""
        rules = self.rules()
        marker = change_marker(self.db) + "|" + rules.version_id
        with self._lock:
            cached = self._cached
            fresh = cached is not None and cached[0] == marker
            if fresh and max_age is not None and cached is not None:
                fresh = time.monotonic() - cached[1] < max_age
            if fresh and cached is not None:
                return cached[2], cached[3]
            with self.db.session() as s:
                rows = self._rows(s, rules)
            stamp = f"{marker}@{time.time():.0f}"
            self._cached = (marker, time.monotonic(), stamp, rows)
            return stamp, rows

    async def events(
        self,
        render: Render,
        disconnected: Callable[[], Any],
        since: str = "",
        allowed: Callable[[], bool] | None = None,
    ) -> AsyncIterator[str]:
        """The event stream: a ``worklist`` event with the rendered rows at once (unless the
        page already has ``since``), then on every change; a comment every 15 s keeps the
        connection alive through proxies. ``allowed`` is asked before each event: the
        stream ends once the viewer's sign-in is no longer good (signed out, expired)."""
        sent = since
        last_sent = time.monotonic() if since else 0.0
        last_beat = time.monotonic()
        yield "retry: 2000\n\n"
        while not self._stop.is_set():
            if await disconnected():
                return
            if allowed is not None and not await asyncio.to_thread(allowed):
                return
            stamp, rows = await asyncio.to_thread(self.snapshot, self.refresh_seconds)
            now = time.monotonic()
            if stamp != sent or now - last_sent >= self.refresh_seconds:
                payload = json.dumps({"count": len(rows), "rows_html": render(rows)})
                yield f"event: worklist\nid: {stamp}\ndata: {payload}\n\n"
                sent, last_sent, last_beat = stamp, now, now
            elif now - last_beat >= 15.0:
                yield ": keep-alive\n\n"
                last_beat = now
            await asyncio.sleep(self.poll_seconds)
