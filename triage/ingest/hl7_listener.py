"""HL7 v2 MLLP listener: RIS orders in, durable, then acknowledged.

For every frame on a connection (a connection may carry any number of messages, answered in
order; the frames of one read are handed on together):

1. the frame is read (decoded, parsed, mapped) as it arrives, then joins the batch of every
   message waiting from all connections (group commit, up to ``hl7_commit_batch_max``); the
   only connection open, with nothing waiting, has its frames stored right away (there is
   nothing to gather);
2. the batch is stored and applied in one transaction by the message store
   (:mod:`triage.ingest.hl7_store`, which says what AA means);
3. only after the commit, each connection writes its ACK; then ``on_order(order_id)`` is called
   for every order applied, from one worker thread, in order (or ``on_orders(order_ids)`` once
   for the orders of a few milliseconds).

All of this runs in the listener's own thread and event loop (see :class:`HL7Listener`);
with several connections the transaction runs in a writer thread (unless its batch holds a
frame from every open connection: then nothing can arrive while it runs, and it runs in the
loop), frames that arrive during a commit form the next batch, and that batch waits, briefly,
for the connections just acknowledged to send their next frame (``GATHER_FRACTION``,
``GATHER_MAX``). A frame over ``hl7_max_message_bytes`` is answered AR and the connection
closed; a peer idle for ``hl7_idle_timeout_seconds`` (nothing received, nothing of its own
waiting) is disconnected. A peer that shuts down its sending side still gets the ACKs of what
it sent; a peer that does not read its ACKs is not read either until it does
(:class:`_Connection`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from triage.config import Settings
from triage.errors import HL7ParseError
from triage.hl7.header import MessageHeader, peek_header
from triage.hl7.inbound import Evaluation, decode_message
from triage.hl7.mapping import HL7Mapping
from triage.hl7.mllp import MLLPDecoder, MLLPFrameTooLarge, frame
from triage.ingest.hl7_store import MessageStore, Outcome, mapping_for
from triage.peers import address_in, networks
from triage.store.db import Database

__all__ = ["HL7Listener"]

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 300.0
ON_ORDER_DELAY = 0.005  # seconds: on_order calls due are handed to their thread in batches
# Group commit, several connections: after a commit, the next one waits for the connections
# just acknowledged to send their next frame, at most this fraction of the last commit's
# duration and at most GATHER_MAX seconds (docs/performance.md, "HL7 MLLP").
GATHER_FRACTION = 0.5
GATHER_MAX = 0.002
# A connection with this many frames read but not answered yet is not read further until half
# of them are: a peer sending far ahead of its ACKs waits in its own socket, not in our memory.
MAX_UNANSWERED = 512
#: A connection idle this long (nothing read, nothing unanswered) gives its place to a new one
#: when the listener holds hl7_max_connections (HL7Listener.make_room)
IDLE_EVICT_SECONDS = 2.0


@dataclass
class _Pending:
    evaluation: Evaluation  # the frame, already read (decoded, parsed, mapped)
    conn: _Connection  # answers it


class HL7Listener:
    """MLLP server storing RIS orders. ``on_order(order_id)`` runs after each ACK; or, given
    ``on_orders``, ``on_orders(order_ids)`` once for the orders acknowledged within
    ``ON_ORDER_DELAY`` of each other, in order (a consumer that has work per call, such as
    scheduling a job, does it once per batch instead of once per order).

    The listener runs in its own thread with its own event loop: the connections' I/O, the
    parsing and the database transaction of each batch all happen there, so a message costs no
    hand-over between threads before its ACK (a thread wake-up costs ~0.1-0.2 ms of CPU on these
    machines), and the caller's event loop (the HTTP API) is never blocked by a commit.
    :meth:`start` and :meth:`stop` are awaited from the caller's loop."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        on_order: Callable[[int], None] | None = None,
        *,
        on_orders: Callable[[list[int]], None] | None = None,
        idle_timeout: float | None = None,
        mapping: HL7Mapping | None = None,
    ) -> None:
        self.settings = settings
        # hl7_allowed_peers, parsed once (None: any address may connect)
        self.allowed = networks(settings.hl7_allowed_peers) if settings.hl7_allowed_peers else None
        self.db = db
        self.on_order = on_order
        self.on_orders = on_orders
        self.idle_timeout = idle_timeout or settings.hl7_idle_timeout_seconds
        self.store = MessageStore(settings, db, mapping or mapping_for(settings))
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[_Connection] = set()
        self._crowded_logged = 0.0
        self._queue: list[_Pending] = []
        self._batch_scheduled = False
        self._writing = False  # a batch is in the writer thread
        self._commit_started = 0.0
        self._returning: set[str] = set()  # peers acknowledged by the last commit, not back yet
        self._gather: asyncio.TimerHandle | None = None  # deadline of the wait for them
        self._writer: ThreadPoolExecutor | None = None
        self._notifier: ThreadPoolExecutor | None = None
        self._due: list[int] = []  # orders whose ACK is written, for the next on_order batch
        self._flush_scheduled = False

    @property
    def ready(self) -> bool:
        """True while the listener accepts connections."""
        server = self._server
        return server is not None and server.is_serving()

    @property
    def address(self) -> tuple[str, int] | None:
        return self._address

    async def start(self) -> tuple[str, int]:
        """Bind ``bind_host:hl7_port`` (port 0: an ephemeral one) and return the address."""
        if self._thread is not None:
            raise RuntimeError("listener already started")
        started: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="hl7-listener", daemon=True
        )
        self._thread.start()
        try:
            return await asyncio.wrap_future(started)
        except BaseException:
            thread, self._thread = self._thread, None
            await asyncio.to_thread(thread.join)
            raise

    async def stop(self) -> None:
        """Stop accepting, drop open connections, finish the batch being committed, wait for
        on_order calls already due."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join)
        self._thread = None
        log.info("HL7 listener stopped")

    # -- the listener's thread ------------------------------------------------------------

    def _run(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve(started))
        except BaseException as exc:  # pragma: no cover - _serve reports its own failures
            if not started.done():
                started.set_exception(exc)
            log.exception("HL7 listener failed")
        finally:
            loop.close()

    async def _serve(self, started: concurrent.futures.Future[tuple[str, int]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hl7-writer")
        self._notifier = ThreadPoolExecutor(1, thread_name_prefix="hl7-on-order")
        try:
            server = await self._loop.create_server(
                self._connection, host=self.settings.bind_host, port=self.settings.hl7_port
            )
        except BaseException as exc:
            started.set_exception(exc)
            self._writer.shutdown(wait=False)
            self._notifier.shutdown(wait=False)
            return
        self._server = server
        sockname = server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        log.info("HL7 listener on %s:%d (mapping: %s)", *self._address, self.store.mapping.path)
        if self.allowed is None:
            log.warning(
                "HL7 allowlist empty (hl7_allowed_peers): any address may send orders and "
                "reports; set it to the RIS and interface engine addresses"
            )
        started.set_result(self._address)
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown(server)

    async def _shutdown(self, server: asyncio.Server) -> None:
        self._server = None
        server.close()
        await asyncio.sleep(0)  # let handlers of just-accepted connections start (and quit)
        connections = list(self._connections)
        for conn in connections:  # the ACKs already written still go out
            conn.close()
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=2)
            for conn in connections:
                if conn.transport is not None and not conn.closed.done():
                    conn.transport.abort()  # a peer that does not read what it is sent
        if self._gather is not None:
            self._gather.cancel()
            self._gather = None
        self._queue.clear()  # frames of the dropped connections not stored yet: not answered
        if self._writer is not None:  # the batch being committed
            await asyncio.to_thread(self._writer.shutdown, wait=True)
        self._flush_on_order()
        if self._notifier is not None:  # on_order calls already due
            await asyncio.to_thread(self._notifier.shutdown, wait=True)
        self.store.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=5)

    # -- group commit ---------------------------------------------------------------------

    def _submit(self, payload: bytes, conn: _Connection) -> None:
        """Queue one frame for the next transaction; ``conn`` answers it once stored. It is
        read (decoded and parsed) here, as it arrives: while the writer thread waits on the
        disk for the batch before it (the interpreter lock is free then), not inside the next
        transaction."""
        self._queue.append(_Pending(self.store.read_frame(payload), conn))
        if self._gather is not None:
            self._came_back(conn.peer)
        elif not self._batch_scheduled and not self._writing:
            # After the handlers that got data in this loop iteration: they all join the batch.
            self._batch_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_queue)

    def _commit_queue(self) -> None:
        """Store the messages waiting, up to ``hl7_commit_batch_max`` per transaction, one
        transaction at a time.

        The transaction runs right here, in the listener's loop, when nothing can arrive
        while it runs: one connection open, or a batch holding a frame from every open
        connection (peers that wait for each ACK before they send again, as RIS interfaces
        do). The peer(s) wait for their ACKs anyway, and a hand-over to another thread and
        back would only add to that wait. Otherwise it runs in the writer thread, so that
        this loop keeps reading the other connections meanwhile: everything that arrives
        during a commit is stored by the next one (group commit)."""
        self._batch_scheduled = False
        limit = self.settings.hl7_commit_batch_max
        while self._queue and not self._writing:
            batch, self._queue = self._queue[:limit], self._queue[limit:]
            evaluations = [p.evaluation for p in batch]
            peers = [p.conn.peer for p in batch]
            self._commit_started = time.monotonic()
            if self._writer is not None and not self._holds_everyone(batch):
                self._writing = True
                future = asyncio.get_running_loop().run_in_executor(
                    self._writer, self.store.store_batch, evaluations, peers
                )
                future.add_done_callback(functools.partial(self._stored, batch))
                return
            try:
                outcomes = self.store.store_batch(evaluations, peers)
            except Exception as exc:  # pragma: no cover - store_batch does not raise
                self._resolve(batch, None, exc)
                continue
            if self._committed(batch, outcomes, None):
                return

    def _holds_everyone(self, batch: list[_Pending]) -> bool:
        """Every open connection has a frame in ``batch`` and nothing else waits: nothing can
        come in while it is stored (but from a peer sending ahead of its ACKs, read after)."""
        if self._queue:
            return False
        conns = self._connections
        return len(conns) <= 1 or len({p.conn for p in batch}) >= len(conns)

    def _stored(self, batch: list[_Pending], future: asyncio.Future[list[Outcome]]) -> None:
        self._writing = False
        if future.cancelled():  # pragma: no cover - the writer's futures are not cancelled
            gathering = self._committed(batch, None, asyncio.CancelledError())
        elif future.exception() is not None:  # pragma: no cover - store_batch does not raise
            gathering = self._committed(batch, None, future.exception())
        else:
            gathering = self._committed(batch, future.result(), None)
        if not gathering:
            self._commit_queue()

    def _committed(
        self, batch: list[_Pending], outcomes: list[Outcome] | None, exc: BaseException | None
    ) -> bool:
        """Answer a stored batch; True when the next commit now waits for returning peers."""
        self._resolve(batch, outcomes, exc)
        if len(self._connections) <= 1:
            return False
        # The connections just acknowledged send their next frame within a round trip; a
        # commit started at once would hold only the frames that came during this one, and
        # theirs would wait a whole commit (with 8 request/response peers the batches went
        # 1, 7, 1, 7, ...). So wait for them, a bounded time (the peer may have no more).
        queued = {p.conn.peer for p in self._queue}
        self._returning = {p.conn.peer for p in batch} - queued
        if self._returning and len(self._queue) < self.settings.hl7_commit_batch_max:
            wait = min(GATHER_MAX, GATHER_FRACTION * (time.monotonic() - self._commit_started))
            self._batch_scheduled = True
            self._gather = asyncio.get_running_loop().call_later(wait, self._gathered)
            return True
        return False

    def _came_back(self, peer: str) -> None:
        """``peer`` sent a frame or closed: commit now if it was the last one awaited."""
        self._returning.discard(peer)
        if self._gather is not None and (
            not self._returning or len(self._queue) >= self.settings.hl7_commit_batch_max
        ):
            self._gather.cancel()
            self._gather = None
            self._returning.clear()
            # After the handlers that got data in this loop iteration (_batch_scheduled is
            # still set, so they only queue): the whole of their reads joins the batch.
            asyncio.get_running_loop().call_soon(self._commit_queue)

    def _gathered(self) -> None:
        self._gather = None
        self._returning.clear()
        self._commit_queue()

    @staticmethod
    def _resolve(
        batch: list[_Pending], outcomes: list[Outcome] | None, exc: BaseException | None
    ) -> None:
        if outcomes is None:
            log.error("HL7 store failed: %s", exc)
            for p in batch:
                p.conn.failed()
            return
        for p, outcome in zip(batch, outcomes, strict=True):
            p.conn.answer(outcome)

    def _after_ack(self, order_ids: list[int]) -> None:
        """Queue on_order for orders whose ACK is written. They go to the on_order thread
        together, ``ON_ORDER_DELAY`` after the first (one thread wake-up for all the messages
        of those milliseconds, not one per message; stop() hands over what is left)."""
        nobody = self.on_order is None and self.on_orders is None
        if nobody or not order_ids or self._notifier is None:
            return
        self._due.extend(order_ids)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_later(ON_ORDER_DELAY, self._flush_on_order)

    def _flush_on_order(self) -> None:
        self._flush_scheduled = False
        due, self._due = self._due, []
        if due and self._notifier is not None:
            with contextlib.suppress(RuntimeError):  # the pool is shut down: stopping
                self._notifier.submit(self._call_on_order, due)

    def _call_on_order(self, order_ids: list[int]) -> None:
        if self.on_orders is not None:
            try:
                self.on_orders(order_ids)
            except Exception:
                log.exception("on_orders(%d orders) failed", len(order_ids))
        if self.on_order is None:
            return
        for order_id in order_ids:
            try:
                self.on_order(order_id)
            except Exception:
                log.exception("on_order(%d) failed", order_id)

    # -- connections ------------------------------------------------------------------------

    def _connection(self) -> asyncio.Protocol:
        return _Connection(self)

    def _answer(self, conn: _Connection, payloads: list[bytes]) -> None:
        """Hand every frame of one read to the store together; ``conn`` answers them in order.

        The only connection, with nothing else waiting, stores them right away: there is no
        batch to gather, and going through the queue would cost a turn of the event loop per
        message."""
        limit = self.settings.hl7_commit_batch_max
        pending = payloads
        conn.unanswered += len(payloads)
        # Checked before every transaction: a connection opened while an ACK was being sent
        # sends the rest through the queue, so two transactions never run at once.
        while pending and self._alone():
            items = [(p, conn.peer) for p in pending[:limit]]
            pending = pending[limit:]
            for outcome in self.store.process_batch(items):
                conn.answer(outcome)
        for payload in pending:
            self._submit(payload, conn)

    def _alone(self) -> bool:
        """One connection open, nothing queued or being stored."""
        return len(self._connections) <= 1 and not (
            self._queue or self._writing or self._batch_scheduled
        )

    def _answer_oversize(self, exc: MLLPFrameTooLarge, conn: _Connection) -> None:
        head, _ = decode_message(exc.head)
        header = peek_header(head)
        err = HL7ParseError(str(exc), hl7_code=207)
        ack, code = self.store.ack(header, "AR", err)
        if not ack:  # the sender asked for no ACK; it still must learn why we hang up
            ack, code = self.store.ack(None if header is None else _original(header), "AR", err)
        log.warning("HL7 peer %s: %s; closing the connection", conn.peer, exc)
        self.store.record_failure(head, conn.peer, ack, code, str(exc), header)
        conn.write(frame(ack.encode("utf-8")))

    def make_room(self, newcomer: str) -> bool:
        """The listener holds ``hl7_max_connections``: close the connection idle longest (at
        least IDLE_EVICT_SECONDS, nothing unanswered, no frame half read) so that
        ``newcomer`` takes its place - a flood of idle connections must not exhaust the
        engine's file descriptors or keep the RIS out. False (the newcomer is closed) when
        none is idle. Logged once a second."""
        now = time.monotonic()
        idle = [
            c
            for c in self._connections
            if not c.unanswered
            and not c.decoder.pending
            and c.transport is not None
            and not c.transport.is_closing()
            and now - c._last_read >= IDLE_EVICT_SECONDS
        ]
        oldest = min(idle, key=lambda c: c._last_read) if idle else None
        if now - self._crowded_logged > 1.0:
            self._crowded_logged = now
            log.warning(
                "HL7 listener full (%d connections, hl7_max_connections): %s",
                len(self._connections),
                f"closing {oldest.peer}, idle longest, for {newcomer}"
                if oldest is not None
                else f"connection from {newcomer} closed",
            )
        if oldest is None:
            return False
        self._connections.discard(oldest)
        oldest.close()
        return True


class _Connection(asyncio.Protocol):
    """One peer's connection: frames in as they arrive, ACKs out in the same order.

    A protocol rather than a stream reader and writer: a frame costs one callback, not a task
    wake-up to read it and another to write its ACK (docs/performance.md, "HL7 MLLP"). The
    listener answers each frame through :meth:`answer`, in the order they came. While the
    ACKs written are not going out (the peer does not read them), reading stops."""

    def __init__(self, listener: HL7Listener) -> None:
        self.listener = listener
        self.peer = "?"
        self.transport: asyncio.Transport | None = None
        self.decoder = MLLPDecoder(listener.settings.hl7_max_message_bytes)
        self.unanswered = 0  # frames received whose ACK is not written yet
        self.then_close = False  # close once every frame received is answered
        self._last_words: Callable[[], None] | None = None  # written just before that close
        self._held: set[str] = set()  # why reading is paused: "acks" not read, "backlog"
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_read = 0.0
        self._idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        listener = self.listener
        if listener._server is None:  # accepted while stopping
            transport.close()
            return
        peer_info = transport.get_extra_info("peername")
        self.peer = f"{peer_info[0]}:{peer_info[1]}" if peer_info else "?"
        if listener.allowed is not None and not address_in(
            str(peer_info[0]) if peer_info else "", listener.allowed
        ):
            log.warning(
                "HL7 connection from %s refused: not in hl7_allowed_peers (closed unread)",
                self.peer,
            )
            transport.close()
            return
        full = len(listener._connections) >= listener.settings.hl7_max_connections
        if full and not listener.make_room(self.peer):
            transport.close()
            return
        listener._connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._last_read = time.monotonic()
        self._idle = asyncio.get_running_loop().call_later(listener.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        if self.then_close:  # answering what came before an oversized frame: nothing more
            return
        self._last_read = time.monotonic()
        listener = self.listener
        try:
            frames = self.decoder.feed(data)
        except MLLPFrameTooLarge as exc:
            assert self.transport is not None
            self.transport.pause_reading()
            # its AR goes after the ACKs of the frames before it, then the connection closes
            self._last_words = functools.partial(listener._answer_oversize, exc, self)
            listener._answer(self, exc.complete_frames)
            self._close_when_answered()
            return
        if frames:
            listener._answer(self, frames)
            if self.unanswered >= MAX_UNANSWERED:  # a peer sending ahead of its ACKs
                self._held.add("backlog")
                self._hold()

    def eof_received(self) -> bool:
        if self.unanswered:  # the peer is done sending; it still gets its ACKs
            self._close_when_answered()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("HL7 peer %s: connection lost: %s", self.peer, exc)
        if self.decoder.pending:
            log.warning(
                "HL7 peer %s left %d bytes of an unfinished frame", self.peer, self.decoder.pending
            )
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        listener = self.listener
        listener._connections.discard(self)
        if listener._gather is not None:
            listener._came_back(self.peer)
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        # The peer is not reading its ACKs: stop reading its frames until it does.
        self._held.add("acks")
        self._hold()

    def resume_writing(self) -> None:
        self._held.discard("acks")
        self._release()

    def _hold(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def _release(self) -> None:
        transport = self.transport
        if self._held or self.then_close or transport is None or transport.is_closing():
            return
        transport.resume_reading()

    # the listener's side ------------------------------------------------------------------

    def answer(self, outcome: Outcome) -> None:
        """The next frame's outcome: write its ACK (if any), hand its orders on."""
        self.unanswered -= 1
        if "backlog" in self._held and self.unanswered <= MAX_UNANSWERED // 2:
            self._held.discard("backlog")
            self._release()
        if outcome.ack:
            self.write(frame(outcome.ack.encode(outcome.codec, errors="replace")))
        self.listener._after_ack(outcome.order_ids)
        if self.then_close and not self.unanswered:
            self._close_answered()

    def failed(self) -> None:
        """The store could not answer a frame of ours (it does not raise; a defect): close."""
        self.unanswered -= 1
        self._last_words = None
        self.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _close_when_answered(self) -> None:
        self.then_close = True
        if not self.unanswered:
            self._close_answered()

    def _close_answered(self) -> None:
        last, self._last_words = self._last_words, None
        if last is not None:
            last()
        self.close()

    def _check_idle(self) -> None:
        self._idle = None
        if self.transport is None or self.transport.is_closing():
            return
        timeout = self.listener.idle_timeout
        idle = time.monotonic() - self._last_read
        if idle >= timeout and not self.unanswered:
            log.info("HL7 peer %s idle for %.0fs: disconnecting", self.peer, timeout)
            self.close()
            return
        wait = timeout - idle if idle < timeout else timeout
        self._idle = asyncio.get_running_loop().call_later(wait, self._check_idle)


def _original(header: MessageHeader) -> MessageHeader:
    from dataclasses import replace

    return replace(header, accept_ack_type="", application_ack_type="")
