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
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    server.close()
    os.close(fd)


async def _serve_triage(directory: Path) -> None:
    from triage.config import Settings
    from triage.ingest.hl7_listener import HL7Listener
    from triage.store.db import Database

    settings = Settings(data_dir=directory, hl7_port=0, bind_host="127.0.0.1")
    db = Database(f"sqlite:///{directory / 'triage.db'}")
    db.create_all()
    applied: list[int] = []
    listener = HL7Listener(settings, db, applied.append)
    _, port = await listener.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await listener.stop()
    from sqlalchemy import text

    with db.engine.connect() as conn:
        orders = conn.execute(text('SELECT count(*) FROM "order"')).scalar_one()
        messages = conn.execute(text("SELECT count(*) FROM hl7message")).scalar_one()
    print(f"orders={orders} messages={messages} on_order={len(applied)}", flush=True)
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


def run_one(kind: str, n: int, connections: int, offset: int) -> tuple[float, str]:
    """Start server ``kind`` in a child process, send ``n`` ORMs; (messages/s, server note)."""
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
            note = proc.stdout.read().strip()
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if kind == "triage" and f"orders={n} messages={n}" not in note:
        raise AssertionError(f"triage stored {note!r}, expected {n} orders and messages")
    return n / elapsed, note


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=5000, help="messages per run (5000)")
    p.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    p.add_argument("--serve", choices=["echo", "durable", "triage"], help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        if args.serve == "triage":
            asyncio.run(_serve_triage(args.dir))
        else:
            asyncio.run(_serve_echo(args.serve == "durable", args.dir))
        return 0

    print(f"{args.n} ORM^O01 per run, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    results: dict[tuple[str, int], float] = {}
    offset = 0
    for conns in args.connections:
        for kind in ("echo", "durable", "triage"):
            rate, note = run_one(kind, args.n, conns, offset)
            offset += args.n
            results[(kind, conns)] = rate
            extra = f"  ({note})" if note else ""
            print(f"{kind:8s} {conns} conn: {rate:8.0f} msg/s{extra}", flush=True)
    print()
    print("| connections | bare echo | durable echo (fsync) | triage | triage / durable |")
    print("|---|---|---|---|---|")
    for conns in args.connections:
        e, d, t = (results[(k, conns)] for k in ("echo", "durable", "triage"))
        print(f"| {conns} | {e:,.0f}/s | {d:,.0f}/s | {t:,.0f}/s | {t / d:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
