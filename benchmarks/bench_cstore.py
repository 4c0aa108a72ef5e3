"""C-STORE ingest benchmark: our Storage SCP against dcmtk's storescp, measured in one run.

    .venv/bin/python benchmarks/bench_cstore.py              # 300 slices, 3 rounds
    .venv/bin/python benchmarks/bench_cstore.py --rounds 5 --work /var/tmp/bench

The same 300 synthetic CT slices (512 x 512, 0.625 mm, about 150 MB, from
``triage.synth.write_head_ct``) are sent by the same dcmtk ``storescu`` (started with the
environment variable TCP_NODELAY=1, so dcmtk turns Nagle's algorithm off), on one association
and on 4 in parallel (the files split in 4), to:

- ``storescp``: dcmtk's ``storescp -od DIR +B`` (bit-preserving, no fsync), started with
  TCP_NODELAY=1 too;
- ``bare``: the issue's reference point, a minimal pynetdicom SCP (maximum PDU size 0) that
  writes ``event.encoded_dataset()`` with fsync and rename, and nothing else;
- ``triage``: our :class:`~triage.ingest.dicom_scp.DicomListener` in its own process, on a
  fresh SQLite database: every instance written to disk while it arrives, checked, renamed,
  fsynced (file and directory) before its Success, and indexed right after it (before the
  next PDU is read; every row is counted at the end);
- ``re-send``: the same server sent the same files a second time (the first pass not timed):
  every instance is found already stored when its command arrives (nothing is written),
  then received and checked. It measures the receive path alone (PDUs, header check,
  duplicate lookup, response).

Servers run one at a time, interleaved round by round (the machine is shared: the median of
the rounds is reported), with ``sync`` before each (untimed): storescp does not fsync, and on
ext4 the next server's first fsyncs would otherwise write storescp's 150 MB out. Then the
floors, in this process, on the same disk:

- ``floor``: the same files written with write + fsync + rename (+ directory fsync), one
  after the other (what any server that fsyncs each instance before answering must pay);
- ``floor rename-first``: write + rename + fsync + directory fsync (the order our SCP uses);
- SQLite commits of one small row with ``synchronous=FULL`` and ``NORMAL`` (WAL).

It checks that every file arrived (storescp's output folder, our index) and prints images/s
and the ratios docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
NODELAY_ENV = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_series(folder: Path, n: int) -> list[Path]:
    from triage.synth import write_head_ct

    existing = sorted(folder.glob("*.dcm"))
    if len(existing) == n:
        return existing
    shutil.rmtree(folder, ignore_errors=True)
    study = write_head_ct(
        folder,
        hemorrhage=False,
        seed=2026,
        patient_id="BENCH",
        accession="BENCH1",
        n_slices=n,
        slice_thickness=0.625,
    )
    return list(study.files)


def send(port: int, called: str, files: list[Path], associations: int) -> float:
    """storescu x ``associations`` in parallel; seconds from the first start to the last end."""
    parts = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aet", "BENCHSCU", "-aec", called, "127.0.0.1", str(port)]
            + [str(f) for f in part],
            env=NODELAY_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for part in parts
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - start
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return elapsed


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited at start")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def run_storescp(work: Path, files: list[Path], associations: int) -> float:
    out = work / "storescp"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [STORESCP, "-od", str(out), "+B", str(port)],
        env=NODELAY_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        elapsed = send(port, "STORESCP", files, associations)
    finally:
        proc.terminate()
        proc.wait(10)
    got = len(list(out.iterdir()))
    if got != len(files):
        raise RuntimeError(f"storescp stored {got} of {len(files)} files")
    return elapsed


def run_triage(work: Path, files: list[Path], associations: int, resend: bool = False) -> float:
    """Seconds for our SCP to receive, check, store and index ``files``. ``resend``: the files
    are sent once (not timed), then again (timed): every instance is then received, checked
    and found already stored, so nothing is written; what is left is the receive path."""
    data = work / "triage"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(data), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_port(port, proc)
        if resend:
            send(port, "TRIAGE", files, associations)
        elapsed = send(port, "TRIAGE", files, associations)
    finally:
        _, err = stop_server(proc)
    db = sqlite3.connect(data / "triage.db")
    try:
        ((count,),) = db.execute("SELECT COUNT(*) FROM instance").fetchall()
    finally:
        db.close()
    if count != len(files):
        raise RuntimeError(f"triage indexed {count} of {len(files)}: {err.decode()[-500:]}")
    return elapsed


def _block_stop_signals() -> None:
    """Block SIGINT and SIGTERM before any thread starts, so that ``sigwait`` receives them
    (unblocked, a signal the shell set to ignore - a benchmark started in the background -
    never reaches it, and the server would never stop)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def serve(data: Path, port: int) -> None:
    """Run our SCP alone in this process until SIGTERM (the benchmark's server side)."""
    _block_stop_signals()
    import logging

    from triage.config import Settings
    from triage.ingest.dicom_scp import DicomListener
    from triage.store.db import Database

    logging.basicConfig(level=logging.WARNING)
    settings = Settings.model_validate(
        {"data_dir": data, "dicom_port": port, "dicom_min_free_bytes": 0}
    )
    db = Database(settings.resolved_database_url)
    db.create_all()
    listener = DicomListener(settings, db)
    listener.start()
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        listener.stop()
        db.dispose()


def serve_bare(data: Path, port: int) -> None:
    """The issue's reference: a minimal pynetdicom SCP (maximum PDU size 0) writing
    ``event.encoded_dataset()`` to a temp file, fsync, rename; no checks, no index."""
    _block_stop_signals()
    from pynetdicom import AE, StoragePresentationContexts, evt

    def nodelay(event: object) -> None:
        sock = event.assoc.dul.socket.socket  # type: ignore[attr-defined]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def store(event: object) -> int:
        sop = event.request.AffectedSOPInstanceUID  # type: ignore[attr-defined]
        tmp, final = data / f".{sop}.tmp", data / f"{sop}.dcm"
        with tmp.open("wb") as f:
            f.write(event.encoded_dataset())  # type: ignore[attr-defined]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return 0x0000

    ae = AE("BARE")
    ae.maximum_pdu_size = 0
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax)
    handlers = [(evt.EVT_C_STORE, store), (evt.EVT_CONN_OPEN, nodelay)]
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        signal.sigwait([signal.SIGINT, signal.SIGTERM])
    finally:
        ae.shutdown()


def stop_server(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGTERM, then SIGKILL if it has not ended in 30 s (the files and rows are counted
    after, so a kill changes no result)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        print(f"  (server {proc.args[2]} did not stop on SIGTERM in 30 s: killed)", flush=True)
        proc.kill()
        out, err = proc.communicate()
    return out or b"", err or b""


def run_bare(work: Path, files: list[Path], associations: int) -> float:
    data = work / "bare"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-bare", str(data), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        elapsed = send(port, "BARE", files, associations)
    finally:
        stop_server(proc)
    got = len(list(data.glob("*.dcm")))
    if got != len(files):
        raise RuntimeError(f"the bare SCP stored {got} of {len(files)} files")
    return elapsed


def floor(work: Path, files: list[Path], rename_first: bool) -> float:
    """Write each file durably from one process; seconds for all."""
    from triage.store.durable import fsync_dir

    data = [f.read_bytes() for f in files]
    out = work / "floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    start = time.perf_counter()
    for i, blob in enumerate(data):
        final, tmp = out / f"{i}.dcm", out / f".{i}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, blob)
            if rename_first:
                os.replace(tmp, final)
                os.fsync(fd)
            else:
                os.fsync(fd)
                os.replace(tmp, final)
        finally:
            os.close(fd)
        fsync_dir(out)
    return time.perf_counter() - start


def sqlite_commits(work: Path, synchronous: str, n: int = 300) -> float:
    """Seconds per commit of one small row, WAL mode."""
    path = work / f"commit-{synchronous}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for _ in range(n):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
            db.execute("COMMIT")
        return (time.perf_counter() - start) / n
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    if args.serve_bare:
        serve_bare(args.serve_bare, args.port)
        return
    for tool in (STORESCU, STORESCP):
        if not Path(tool).exists():
            sys.exit(f"{tool} not found: apt-get install dcmtk")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cstore-"))
    work.mkdir(parents=True, exist_ok=True)
    files = make_series(work / "series", args.slices)
    size = sum(f.stat().st_size for f in files)
    print(f"{len(files)} CT slices, {size / 1e6:.0f} MB, in {work}; {args.rounds} round(s)")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    times: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        for associations in (1, 4):
            servers = (
                ("storescp", run_storescp),
                ("bare", run_bare),
                ("triage", run_triage),
                ("re-send", lambda w, f, a: run_triage(w, f, a, resend=True)),
            )
            for name, fn in servers:
                # Untimed: flush what the previous server left dirty (storescp's 150 MB are
                # not fsynced), or ext4 makes the next server's first fsyncs write it out.
                os.sync()
                t = fn(work, files, associations)
                times.setdefault((name, associations), []).append(t)
                print(
                    f"  round {r + 1}: {name:8s} {associations} association(s): "
                    f"{t:6.2f} s  {len(files) / t:6.0f} images/s",
                    flush=True,
                )
    os.sync()
    floor_t = statistics.median(floor(work, files, rename_first=False) for _ in range(2))
    floor_rf = statistics.median(floor(work, files, rename_first=True) for _ in range(2))
    full = sqlite_commits(work, "FULL")
    normal = sqlite_commits(work, "NORMAL")
    rate = {k: len(files) / statistics.median(v) for k, v in times.items()}

    print()
    print("median images/s")
    for associations in (1, 4):
        print(
            f"  {associations} association(s): storescp {rate[('storescp', associations)]:6.0f}"
            f"   bare pynetdicom {rate[('bare', associations)]:6.0f}"
            f"   triage {rate[('triage', associations)]:6.0f}"
            f"   triage re-send {rate[('re-send', associations)]:6.0f}"
        )
    print(f"  floor (write+fsync+rename+dir fsync, 1 process): {len(files) / floor_t:6.0f}")
    print(f"  floor, rename first (write+rename+fsync+dir fsync): {len(files) / floor_rf:6.0f}")
    print(
        f"  SQLite commit (WAL): synchronous=FULL {full * 1e3:.2f} ms, NORMAL {normal * 1e3:.3f} ms"
    )
    print()
    print("ratios")
    print(f"  triage / storescp, 1 association:  {rate[('triage', 1)] / rate[('storescp', 1)]:.2f}")
    print(f"  triage / storescp, 4 associations: {rate[('triage', 4)] / rate[('storescp', 4)]:.2f}")
    print(f"  triage 4 associations / 1:         {rate[('triage', 4)] / rate[('triage', 1)]:.2f}")
    print(
        f"  storescp 4 associations / 1:       {rate[('storescp', 4)] / rate[('storescp', 1)]:.2f}"
    )
    print(
        "  triage re-send / storescp, 1 assoc. (receive path, nothing written): "
        f"{rate[('re-send', 1)] / rate[('storescp', 1)]:.2f}"
    )
    print(f"  triage 1 association / floor:      {rate[('triage', 1)] * floor_t / len(files):.2f}")
    print(f"  triage / bare pynetdicom, 1 assoc.: {rate[('triage', 1)] / rate[('bare', 1)]:.2f}")
    print(
        f"  bare pynetdicom / storescp, 1 assoc.: {rate[('bare', 1)] / rate[('storescp', 1)]:.2f}"
    )
    print(
        f"  floor / storescp 1 association:    {len(files) / floor_t / rate[('storescp', 1)]:.2f}"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
