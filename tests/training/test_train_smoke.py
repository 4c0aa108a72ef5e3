"""A few training steps on a handful of phantoms, export to ONNX, onnxruntime agrees with
PyTorch. Skipped when PyTorch (the optional `train` group) is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is the optional 'train' group: pip install -e '.[train]'"
)
pytest.importorskip("onnx", reason="ONNX export needs the 'onnx' package (train group)")


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_fit_export_and_agree(task: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from triage.synth.ct import model_shape
    from triage.training.data import generate, targets
    from triage.training.export import export_onnx
    from triage.training.train import (
        TrainConfig,
        calibrate,
        choose_threshold,
        fit,
        predict,
        study_logits,
    )

    grid = model_shape(task)  # ich 64 x 128 x 128, pe 64 x 256 x 256
    ds = generate(task, 800, 4, 0.5, workers=1)
    assert ds.volumes.shape == (4, *grid) and ds.labels.sum() == 2
    s, cells = targets(np.zeros(grid, np.float32))
    assert s.shape == (64,) and cells.shape == (16, 32, 32)
    cfg = TrainConfig(task=task, steps=3, batch_size=2, threads=1)
    net, loss = fit(cfg, ds, log_every=1)
    assert np.isfinite(loss)
    logits = study_logits(net, ds.volumes)
    a, b = calibrate(net, ds, logits)  # folded into the net's study scale and bias
    probs = predict(net, ds.volumes)
    assert probs.shape == (4,) and ((probs >= 0) & (probs <= 1)).all()
    # what the operating point is chosen on, without a second pass, is what the net now gives
    assert np.allclose(probs, 1.0 / (1.0 + np.exp(-(a * logits + b))), atol=1e-5)
    path = export_onnx(net, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vol = np.asarray(ds.volumes[:2], dtype=np.float32)
    p, sl, loc = sess.run(None, {"volume": vol})
    assert p.shape == (2, 1) and sl.shape == (2, 64) and loc.shape == (2, 16, 32, 32)
    assert np.allclose(p[:, 0], probs[:2], atol=1e-4)
    t = choose_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]), 0.9)
    assert 0.2 < t < 0.8
    t = choose_threshold(np.array([0.1, 0.3, 0.2, 0.9]), np.array([0, 0, 1, 1]), 0.5)
    assert 0.1 < t <= 0.2
