"""Latency benchmark: from the last image of a head CT to the ACK of the order change (XO) the
engine sends a test RIS, with the time of each stage. One run prints everything.

    .venv/bin/python benchmarks/bench_latency.py                 # 300 slices, 3 rounds each
    .venv/bin/python benchmarks/bench_latency.py --rounds 5 --slices 120
    .venv/bin/python benchmarks/bench_latency.py --levers         # each lever off, side by side

The engine runs in this process (``triage.service.Engine``: the real listeners, scheduler,
pipeline and the bundled Triton; SQLite in a temporary data dir, ephemeral ports), so that its
stages can be timed by wrapping them. The RIS is :class:`triage.demo_ris.TestRIS`. The study is
a synthetic head CT with a hemorrhage (``write_head_ct``, 512 x 512, ``--slices`` slices of
1.25 mm, inside the ich model's trained thickness range), ordered routine for an emergency
patient, so that the positive finding raises it to STAT and the engine sends an XO; each round
sends it again under new UIDs and a new accession number, from memory, with pynetdicom on one
association.

Two figures, each over ``--rounds`` rounds (medians printed):

- **(a) engine share, completion by quiet period**: the study completes after
  ``--stable`` seconds without a new image; (XO ACK received) - (last image + stable seconds)
  - (inference on Triton). The stability wait and the model's own time are left out; what
  remains is the engine's: noticing the completion, routing, reading the images, checks,
  scoring, the outbox and the RIS round trip. Target: under 1 s.
- **(b) last image -> XO ACK, exam completed by the RIS**: right after the last image's
  Success, the RIS sends the order again with ORC-5 = CM (exam completed); (XO ACK received)
  - (last image's Success), model time included. Target: under 1.5 s.

``--levers``: each round also runs with the slices read ahead off (``load_volume`` reads every
file at completion) and with the completion wake-up off (the periodic tick notices the quiet
study), so that what each gave is measured side by side.

Floors measured in the same run: inference alone on the same tensor (the engine's client,
Triton, shared memory), an MLLP round trip alone (the engine's client to the test RIS), the
images read from disk alone (``load_volume`` on the stored files, page cache warm).

Synthetic phantoms; the models are trained on synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import triage.inference.analyze as analyze_mod  # noqa: E402
import triage.pipeline as pipeline_mod  # noqa: E402
from triage.config import load_settings  # noqa: E402
from triage.demo_ris import TestRIS  # noqa: E402
from triage.hl7.client import MLLPConnection, send_message  # noqa: E402
from triage.inference.client import InferenceClient  # noqa: E402
from triage.outbound.sender import OutboxSender  # noqa: E402
from triage.service import Engine  # noqa: E402
from triage.synth.ct import write_head_ct  # noqa: E402
from triage.synth.orders import order_message  # noqa: E402


class Timeline:
    """(stage, start, end) events, time.monotonic(), from any thread."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def add(self, name: str, start: float, end: float) -> None:
        with self._lock:
            self.events.append((name, start, end))

    def since(self, t0: float) -> list[tuple[str, float, float]]:
        with self._lock:
            return [e for e in self.events if e[1] >= t0 - 0.5]

    def clear(self) -> None:
        with self._lock:
            self.events.clear()


TL = Timeline()


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            TL.add(name, t, time.monotonic())

    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def instrument(engine: Engine) -> None:
    """Wrap the stages of the data path (module functions and bound methods)."""
    for name in ("select_series", "load_volume", "resample", "check_input"):
        setattr(analyze_mod, name, timed(name, getattr(analyze_mod, name)))
    pipeline_mod.complete_stable_studies = timed("completion", pipeline_mod.complete_stable_studies)
    InferenceClient.infer = timed("triton", InferenceClient.infer)  # type: ignore[method-assign]
    OutboxSender._exchange = timed(  # type: ignore[method-assign]
        "ris round trip", OutboxSender._exchange
    )
    p = engine.pipeline
    p.on_order = timed("on_order", p.on_order)  # type: ignore[method-assign]
    p._route = timed("route", p._route)  # type: ignore[method-assign]
    p._analyze = timed("analyze", p._analyze)  # type: ignore[method-assign]
    p._score = timed("score+outbox", p._score)  # type: ignore[method-assign]
    a = engine.analyzer
    a._key_image = timed("key image", a._key_image)  # type: ignore[method-assign]
    engine._on_orders = timed("hl7 hand-off", engine._on_orders)  # type: ignore[method-assign]
    engine.hl7.on_orders = engine._on_orders


def start_engine(
    work: Path, ris_port: int, stable: float, reader_nice: int | None = None
) -> tuple[Engine, threading.Thread]:
    settings = load_settings(
        None,
        overrides={
            "data_dir": str(work / "var"),
            "dicom_port": "0",
            "hl7_port": "0",
            "http_port": "0",
            "ris_host": "127.0.0.1",
            "ris_port": str(ris_port),
            "study_stable_seconds": str(stable),
            "log_level": "WARNING",
        },
    )
    engine = Engine(settings)
    if reader_nice is not None:
        engine.slices.nice = reader_nice
    instrument(engine)
    thread = threading.Thread(target=lambda: asyncio.run(engine.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        health = engine.health()
        if all(part.get("ready") for part in health.values()) and "dicom" in engine.endpoints:
            return engine, thread
        time.sleep(0.5)
    raise SystemExit(f"engine not ready: {engine.health()}")


def stop_engine(engine: Engine, thread: threading.Thread) -> None:
    loop_stop = engine.request_stop
    loop_stop()
    thread.join(timeout=120)


def renamed(datasets: list[pydicom.Dataset], n: int) -> tuple[str, str, list[pydicom.Dataset]]:
    """The study under new UIDs, patient id and accession number (round ``n``)."""
    study, series = generate_uid(), generate_uid()
    acc, pid = f"LAT{os.getpid() % 10000:04d}{n:03d}", f"LATP{n:03d}"
    for ds in datasets:
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = acc
        ds.PatientID = pid
    return acc, study, datasets


def send_images(port: int, datasets: list[pydicom.Dataset]) -> float:
    """C-STORE every data set on one association; the time the last Success came back.

    pynetdicom's client now and then misses a response that comes back very fast ("Received
    unexpected C-STORE service message"), then waits for it until its DIMSE timeout: the
    rest is sent again on a new association (an instance already stored is acknowledged
    without being written again)."""
    todo = list(datasets)
    last = 0.0
    for _ in range(5):
        ae = AE(ae_title="LATENCY")
        ae.add_requested_context(CTImageStorage)
        ae.dimse_timeout = 2
        assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
        assert assoc.is_established, "association refused"
        try:
            while todo:
                status = assoc.send_c_store(todo[0])
                if not status:
                    break
                last = time.monotonic()
                assert status.Status == 0, f"C-STORE status {status}"
                todo.pop(0)
        finally:
            if assoc.is_established:
                assoc.release()
        if not todo:
            return last
        print(f"  (C-STORE response missed by the client; {len(todo)} sent again)")
    raise SystemExit("C-STORE failed 5 times")


def order(acc: str, pid: str, study_uid: str, status: str, cid: str) -> str:
    msg = order_message(
        accession=acc,
        patient_id=pid,
        priority="R",
        patient_class="E",
        study_uid=study_uid,
        control_id=cid,
    )
    # ORC-5, the order status: SC (scheduled) as the generator writes it, or CM
    return msg.replace(f"|F{acc}||SC||", f"|F{acc}||{status}||", 1)


def wait_xo(ris: TestRIS, acc: str, timeout: float = 60.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in ris.messages():
            if m.order_control == "XO" and m.accession == acc:
                return m.at
        time.sleep(0.005)
    return None


STAGES = (
    "hl7 hand-off",
    "on_order",
    "completion",
    "route",
    "analyze",
    "select_series",
    "load_volume",
    "resample",
    "check_input",
    "triton",
    "key image",
    "score+outbox",
    "ris round trip",
)


def one_round(
    engine: Engine, ris: TestRIS, datasets: list[pydicom.Dataset], n: int, mode: str
) -> dict[str, float]:
    acc, study_uid, ds = renamed(datasets, n)
    pid = ds[0].PatientID
    hl7_port, dicom_port = engine.endpoints["hl7"][1], engine.endpoints["dicom"][1]
    send_message("127.0.0.1", hl7_port, order(acc, pid, study_uid, "SC", f"NW{acc}"), 10)
    time.sleep(0.3)
    TL.clear()
    cache = engine.slices
    before = (cache.hits, cache.misses, cache.waits)
    last = send_images(dicom_port, ds)
    if mode == "cm":
        send_message("127.0.0.1", hl7_port, order(acc, pid, study_uid, "CM", f"CM{acc}"), 10)
    ris_at = wait_xo(ris, acc)
    # the engine has the ACK when _exchange returns: the XO's "ris round trip" event ends then
    time.sleep(0.2)
    events = TL.since(last)
    trips = [e for e in events if e[0] == "ris round trip"]
    if ris_at is None or not trips:
        raise SystemExit(f"round {n} ({mode}): no XO reached the test RIS")
    xo_trip = min((e for e in trips if e[2] >= ris_at), key=lambda e: e[2])
    ack = xo_trip[2]
    out: dict[str, float] = {"last image -> XO ACK": ack - last}
    per: dict[str, float] = defaultdict(float)
    for name, start, end in events:  # time spent in each stage between the two, clipped
        if start < ack and end > last:
            per[name] += min(end, ack) - max(start, last)
    out.update({k: per.get(k, 0.0) for k in STAGES})
    starts = {name: start for name, start, _ in sorted(events, key=lambda e: -e[1])}
    if mode == "cm":
        out["-> hand-off starts"] = starts.get("hl7 hand-off", ack) - last
    else:
        noticed = [e[2] for e in events if e[0] == "completion" and e[2] <= ack]
        out["-> completion noticed"] = (max(noticed) if noticed else ack) - last
    out["-> analyze starts"] = starts.get("analyze", ack) - last
    # slices taken from the read-ahead / read at completion / waited for
    out["slices read ahead"] = float(cache.hits - before[0])
    out["slices read at completion"] = float(cache.misses - before[1])
    return out


def floors(engine: Engine, ris: TestRIS, files: list[Path]) -> dict[str, float]:
    from triage.inference.volume import load_volume, resample

    client = engine.analyzer.client
    assert client is not None
    contract = engine.analyzer.contract("ich")
    vol = load_volume(files)
    tensor = resample(vol, contract.input_shape, contract.z_resampling)
    infer = InferenceClient.infer.__wrapped__  # type: ignore[attr-defined]
    t_inf = []
    for _ in range(5):
        t = time.monotonic()
        infer(client, "ich", tensor)
        t_inf.append(time.monotonic() - t)
    t_load = []
    for _ in range(3):
        t = time.monotonic()
        load_volume(files)
        t_load.append(time.monotonic() - t)
    msg = order("FLOOR", "FLOORP", "", "SC", "FLOOR0")
    t_mllp = []
    with MLLPConnection("127.0.0.1", ris.port, 10.0) as conn:
        for i in range(30):
            t = time.monotonic()
            conn.exchange(msg.replace("FLOOR0", f"FLOOR{i}"))
            t_mllp.append(time.monotonic() - t)
    return {
        "inference alone (Triton, same tensor)": statistics.median(t_inf),
        "MLLP round trip alone": statistics.median(t_mllp),
        "load_volume alone (files, page cache)": statistics.median(t_load),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--stable", type=float, default=3.0, help="study_stable_seconds")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--reader-nice", type=int, default=None, help="nice of the slice reader thread")
    ap.add_argument(
        "--levers",
        action="store_true",
        help="also run each round with the read-ahead off and with the wake-up off",
    )
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="bench-latency-", dir=args.work)
    work = Path(tmp.name)
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min)")
    study = write_head_ct(
        work / "study",
        hemorrhage=True,
        seed=11,
        patient_id="LAT",
        accession="LAT",
        n_slices=args.slices,
        slice_thickness=1.25,
    )
    datasets: list[pydicom.Dataset] = [pydicom.dcmread(f) for f in study.files]
    ris = TestRIS()
    engine, thread = start_engine(work, ris.port, args.stable, args.reader_nice)
    configs = ["engine"] + (["no read-ahead", "no wake-up"] if args.levers else [])
    results: dict[tuple[str, str], list[dict[str, float]]] = {
        (c, m): [] for c in configs for m in ("quiet", "cm")
    }
    try:
        n = 0
        for _ in range(args.rounds):
            for config in configs:  # side by side, round by round
                for mode in ("quiet", "cm"):
                    n += 1
                    with lever(engine, config):
                        results[(config, mode)].append(one_round(engine, ris, datasets, n, mode))
        stored = sorted((work / "var" / "dicom").rglob("*.dcm"))[: args.slices]
        fl = floors(engine, ris, stored)
    finally:
        stop_engine(engine, thread)
        ris.close()
        tmp.cleanup()

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"\n{args.slices}-slice head CT, {args.rounds} rounds; medians (s), [min-max]")
    for mode, title in (("quiet", "(a) completed by quiet period"), ("cm", "(b) ORC-5 = CM")):
        rows = results[("engine", mode)]
        print(f"\n{title}")
        for key in rows[0]:
            vals = [r[key] for r in rows]
            print(f"  {key:<28} {med(rows, key):7.3f}  [{min(vals):.3f}-{max(vals):.3f}]")
    print("\nfloors (same run)")
    for k, v in fl.items():
        print(f"  {k:<40} {v:7.3f}")
    print()
    for config in configs:
        a = [
            r["last image -> XO ACK"] - args.stable - r["triton"]
            for r in results[(config, "quiet")]
        ]
        b = [r["last image -> XO ACK"] for r in results[(config, "cm")]]
        noticed = [r["-> completion noticed"] - args.stable for r in results[(config, "quiet")]]
        load = [r["load_volume"] for r in results[(config, "cm")] + results[(config, "quiet")]]
        print(
            f"{config:<14} quiet period end -> completion noticed: "
            f"{statistics.median(noticed):.3f} s [{min(noticed):.3f}-{max(noticed):.3f}]; "
            f"load_volume {statistics.median(load):.3f} s [{min(load):.3f}-{max(load):.3f}]"
        )
        print(
            f"{config:<14} (a) engine share, quiet completion, stability wait and inference "
            f"left out: {statistics.median(a):.3f} s [{min(a):.3f}-{max(a):.3f}] (target < 1 s)"
        )
        print(
            f"{config:<14} (b) last image -> XO ACK, ORC-5 = CM, model time included: "
            f"{statistics.median(b):.3f} s [{min(b):.3f}-{max(b):.3f}] (target < 1.5 s)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f} (1 min)")


@contextlib.contextmanager
def lever(engine: Engine, config: str) -> Iterator[None]:
    """The engine as shipped, or with one lever off: the slices read ahead (the analyzer reads
    every file at completion, nothing is read while the images arrive), or the completion
    wake-up (the periodic tick, every completion_poll_seconds, notices the quiet study)."""
    analyzer_slices, offer, wake = engine.analyzer.slices, engine.slices.offer, engine.waker._wake
    if config == "no read-ahead":
        engine.analyzer.slices = None
        engine.slices.offer = lambda path: False  # type: ignore[method-assign]
    elif config == "no wake-up":
        engine.waker._wake = lambda: None
    try:
        yield
    finally:
        engine.analyzer.slices = analyzer_slices
        engine.slices.offer = offer  # type: ignore[method-assign]
        engine.waker._wake = wake


if __name__ == "__main__":
    main()
