"""Train one detector per task on synthetic phantoms (CPU, fixed seeds), pick its operating
point on a separate tuning set, export ONNX into the model repository.

``triage models train`` runs :func:`train_all`. Reproducible: the phantoms come from fixed seed
ranges (:mod:`triage.training.data`), PyTorch is seeded, batches are drawn from a seeded
generator, and the number of threads is fixed. Trained on synthetic phantoms; not for clinical
use.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triage.synth.ct import Task
from triage.training.data import TRAIN_SEED0, TUNE_SEED0, Dataset, generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    task: Task
    n_train: int = 700
    n_tune: int = 160
    train_positive_fraction: float = 0.5
    epochs: float = 1.0
    batch_size: int = 4
    lr: float = 3e-3
    threads: int = 2
    seed: int = 0
    target_specificity: float = 0.90  # on the tuning set (operating point, see choose_threshold)


@dataclass(frozen=True)
class TrainResult:
    task: Task
    seconds: float
    steps: int
    threshold: float
    tune_sensitivity: float
    tune_specificity: float
    onnx_path: str
    final_loss: float


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the optional group
        raise SystemExit(
            "training needs PyTorch (optional group): .venv/bin/pip install -e '.[train]'"
        ) from exc
    return torch


def fit(cfg: TrainConfig, train: Dataset, log_every: int = 25):  # type: ignore[no-untyped-def]
    """Train a :class:`~triage.training.nets.Detector` on ``train``; returns (net, last loss)."""
    torch = _require_torch()
    import torch.nn.functional as F

    from triage.training.nets import Detector

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    net = Detector(cfg.task)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    n = len(train)
    steps = max(1, math.ceil(cfg.epochs * n / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15
    )
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(cfg.epochs) + 1)])
    net.train()
    t0 = time.monotonic()
    running = 0.0
    loss_value = float("nan")
    for step in range(steps):
        idx = np.sort(order[step * cfg.batch_size : (step + 1) * cfg.batch_size])
        vol = torch.from_numpy(np.asarray(train.volumes[idx], dtype=np.float32))
        y = torch.from_numpy(train.labels[idx])
        ys = torch.from_numpy(train.slice_targets[idx])
        yl = torch.from_numpy(train.loc_targets[idx])
        if rng.random() < 0.5:  # left-right flip
            vol, yl = vol.flip(-1), yl.flip(-1)
        study, slices, loc = net(vol)
        loss = (
            F.binary_cross_entropy_with_logits(study, y)
            + 0.5 * balanced_bce(slices, ys)
            + balanced_bce(loc, yl)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        running = 0.95 * running + 0.05 * loss_value if step else loss_value
        if (step + 1) % log_every == 0 or step + 1 == steps:
            log.info(
                "%s step %d/%d loss %.4f (%.0f s)",
                cfg.task,
                step + 1,
                steps,
                running,
                time.monotonic() - t0,
            )
    net.eval()
    return net, running


def balanced_bce(logits: Any, target: Any) -> Any:
    """Binary cross-entropy averaged over positive and negative elements separately, then
    summed: a lesion of a few cells weighs as much as the thousands of cells without one."""
    import torch.nn.functional as F

    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pos = target > 0.5
    loss = per[~pos].mean()
    if bool(pos.any()):
        loss = loss + per[pos].mean()
    return loss


def predict(net, volumes: np.ndarray, batch: int = 4) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Study probabilities of ``volumes`` [N, z, y, x] with a trained (PyTorch) net."""
    torch = _require_torch()
    out = []
    with torch.no_grad():
        for i in range(0, len(volumes), batch):
            v = torch.from_numpy(np.asarray(volumes[i : i + batch], dtype=np.float32))
            out.append(torch.sigmoid(net(v)[0]).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def choose_threshold(prob: np.ndarray, labels: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose specificity on (prob, labels) is >= ``specificity`` (halfway
    between the negative score it must exceed and the next higher score).

    Specificity first: a false positive moves a normal study up everyone's worklist, and a
    model that is not good enough shows it as low sensitivity, which the report publishes."""
    neg = np.sort(prob[labels <= 0.5])
    if neg.size == 0:
        return 0.5
    k = min(neg.size - 1, max(0, math.ceil(specificity * neg.size) - 1))
    t = float(neg[k])
    above = prob[prob > t]
    t = (t + float(above.min())) / 2.0 if above.size else t + 1e-4
    return float(np.clip(t, 1e-4, 0.9999))


def train_task(
    cfg: TrainConfig, models_dir: Path, cache_dir: Path | None, workers: int = 2
) -> TrainResult:
    from triage.training.export import export_onnx, write_config

    t0 = time.monotonic()
    log.info("%s: generating %d training phantoms (seeds %d..)", cfg.task, cfg.n_train, TRAIN_SEED0)
    train = generate(
        cfg.task, TRAIN_SEED0, cfg.n_train, cfg.train_positive_fraction, workers, cache_dir
    )
    tune = generate(cfg.task, TUNE_SEED0, cfg.n_tune, 0.3, workers, cache_dir)
    log.info("%s: data ready in %.0f s; training", cfg.task, time.monotonic() - t0)
    net, loss = fit(cfg, train)
    prob = predict(net, tune.volumes)
    thr = choose_threshold(prob, tune.labels, cfg.target_specificity)
    pos = tune.labels > 0.5
    sens = float((prob[pos] >= thr).mean()) if pos.any() else float("nan")
    spec = float((prob[~pos] < thr).mean()) if (~pos).any() else float("nan")
    onnx_path = export_onnx(net, models_dir / cfg.task / "1" / "model.onnx")
    seconds = time.monotonic() - t0
    result = TrainResult(
        cfg.task,
        seconds,
        math.ceil(cfg.epochs * cfg.n_train / cfg.batch_size),
        thr,
        sens,
        spec,
        str(onnx_path),
        loss,
    )
    write_config(models_dir / cfg.task, threshold=thr)
    (models_dir / cfg.task / "training.json").write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "result": asdict(result),
                "note": "trained on synthetic phantoms; not for clinical use",
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    log.info(
        "%s: done in %.0f s; threshold %.4f (tuning sens %.3f spec %.3f)",
        cfg.task,
        seconds,
        thr,
        sens,
        spec,
    )
    return result


# Passes over the training phantoms per task (more would help; see docs/models.md).
DEFAULT_EPOCHS: dict[str, float] = {"ich": 1.0, "pe": 1.0}


def train_all(
    models_dir: Path,
    cache_dir: Path | None,
    tasks: tuple[Task, ...] = ("ich", "pe"),
    *,
    n_train: int = 700,
    epochs: float | None = None,
    workers: int = 2,
) -> list[TrainResult]:
    """Train ``tasks`` one after the other (``epochs`` None: :data:`DEFAULT_EPOCHS`)."""
    results = []
    for t in tasks:
        cfg = TrainConfig(task=t, n_train=n_train, epochs=epochs or DEFAULT_EPOCHS[t])
        results.append(train_task(cfg, models_dir, cache_dir, workers))
    return results
