"""Inference benchmark: the same model through Triton vs in process, on the same inputs, and the
time from "study complete" to result for a 300-slice head CT. One run prints everything.

    .venv/bin/python benchmarks/bench_inference.py               # 20 studies per model
    .venv/bin/python benchmarks/bench_inference.py -n 40 --concurrency 4 --skip-300

Per model of ``models/`` (``ich``, ``pe``):

- **Triton**: the bundled tritonserver (``LocalTriton``, loopback) and the engine's
  ``InferenceClient`` over gRPC (retries/breaker in the path, as in the engine), as the engine
  uses it: the input through system shared memory (``triton``), and with
  ``shared_memory=False``, the 4 MiB input in the gRPC message (``triton-net``); one warm-up
  call, then ``-n`` studies one after another (per-study latency p50/p95), then the same
  studies from ``--concurrency`` threads (throughput, studies/s; one client shared by the
  threads, as in the engine; Triton's dynamic batching may merge requests). The three paths
  take turns every 5 studies, so that load from other processes falls on all of them.
- **In process**: ``models/<name>/1/model.onnx`` with onnxruntime (CPU) when the file exists -
  the comparison the issue asks for (target: Triton p50 within 1.2x of in-process p50) - with
  the session options ``1/model.py`` uses in Triton (2 intra-op threads, no busy-waiting), so
  that the ratio is Triton's own overhead; ``--ort-defaults``: onnxruntime's defaults. Until
  the ONNX files land, the placeholder's own numpy ``score()`` from ``1/model.py`` is run in
  process instead and the output says so.

Inputs: synthetic head CTs (ich) and CTPAs (pe) from ``triage.synth.ct``, loaded and resampled
by the engine's own code to the contract's grid, generated once, identical for both paths.

Study complete -> result (``--skip-300`` to leave out): ``write_head_ct(n_slices=300,
slice_thickness=0.625)``; then the analyzer's work after completion, each step timed: series
selection, DICOM read + HU, resampling, input checks, inference on Triton, key image. Files
are in the page cache (just written), as they are after a C-STORE.

Synthetic phantoms; the models are trained on synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from triage.inference.analyze import TritonAnalyzer  # noqa: E402
from triage.inference.checks import InputLimits, check_input  # noqa: E402
from triage.inference.client import InferenceClient  # noqa: E402
from triage.inference.contract import load_contract  # noqa: E402
from triage.inference.local_triton import LocalTriton  # noqa: E402
from triage.inference.volume import load_volume, resample, select_series  # noqa: E402
from triage.ingest.dicom_header import index_instance  # noqa: E402
from triage.store.models import Instance  # noqa: E402
from triage.synth import ct  # noqa: E402

MODELS = REPO / "models"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def instance_rows(files: list[Path]) -> list[Instance]:
    """Instance rows as DICOM ingest indexes them (at receive time, not timed)."""
    return [
        Instance(**index_instance(pydicom.dcmread(p, stop_before_pixels=True))[0], path=str(p))
        for p in files
    ]


def make_inputs(model: str, n: int, work: Path) -> list[np.ndarray]:
    contract = load_contract(MODELS / model / "config.pbtxt")
    out = []
    for i in range(n):
        kw: dict[str, Any] = {"seed": 1000 + i, "patient_id": f"B{i}", "accession": f"B{i}"}
        folder = work / f"{model}{i}"
        if model == "ich":
            study = ct.write_head_ct(folder, hemorrhage=bool(i % 2), size=256, **kw)
        else:
            study = ct.write_ctpa(folder, embolus=bool(i % 2), size=256, **kw)
        out.append(resample(load_volume(study.files), contract.input_shape, contract.z_resampling))
    return out


def in_process_runner(
    model: str, ort_defaults: bool = False
) -> tuple[str, Callable[[np.ndarray], float]]:
    """(label, fn(volume) -> probability) for the in-process path: the session options of
    ``1/model.py`` (2 intra-op threads, no busy-waiting), or onnxruntime's defaults."""
    onnx = MODELS / model / "1" / "model.onnx"
    if onnx.is_file():
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if not ort_defaults:
            opts.intra_op_num_threads = int(os.environ.get("TRIAGE_ORT_THREADS", "2"))
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry(
                "session.intra_op.allow_spinning", os.environ.get("TRIAGE_ORT_SPINNING", "0")
            )
        sess = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run_onnx(v: np.ndarray) -> float:
            outs = sess.run(["probability"], {name: v[None].astype(np.float32)})
            return float(np.asarray(outs[0]).reshape(-1)[0])

        what = "onnxruntime defaults" if ort_defaults else "session options of 1/model.py"
        return f"onnxruntime in process ({onnx.relative_to(REPO)}, {what})", run_onnx
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("pb_utils_stub"))
    spec = importlib.util.spec_from_file_location(
        f"bench_{model}", MODELS / model / "1" / "model.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def run_numpy(v: np.ndarray) -> float:
        p, _slices = mod.score(v)
        return float(np.asarray(p).reshape(-1)[0])

    return (
        f"{model}/1/model.onnx NOT PRESENT YET (the model engineer is producing it): in-process "
        "path = the placeholder's numpy score() from 1/model.py",
        run_numpy,
    )


def sequential(
    fns: list[Callable[[np.ndarray], Any]], inputs: list[np.ndarray], chunk: int = 5
) -> list[list[float]]:
    """Per-study latencies of each of ``fns``, taking turns every ``chunk`` studies.

    Not study by study: onnxruntime's threads busy-wait for a while after a run (in process,
    by default), and would then slow the other path's next request down."""
    times: list[list[float]] = [[] for _ in fns]
    for start in range(0, len(inputs), chunk):
        for fn, out in zip(fns, times, strict=True):
            for v in inputs[start : start + chunk]:
                t0 = time.perf_counter()
                fn(v)
                out.append(time.perf_counter() - t0)
    return times


def concurrent(
    make_fn: Callable[[], Callable[[np.ndarray], Any]], inputs: list[np.ndarray], threads: int
) -> float:
    """Studies per second with ``threads`` callers sharing ``inputs``."""
    chunks = [inputs[i::threads] for i in range(threads)]
    fns = [make_fn() for _ in range(threads)]
    errors: list[BaseException] = []

    def work(fn: Callable[[np.ndarray], Any], chunk: list[np.ndarray]) -> None:
        try:
            for v in chunk:
                fn(v)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(f, c)) for f, c in zip(fns, chunks, strict=True)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return len(inputs) / elapsed


def bench_models(
    triton: LocalTriton, n: int, threads: int, work: Path, ort_defaults: bool = False
) -> None:
    print(f"\n== Triton vs in process: {n} studies per model, {threads} threads for throughput")
    header = f"{'model':<5} {'path':<10} {'p50 ms':>8} {'p95 ms':>8} {'studies/s':>10}"
    for model in ("ich", "pe"):
        inputs = make_inputs(model, n, work)
        label, local = in_process_runner(model, ort_defaults)

        shm = InferenceClient(triton.grpc_url, "grpc", timeout=60, models_dir=MODELS)
        net = InferenceClient(
            triton.grpc_url, "grpc", timeout=60, models_dir=MODELS, shared_memory=False
        )
        paths: list[tuple[str, Callable[[np.ndarray], Any]]] = [
            ("triton", lambda v, c=shm, m=model: c.infer(m, v)),
            ("triton-net", lambda v, c=net, m=model: c.infer(m, v)),
            ("in-proc", local),
        ]
        try:
            for _name, fn in paths:
                fn(inputs[0])  # warm-up (the engine does the same at start)
            lats = sequential([fn for _name, fn in paths], inputs)
            tps = [concurrent(lambda fn=fn: fn, inputs, threads) for _name, fn in paths]
            assert shm.uses_shared_memory, "the shared-memory path fell back to the network"
        finally:
            shm.close()
            net.close()
        print(f"\n{model}: in process = {label}")
        print(header)
        for (name, _fn), lat, tp in zip(paths, lats, tps, strict=True):
            print(
                f"{model:<5} {name:<10} {1000 * pct(lat, 50):8.1f} {1000 * pct(lat, 95):8.1f} "
                f"{tp:10.2f}"
            )
        local_p50 = pct(lats[2], 50)
        for (name, _fn), lat in zip(paths[:2], lats[:2], strict=False):
            ratio = pct(lat, 50) / local_p50
            verdict = "within" if ratio <= 1.2 else "NOT within"
            print(
                f"{model}: {name} p50 / in-process p50 = {ratio:.2f}x ({verdict} the 1.2x target)"
            )


def bench_300(triton: LocalTriton, work: Path, repeats: int) -> None:
    print("\n== Study complete -> result: 300-slice head CT (0.625 mm, 512 x 512)")
    t0 = time.perf_counter()
    study = ct.write_head_ct(
        work / "head300",
        hemorrhage=True,
        seed=7,
        patient_id="B300",
        accession="B300",
        n_slices=300,
        slice_thickness=0.625,
    )
    print(f"(generated {len(study.files)} files in {time.perf_counter() - t0:.1f} s; not timed)")
    rows = instance_rows(study.files)
    contract = load_contract(MODELS / "ich" / "config.pbtxt")
    client = InferenceClient(triton.grpc_url, "grpc", timeout=60, models_dir=MODELS)
    client.warm_up(["ich"])
    analyzer = TritonAnalyzer(work / "data", MODELS)
    analyzer.attach(client)
    steps: dict[str, list[float]] = {}
    for _ in range(repeats):
        marks = [("start", time.perf_counter())]
        series = select_series(rows)
        marks.append(("series selection", time.perf_counter()))
        volume = load_volume([Path(r.path) for r in series])
        marks.append(("DICOM read + HU", time.perf_counter()))
        grid = resample(volume, contract.input_shape, contract.z_resampling)
        marks.append(("resample", time.perf_counter()))
        check_input(InputLimits.from_parameters("ich", contract.parameters), series, volume, grid)
        marks.append(("input checks", time.perf_counter()))
        out = client.infer("ich", grid)
        marks.append(("inference (Triton)", time.perf_counter()))
        analyzer._key_image(contract, out, volume, out.key_slice, series)
        marks.append(("key image", time.perf_counter()))
        for (_, a), (name, b) in itertools.pairwise(marks):
            steps.setdefault(name, []).append(b - a)
        steps.setdefault("total (steps)", []).append(marks[-1][1] - marks[0][1])
        t0 = time.perf_counter()
        result = analyzer.analyze("ich", rows)
        steps.setdefault("total (analyzer.analyze)", []).append(time.perf_counter() - t0)
    print(f"result: {result.status} p={result.probability} version {result.model_version}")
    print(f"{'step':<28} {'median s':>9}  (of {repeats} runs)")
    for name, values in steps.items():
        print(f"{name:<28} {statistics.median(values):9.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", type=int, default=20, help="studies per model (default 20)")
    ap.add_argument("--concurrency", type=int, default=4, help="threads for throughput")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the 300-slice study")
    ap.add_argument("--skip-300", action="store_true", help="leave out the 300-slice study")
    ap.add_argument(
        "--ort-defaults",
        action="store_true",
        help="in-process session with onnxruntime's default options instead of model.py's",
    )
    args = ap.parse_args()
    print(f"CPU: {os.cpu_count()} cores visible; no GPU (Triton and onnxruntime on CPU)")
    print("Synthetic phantoms; models trained on synthetic phantoms; not for clinical use.")
    with tempfile.TemporaryDirectory(prefix="bench_inference_") as tmp:
        work = Path(tmp)
        triton = LocalTriton(MODELS, work / "triton", 120)
        t0 = time.perf_counter()
        triton.start()
        print(f"Triton (bundled, CPU) ready in {time.perf_counter() - t0:.1f} s")
        try:
            bench_models(triton, args.n, args.concurrency, work, args.ort_defaults)
            if not args.skip_300:
                bench_300(triton, work, args.repeats)
        finally:
            triton.stop()


if __name__ == "__main__":
    main()
