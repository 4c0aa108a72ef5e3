"""MLLP ingest benchmark: our HL7 listener against two reference servers, measured in one run.

    .venv/bin/python benchmarks/bench_mllp.py            # 5,000 ORMs, 1 and 8 connections
    .venv/bin/python benchmarks/bench_mllp.py -n 2000 --connections 1 4

Servers (each in its own process, on 127.0.0.1, an ephemeral port):

- ``echo``: a bare asyncio server that answers every frame with an ACK echoing MSH-10;
- ``durable``: the same, but it appends each message to a file and fsyncs it before the ACK
  (the floor for any server that promises "acknowledged = on disk");
- ``triage``: our :class:`~triage.ingest.hl7_listener.HL7Listener` on a fresh SQLite database
  (parse, store raw + ACK + order in one transaction, group commit, then ACK).

The client (this process, asyncio) sends ``-n`` distinct ORM^O01 messages (one new order each)
split evenly over the connections; each connection sends its next message when the previous
one is acknowledged (as RIS interfaces do). It checks every ACK (MSA-1 AA/CA and MSA-2 = our
MSH-10) and, for ``triage``, that every order is in the database afterwards. It prints
messages/s per server and the ratios that docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SB, EB = b"\x0b", b"\x1c\x0d"


def orm(i: int) -> bytes:
    from triage.synth.orders import order_message

    text = order_message(
        accession=f"BENCH{i:07d}",
        patient_id=f"P{i % 997:05d}",
        priority="SR"[i % 2],
        study_uid=f"1.2.826.0.1.3680043.8.498.9{i:07d}",
        control_id=f"B{os.getpid()}-{i}",
    )
    return text.encode()


def _msh10(payload: bytes) -> bytes:
    first = payload.split(b"\r", 1)[0]
    fields = first.split(b"|")
    return fields[9] if len(fields) > 9 else b""


def _echo_ack(payload: bytes) -> bytes:
    return (
        b"MSH|^~\\&|TRIAGE|TRIAGE|RIS|HOSP|20250101000000||ACK^O01^ACK|A1|P|2.5.1\rMSA|AA|"
        + _msh10(payload)
    )


def _cpu() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


# -- reference servers (run in a child process) ----------------------------------------------


async def _serve_echo(durable: bool, directory: Path) -> None:
    fd = os.open(directory / "messages.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        import socket

        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                while True:
                    start = buf.find(SB)
                    end = buf.find(EB, start + 1)
                    if start < 0 or end < 0:
                        break
                    payload = buf[start + 1 : end]
                    buf = buf[end + 2 :]
                    if durable:
                        os.write(fd, payload + b"\n")
                        os.fsync(fd)
                    writer.write(SB + _echo_ack(payload) + EB)
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    cpu0 = _cpu()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    server.close()
    os.close(fd)
    print(f"cpu_s={_cpu() - cpu0:.3f}", flush=True)


async def _serve_triage(directory: Path) -> None:
    from triage.config import Settings
    from triage.ingest.hl7_listener import HL7Listener
    from triage.store.db import Database

    settings = Settings(data_dir=directory, hl7_port=0, bind_host="127.0.0.1")  # type: ignore[call-arg]
    db = Database(f"sqlite:///{directory / 'triage.db'}")
    db.create_all()
    applied: list[int] = []
    listener = HL7Listener(settings, db, applied.append)
    _, port = await listener.start()
    print(port, flush=True)
    cpu0 = _cpu()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.stop()
    cpu = _cpu() - cpu0
    from sqlalchemy import text

    with db.engine.connect() as conn:
        orders = conn.execute(text('SELECT count(*) FROM "order"')).scalar_one()
        messages = conn.execute(text("SELECT count(*) FROM hl7message")).scalar_one()
    print(f"orders={orders} messages={messages} on_order={len(applied)}", flush=True)
    print(f"cpu_s={cpu:.3f}", flush=True)
    db.dispose()


# -- client ----------------------------------------------------------------------------------


async def _client(port: int, messages: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    import socket

    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    for payload in messages:
        writer.write(SB + payload + EB)
        while True:
            end = buf.find(EB)
            if end >= 0:
                break
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data
        ack, buf = buf[:end].lstrip(SB), buf[end + 2 :]
        msa = next(s for s in ack.split(b"\r") if s.startswith(b"MSA|")).split(b"|")
        if msa[1] not in (b"AA", b"CA") or msa[2] != _msh10(payload):
            raise AssertionError(f"bad ACK {ack!r}")
    writer.close()
    await writer.wait_closed()


async def _drive(port: int, messages: list[bytes], connections: int) -> float:
    chunks = [messages[i::connections] for i in range(connections)]
    t0 = time.perf_counter()
    await asyncio.gather(*(_client(port, c) for c in chunks))
    return time.perf_counter() - t0


def run_one(kind: str, n: int, connections: int, offset: int) -> tuple[float, float, str]:
    """Start server ``kind`` in a child process, send ``n`` ORMs; (messages/s, the server's
    CPU ms per message, server note)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-mllp-{kind}-") as tmp:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--dir", tmp],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdin is not None
            port = int(proc.stdout.readline())
            messages = [orm(offset + i) for i in range(n)]
            elapsed = asyncio.run(_drive(port, messages, connections))
            proc.stdin.close()
            out = proc.stdout.read().strip().splitlines()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    cpu = float(out[-1].removeprefix("cpu_s=")) if out and out[-1].startswith("cpu_s=") else 0.0
    note = " ".join(out[:-1])
    if kind == "triage" and f"orders={n} messages={n}" not in note:
        raise AssertionError(f"triage stored {note!r}, expected {n} orders and messages")
    return n / elapsed, 1000 * cpu / n, note


# -- in-process CPU per step -------------------------------------------------------------------


def steps(n: int) -> None:
    """CPU time per message of each step of the ACK path, in this process, one thread
    (``time.thread_time``: what other processes do on the machine does not count)."""
    from triage.config import Settings
    from triage.hl7.inbound import decode_payload, evaluate
    from triage.ingest.hl7_store import MessageStore
    from triage.store.db import Database

    payloads = [orm(i) for i in range(n + 8)]

    def cpu_per_msg(fn: Callable[[], object], count: int) -> float:
        t0 = time.thread_time()
        fn()
        return (time.thread_time() - t0) * 1e3 / count

    texts = [decode_payload(p)[0] for p in payloads]
    decode = cpu_per_msg(lambda: [decode_payload(p) for p in payloads[:n]], n)
    parse = cpu_per_msg(lambda: [evaluate(t) for t in texts[:n]], n)
    evs = [evaluate(t) for t in texts]
    print(f"{n} ORM^O01, python {sys.version.split()[0]}; CPU ms per message (thread time)")
    print(f"| step | per message |\n|---|---|\n| decode (MSH-18) | {decode:.3f} ms |")
    print(f"| split + header + mapped fields (`evaluate`) | {parse:.3f} ms |")
    for sync in ("OFF", "FULL"):
        for batch in (1, 8):
            with tempfile.TemporaryDirectory(prefix="bench-mllp-steps-") as tmp:
                settings = Settings(data_dir=Path(tmp), hl7_port=0, bind_host="127.0.0.1")  # type: ignore[call-arg]
                db = Database(f"sqlite:///{Path(tmp) / 'triage.db'}")
                db.create_all()
                store = MessageStore(settings, db)
                store.store_batch(evs[n : n + 1], ["bench"])  # opens the connection
                store._connection().execute(f"PRAGMA synchronous={sync}")

                def run(store: MessageStore = store, batch: int = batch) -> None:
                    for i in range(0, n, batch):
                        chunk = evs[i : min(i + batch, n)]
                        store.store_batch(chunk, ["bench"] * len(chunk))

                t0 = time.perf_counter()
                cpu = cpu_per_msg(run, n)
                wall = (time.perf_counter() - t0) * 1e3 / n
                store.close()
                db.dispose()
            what = "no fsync (synchronous=OFF)" if sync == "OFF" else "synchronous=FULL"
            print(
                f"| store + ACK + apply, {batch} per transaction, {what} | {cpu:.3f} ms "
                f"(wall {wall:.3f} ms) |"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=5000, help="messages per run (5000)")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    p.add_argument(
        "--servers",
        nargs="+",
        choices=["echo", "durable", "triage"],
        default=["echo", "durable", "triage"],
        help="servers to measure (all three; the table needs all three)",
    )
    p.add_argument("--repeat", type=int, default=1, help="measure every server this many times")
    p.add_argument("--steps", action="store_true", help="print the in-process CPU per step instead")
    p.add_argument("--serve", choices=["echo", "durable", "triage"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        if args.serve == "triage":
            asyncio.run(_serve_triage(args.dir))
        else:
            asyncio.run(_serve_echo(args.serve == "durable", args.dir))
        return 0
    if args.steps:
        steps(args.n)
        return 0

    print(
        f"{args.n} ORM^O01 per run, python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    rows: list[tuple[int, dict[str, tuple[float, float]]]] = []
    offset = 0
    for _ in range(args.repeat):
        for conns in args.connections:
            results: dict[str, tuple[float, float]] = {}
            for kind in args.servers:
                rate, cpu, note = run_one(kind, args.n, conns, offset)
                offset += args.n
                results[kind] = (rate, cpu)
                extra = f"  ({note})" if note else ""
                print(
                    f"{kind:8s} {conns} conn: {rate:8.0f} msg/s, server CPU {cpu:.3f} ms/msg"
                    f"{extra}",
                    flush=True,
                )
            rows.append((conns, results))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if len(args.servers) < 3:
        return 0
    print()
    print(
        "| connections | bare echo | durable echo (fsync) | triage | triage / durable "
        "| server CPU/msg: durable, triage |"
    )
    print("|---|---|---|---|---|---|")
    for conns, r in rows:
        (e, _), (d, dc), (t, tc) = r["echo"], r["durable"], r["triage"]
        print(
            f"| {conns} | {e:,.0f}/s | {d:,.0f}/s | {t:,.0f}/s | {t / d:.2f}x "
            f"| {dc:.2f} ms, {tc:.2f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
