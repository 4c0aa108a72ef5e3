"""InferenceClient against a real tritonserver: contracts, answers on phantoms, error mapping."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from support.net import free_port
from support.paths import MODELS_DIR, model_repo

from triage.errors import InferenceError, ModelNotReady, TritonUnavailable
from triage.inference.client import InferenceClient, ModelOutput
from triage.inference.contract import load_contract
from triage.inference.local_triton import LocalTriton
from triage.inference.volume import load_volume, resample, select_series
from triage.training.train import DEFAULT_GENERATOR

from .phantoms import chest_cta, head_ct
from .test_volume import instance_rows

pytestmark = pytest.mark.integration

PROTOCOLS = ["grpc", "http"]


def _client(triton: LocalTriton, protocol: str, **kw: object) -> InferenceClient:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    return InferenceClient(url, protocol, timeout=30, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_ready_states_and_contracts(triton: LocalTriton, protocol: str) -> None:
    with _client(triton, protocol) as c:
        assert c.is_server_ready()
        assert c.model_states() == {"ich": "READY", "pe": "READY"}
        served = c.contract("ich")  # from the server's model config
    with _client(triton, protocol, models_dir=MODELS_DIR) as c:
        local = c.contract("ich")  # from models/ich/config.pbtxt
    assert served.source.startswith("triton:") and local.source.endswith("config.pbtxt")
    assert served.input_shape == local.input_shape == (64, 128, 128)
    assert served.threshold == local.threshold and served.version == local.version


def _served_version(model: str) -> str:
    return f"{load_contract(MODELS_DIR / model / 'config.pbtxt').version}/1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_outputs_follow_the_contract(triton: LocalTriton, protocol: str) -> None:
    """The client's reading of a model answer; how good the models are is tests/training's."""
    contract = load_contract(MODELS_DIR / "ich" / "config.pbtxt")
    with _client(triton, protocol, models_dir=MODELS_DIR) as c:
        outs = [
            c.infer("ich", head_ct(lesion_diameter_mm=d, lesion_hu=hu, seed=3))
            for d, hu in ((None, 0), (10, 55), (30, 85))
        ]
    for out in outs:
        assert isinstance(out, ModelOutput) and out.model_name == "ich"
        assert out.model_version == _served_version("ich")
        assert out.threshold == contract.threshold
        assert 0.0 <= out.probability <= 1.0
        assert out.positive == (out.probability >= contract.threshold)
        assert out.slice_probabilities.shape == (64,)
        assert ((out.slice_probabilities >= 0) & (out.slice_probabilities <= 1)).all()
        assert out.key_slice == int(np.argmax(out.slice_probabilities))
    normal, _, large = outs
    assert large.probability > normal.probability  # a 3 cm acute bleed scores above no bleed


def test_pe_answers_follow_the_contract(triton: LocalTriton) -> None:
    threshold = load_contract(MODELS_DIR / "pe" / "config.pbtxt").threshold
    with _client(triton, "grpc") as c:
        outs = [c.infer("pe", chest_cta(clot=clot, seed=1)) for clot in (True, False)]
    for out in outs:
        assert out.model_name == "pe" and out.model_version == _served_version("pe")
        assert 0.0 <= out.probability <= 1.0
        assert out.positive == (out.probability >= threshold)
        assert out.slice_probabilities.shape == (64,)


def test_concurrent_requests_are_batched_and_answered(triton: LocalTriton) -> None:
    vols = [head_ct(lesion_diameter_mm=20 if i % 2 else None, seed=i) for i in range(6)]
    with _client(triton, "grpc") as c:
        alone = [c.infer("ich", v).probability for v in vols]  # one request at a time
    results: dict[int, float] = {}

    def run(i: int) -> None:
        with _client(triton, "grpc") as c:
            results[i] = c.infer("ich", vols[i]).probability

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == list(range(6))
    # each answer belongs to its own request, batched or not
    assert [results[i] for i in range(6)] == pytest.approx(alone, abs=1e-4)


def test_synthetic_dicom_studies_end_to_end(triton: LocalTriton, tmp_path: Path) -> None:
    """The colleague's DICOM generator -> series selection -> HU volume -> Triton."""
    ct = pytest.importorskip("triage.synth.ct")
    cases = []
    for label in (True, False):
        head = ct.write_head_ct(
            tmp_path / f"head{label}", hemorrhage=label, seed=11, patient_id="P1", accession="A1"
        )
        cases.append(("ich", label, head.files))
        # painted by the generator pe learned from: pe-synthcnn-3.1 (generator 5) misses the
        # central embolus generator 3 paints for seed 11 (p 0.17; 3.0, generator 4: 0.45),
        # a known failure on chests drawn differently (models/pe/README.md)
        ctpa = ct.write_ctpa(
            tmp_path / f"ctpa{label}",
            embolus=label,
            seed=11,
            patient_id="P2",
            accession="A2",
            generator=DEFAULT_GENERATOR["pe"],
        )
        cases.append(("pe", label, ctpa.files))
    wrong: list[str] = []
    with _client(triton, "grpc", models_dir=MODELS_DIR) as c:
        for model, label, files in cases:
            series = select_series(instance_rows(files))
            volume = load_volume([Path(i.path) for i in series])
            contract = c.contract(model)
            out = c.infer(model, resample(volume, contract.input_shape, contract.z_resampling))
            assert out.model_name == model and out.slice_probabilities.shape == (64,)
            if out.positive != label:
                wrong.append(f"{out.model_version}: label {label}, p={out.probability:.3f}")
    assert not wrong, wrong


def test_unknown_model_is_not_ready(triton: LocalTriton, tmp_path: Path) -> None:
    with _client(triton, "grpc") as c, pytest.raises(ModelNotReady, match="nope"):
        c.contract("nope")
    # a contract on disk for a model the server does not serve: the infer call says so
    repo = model_repo(tmp_path, "ich")
    (repo / "ich").rename(repo / "ghost")
    cfg = repo / "ghost" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "ich"', 'name: "ghost"'))
    for protocol in PROTOCOLS:
        with _client(triton, protocol, models_dir=repo) as c, pytest.raises(ModelNotReady):
            c.infer("ghost", head_ct())


def test_bad_input_is_an_inference_error(triton: LocalTriton) -> None:
    with _client(triton, "grpc") as c:
        with pytest.raises(InferenceError, match="does not match"):
            c.infer("ich", np.zeros((32, 128, 128), np.float32))
        bad = head_ct()
        bad[0, 0, 0] = np.nan
        with pytest.raises(InferenceError, match="NaN"):
            c.infer("ich", bad)


def test_stopped_server_is_unavailable(tmp_path: Path) -> None:
    repo = model_repo(tmp_path, "ich")
    server = LocalTriton(repo, tmp_path / "work", 60)
    server.start()
    grpc_url, http_url = server.grpc_url, server.http_url
    try:
        with InferenceClient(grpc_url, "grpc", timeout=10, models_dir=repo) as c:
            assert c.infer("ich", head_ct()).probability < 0.5
    finally:
        server.stop()
    for url, protocol in ((grpc_url, "grpc"), (http_url, "http")):
        with InferenceClient(url, protocol, timeout=5, models_dir=repo) as c:  # type: ignore[arg-type]
            assert not c.is_server_ready()
            with pytest.raises(TritonUnavailable):
                c.model_states()
            with pytest.raises(TritonUnavailable):
                c.infer("ich", head_ct())


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_request_timeout_is_unavailable(protocol: str) -> None:
    """A peer that accepts TCP but never answers: the request timeout applies."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"127.0.0.1:{silent.getsockname()[1]}"
        with InferenceClient(url, protocol, timeout=0.5, models_dir=MODELS_DIR) as c:  # type: ignore[arg-type]
            t0 = time.monotonic()
            with pytest.raises(TritonUnavailable):
                c.infer("ich", head_ct())
            assert time.monotonic() - t0 < 10


def test_warm_up_runs_each_model(triton: LocalTriton) -> None:
    with _client(triton, "grpc", models_dir=MODELS_DIR) as c:
        timings = c.warm_up(["ich", "pe"])
    assert set(timings) == {"ich", "pe"} and all(0 < t < 30 for t in timings.values())


def test_analyzer_with_real_triton_stores_a_key_image(triton: LocalTriton, tmp_path: Path) -> None:
    """The trained models have a localisation output: key slice image with the overlay."""
    from triage.inference.analyze import TritonAnalyzer
    from triage.inference.keyimage import DISCLAIMER

    from .png_decode import read_png

    ct = pytest.importorskip("triage.synth.ct")
    study = ct.write_head_ct(
        tmp_path / "pos", hemorrhage=True, seed=11, patient_id="P", accession="A", size=256
    )
    analyzer = TritonAnalyzer(tmp_path / "data", MODELS_DIR)
    with _client(triton, "grpc", models_dir=MODELS_DIR) as c:
        analyzer.attach(c)
        a = analyzer.analyze("ich", instance_rows(study.files))
    assert a.status == "done" and a.model_version == _served_version("ich")
    rgb, text = read_png((tmp_path / "data" / a.key_image).read_bytes())
    assert rgb.shape[1] == 256 and rgb.shape[0] > 256
    assert DISCLAIMER in text["Description"] and "no localisation map" not in text["Description"]


def test_breaker_fails_fast_on_a_stopped_server(tmp_path: Path) -> None:
    from triage.inference.breaker import CircuitBreaker, RetryPolicy

    url = f"127.0.0.1:{free_port()}"  # nothing listens there
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=60)
    with InferenceClient(
        url,
        "grpc",
        timeout=5,
        models_dir=MODELS_DIR,
        retry=RetryPolicy(2, 0.01, 0.02),
        breaker=breaker,
    ) as c:
        with pytest.raises(TritonUnavailable):
            c.infer("ich", head_ct())
        assert breaker.state == "open"
        t0 = time.monotonic()
        with pytest.raises(TritonUnavailable, match="circuit breaker open"):
            c.infer("ich", head_ct())
        assert time.monotonic() - t0 < 0.5
