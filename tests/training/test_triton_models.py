"""The trained models served by the real Triton (bundled tritonserver, Python backend running
the ONNX with onnxruntime): READY, the contract's three outputs, and the expected side of the
threshold through the engine's InferenceClient."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from triage.inference.client import InferenceClient
from triage.inference.local_triton import LocalTriton

from .conftest import KNOWN_MISSES, MODELS_DIR, case_volumes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    repo = tmp_path_factory.mktemp("repo") / "models"
    for name in ("ich", "pe"):
        shutil.copytree(MODELS_DIR / name, repo / name,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    server = LocalTriton(repo, tmp_path_factory.mktemp("triton"), startup_seconds=120)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_models_ready_with_three_outputs(triton: LocalTriton) -> None:
    import tritonclient.grpc as tc

    with InferenceClient(triton.grpc_url, "grpc", timeout=60) as c:
        assert c.model_states() == {"ich": "READY", "pe": "READY"}
        contract = c.contract("pe")  # from the server's config
        assert contract.output("localization").dims == (16, 32, 32)
    client = tc.InferenceServerClient(triton.grpc_url)
    try:
        volume = case_volumes("pe")[0][0][None]
        inp = tc.InferInput("volume", list(volume.shape), "FP32")
        inp.set_data_from_numpy(volume)
        res = client.infer("pe", [inp], outputs=[tc.InferRequestedOutput("localization")])
        loc = res.as_numpy("localization")
        assert loc.shape == (1, 16, 32, 32) and loc.min() >= 0 and loc.max() <= 1
    finally:
        client.close()


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_expected_side_through_triton(triton: LocalTriton, task: str) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(MODELS_DIR / task / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    with InferenceClient(triton.grpc_url, "grpc", timeout=60, models_dir=MODELS_DIR) as c:
        for index, (volume, label, what) in enumerate(case_volumes(task)):
            out = c.infer(task, volume)
            if (task, index) not in KNOWN_MISSES:
                assert out.positive == label, (what, out.probability, out.threshold)
            assert out.model_version.startswith(f"{task}-synthcnn")
            local = sess.run(["probability"], {"volume": volume[None]})[0][0, 0]
            assert out.probability == pytest.approx(float(local), abs=1e-4)
            assert out.slice_probabilities.shape == (64,)
            assert np.isfinite(out.slice_probabilities).all()


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_non_finite_input_is_read_as_air(triton: LocalTriton, task: str) -> None:
    """model.py passes a finite input to onnxruntime without copying it, and replaces NaN by
    -1024 HU (and clips infinities) otherwise: a client other than ours may send them."""
    import tritonclient.grpc as tc

    volume = case_volumes(task)[0][0][None].copy()
    volume[0, 10, 20:30, 20:30] = np.nan
    volume[0, 11, 0, 0] = np.inf
    fixed = np.nan_to_num(volume, nan=-1024.0)
    client = tc.InferenceServerClient(triton.grpc_url)
    try:
        answers = []
        for v in (volume, fixed):
            inp = tc.InferInput("volume", list(v.shape), "FP32")
            inp.set_data_from_numpy(v)
            res = client.infer(task, [inp], outputs=[tc.InferRequestedOutput("probability")])
            answers.append(float(res.as_numpy("probability").reshape(-1)[0]))
    finally:
        client.close()
    assert np.isfinite(answers[0]) and answers[0] == pytest.approx(answers[1], abs=1e-6)
