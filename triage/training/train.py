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
from triage.training.augment import Augmentation
from triage.training.data import TRAIN_SEED0, TUNE_SEED0, Dataset, generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    task: Task
    n_train: int = 700
    n_tune: int = 160
    train_positive_fraction: float = 0.5
    steps: int = 3000  # optimiser steps, each on batch_size crops
    batch_size: int = 8
    crop_slices: int = 32  # crop depth on the model grid (multiple of 4)
    crop_size: int = 32  # crop side on the 64 x 64 feature grid (even; 64 = whole)
    lesion_crop_fraction: float = 0.8  # positives: share of crops centred on a lesion cell
    hard_crop_fraction: float = 0.5  # negatives: share centred on the net's highest cell
    mine_every: int = 250  # steps between re-scoring the negatives (hard-negative mining)
    width: int = 12
    lr: float = 3e-3
    threads: int = 2
    seed: int = 0
    target_specificity: float = 0.90  # on the tuning set (operating point, see choose_threshold)
    # domain randomisation (triage.training.augment): the share of training phantoms whose
    # features are computed on an augmented copy; and whether calibration and the operating
    # point also see one augmented copy of each tuning phantom beside the phantom itself
    # (ich-synthcnn-3.1 and later, pe-synthcnn-3.0 were trained so)
    augment_fraction: float = 0.6
    tune_augmented: bool = True
    # share of the augmented training phantoms that also get the field a real skull leaves
    # inside it (triage.training.augment.skull_field); the tuning copies never do
    skull_field: float = 0.0
    # share of the augmented training phantoms whose calcifications inside the skull are made
    # faint (triage.training.augment.fade_calcifications); the tuning copies never are
    faint_calcifications: float = 0.0
    front: str = "fixed"  # the network's fixed feature channels (triage.training.nets.FRONT_ENDS)
    # what paints the training and tuning phantoms (triage.synth.ct.PhantomSpec.generator)
    generator: int = 3
    # training phantoms painted by the second, independently written painter
    # (triage.training.second_source), on top of the n_train of triage.synth.ct; the tuning
    # set gets as many more in proportion (n_tune * n_second / n_train)
    n_second: int = 0


@dataclass(frozen=True)
class TrainResult:
    task: Task
    seconds: float
    steps: int
    threshold: float
    tune_sensitivity: float
    tune_specificity: float
    tune_auc: float  # on the tuning set the operating point was chosen on (with its copies)
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


def fit(cfg: TrainConfig, train: Dataset, log_every: int = 250):  # type: ignore[no-untyped-def]
    """Train a :class:`~triage.training.nets.Detector` on ``train``; returns (net, last loss).

    The network's fixed feature channels are computed once per phantom (float16, ~6 MB each);
    each step then trains the learned part on ``batch_size`` crops of ``crop_slices`` x
    ``crop_size`` x ``crop_size`` feature cells: for a positive phantom, most crops contain a
    lesion cell (``lesion_crop_fraction``), the others are anywhere. A crop's label is whether
    it holds a lesion cell. The network is convolutional, so the whole volume is scored the
    same way at inference (maximum over the localisation map)."""
    torch = _require_torch()
    import torch.nn.functional as F

    from triage.training.nets import Detector

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    net = Detector(cfg.task, cfg.width, front=cfg.front)
    t0 = time.monotonic()
    feats, raws = features_of(
        net,
        train.volumes,
        cfg.augment_fraction,
        cfg.seed,
        keep_raw=net.learned,
        aug=Augmentation(
            p_skull_field=cfg.skull_field, p_faint_calcifications=cfg.faint_calcifications
        ),
    )  # [N, Z, C, G, G]; the learned front end: normalised HU [N, Z, Y, X] too
    log.info("%s: features of %d phantoms in %.0f s", cfg.task, len(train), time.monotonic() - t0)
    n, depth, grid = feats.shape[0], feats.shape[1], feats.shape[-1]
    cz, cs = min(cfg.crop_slices, depth), min(cfg.crop_size, grid)
    if cz % 4 or cs % 2:
        raise ValueError("crop_slices must be a multiple of 4 and crop_size even")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1
    )
    rng = np.random.default_rng(cfg.seed)
    negatives = np.flatnonzero(train.labels <= 0.5)
    hardest: dict[int, np.ndarray] = {}  # negative phantom -> its highest-scoring cell

    def mine() -> None:
        """Score every negative phantom whole; remember where the net is most wrong."""
        net.eval()
        with torch.no_grad():
            for i in negatives:
                x = torch.from_numpy(feats[i].astype(np.float32))
                r = None if raws is None else torch.from_numpy(raws[i : i + 1].astype(np.float32))
                loc = net.head(x, 1, depth, r)[2][0].numpy()
                hardest[int(i)] = np.array(np.unravel_index(int(loc.argmax()), loc.shape))
        net.train()

    def crop(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, np.ndarray | None]:
        cells = train.loc_targets[i]  # [Z/4, G/2, G/2]; a cell is 4 slices x 2 x 2 here
        c: np.ndarray | None = None
        if train.labels[i] > 0.5 and cells.any() and rng.random() < cfg.lesion_crop_fraction:
            hits = np.argwhere(cells > 0.5)
            c = hits[rng.integers(len(hits))]
        elif i in hardest and rng.random() < cfg.hard_crop_fraction:
            c = hardest[i]
        if c is not None:
            z0 = int(np.clip((c[0] - rng.integers(0, cz // 4)) * 4, 0, depth - cz))
            y0 = int(np.clip((c[1] - rng.integers(0, cs // 2)) * 2, 0, grid - cs))
            x0 = int(np.clip((c[2] - rng.integers(0, cs // 2)) * 2, 0, grid - cs))
        else:
            z0 = int(rng.integers(0, (depth - cz) // 4 + 1)) * 4
            y0 = int(rng.integers(0, (grid - cs) // 2 + 1)) * 2
            x0 = int(rng.integers(0, (grid - cs) // 2 + 1)) * 2
        f = feats[i, z0 : z0 + cz, :, y0 : y0 + cs, x0 : x0 + cs]
        loc = cells[z0 // 4 : (z0 + cz) // 4, y0 // 2 : (y0 + cs) // 2, x0 // 2 : (x0 + cs) // 2]
        slices = np.repeat(loc.any(axis=(1, 2)), 4).astype(np.float32)
        r = None
        if raws is not None:
            k = raws.shape[-1] // grid
            r = raws[i, z0 : z0 + cz, k * y0 : k * (y0 + cs), k * x0 : k * (x0 + cs)]
        return f, loc, slices, float(loc.any()), r

    net.train()
    t0 = time.monotonic()
    running = 0.0
    for step in range(cfg.steps):
        if cfg.mine_every and step and step % cfg.mine_every == 0:
            mine()
        batch = [crop(int(i)) for i in rng.integers(0, n, cfg.batch_size)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]).astype(np.float32))
        yl = torch.from_numpy(np.stack([b[1] for b in batch]))
        ys = torch.from_numpy(np.stack([b[2] for b in batch]))
        y = torch.tensor([b[3] for b in batch], dtype=torch.float32)
        raw = None
        if raws is not None:
            raw = torch.from_numpy(np.stack([b[4] for b in batch if b[4] is not None]))
            raw = raw.float()
        if rng.random() < 0.5:  # left-right flip (the features are symmetric)
            x, yl = x.flip(-1), yl.flip(-1)
            raw = None if raw is None else raw.flip(-1)
        b = x.shape[0]
        study, slices, loc = net.head(x.reshape(b * cz, *x.shape[2:]), b, cz, raw)
        loss = (
            F.binary_cross_entropy_with_logits(study, y)
            + 0.5 * balanced_bce(slices, ys)
            + balanced_bce(loc, yl)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        running = 0.95 * running + 0.05 * value if step else value
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            log.info(
                "%s step %d/%d loss %.4f (%.0f s)",
                cfg.task,
                step + 1,
                cfg.steps,
                running,
                time.monotonic() - t0,
            )
    net.eval()
    return net, running


def features_of(  # type: ignore[no-untyped-def]
    net,
    volumes: np.ndarray,
    augment_fraction: float = 0.0,
    seed: int = 0,
    keep_raw: bool = False,
    aug: Augmentation | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The fixed feature channels of ``volumes`` [N, Z, Y, X], float16 [N, Z, C, Y/2, X/2];
    of an augmented copy (:func:`triage.training.augment.augment`) for a share
    ``augment_fraction`` of them (drawn per phantom from ``seed`` and its index); and with
    ``keep_raw``, the normalised HU of the same (augmented) volumes, float16 [N, Z, Y, X]."""
    from triage.training.augment import augment

    aug = aug if aug is not None else Augmentation()
    torch = _require_torch()
    out: np.ndarray | None = None
    raw = np.zeros((0,), np.float16)
    with torch.no_grad():
        for i in range(len(volumes)):
            a = np.asarray(volumes[i], dtype=np.float32)
            rng = np.random.default_rng([seed, i, 17])
            if augment_fraction > 0.0 and rng.random() < augment_fraction:
                a = augment(a, rng, aug)[0]
            v = torch.from_numpy(a[None])
            f = net.features(v)
            if out is None:
                out = np.zeros((len(volumes), v.shape[1], *f.shape[1:]), np.float16)
                if keep_raw:
                    raw = np.zeros((len(volumes), *v.shape[1:]), np.float16)
            out[i] = f.numpy().astype(np.float16)
            if keep_raw:
                raw[i] = net.normalise(v)[0].numpy().astype(np.float16)
    if out is None:
        return np.zeros((0,), np.float16), None
    return out, (raw if keep_raw else None)


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


def predict(net, volumes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Study probabilities of ``volumes`` [N, z, y, x] with a trained (PyTorch) net."""
    return _sigmoid(study_logits(net, volumes)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def fit_platt(logits: np.ndarray, labels: np.ndarray, ridge: float = 0.05) -> tuple[float, float]:
    """(a, b) of the logistic recalibration ``sigmoid(a * logit + b)`` that minimises the
    binary cross-entropy on (logits, labels), with a small ridge pulling (a, b) toward
    (1, 0) so that separable data cannot drive ``a`` to infinity (Newton's method)."""
    x = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    a, b = 1.0, 0.0
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        r = p - y
        w = p * (1.0 - p)
        grad = np.array([r @ x + ridge * (a - 1.0), r.sum() + ridge * b])
        hess = np.array([[w @ (x * x) + ridge, w @ x], [w @ x, w.sum() + ridge]], dtype=np.float64)
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
        if float(np.abs(step).max()) < 1e-9:
            break
    return a, b


def study_logits(net, volumes: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The study logit (before the sigmoid) of each of ``volumes`` [N, z, y, x]."""
    torch = _require_torch()
    logits = []
    with torch.no_grad():
        for i in range(len(volumes)):
            v = torch.from_numpy(np.asarray(volumes[i : i + 1], dtype=np.float32))
            logits.append(float(net(v)[0][0]))
    return np.array(logits, np.float64)


def calibrate(net, tune: Dataset, logits: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Fold a Platt recalibration, fitted on the tuning set (``logits``: the net's study
    logits of ``tune``, :func:`study_logits`), into the net's study scale and bias: the
    exported ``probability`` is then calibrated (what the scorer receives), and equals
    ``sigmoid(a * logits + b)`` without running the net again."""
    torch = _require_torch()
    a, b = fit_platt(logits, tune.labels)
    with torch.no_grad():
        net.study_scale.mul_(a)
        net.study_bias.mul_(a).add_(b)
    return a, b


def with_augmented_copies(data: Dataset, seed: int) -> Dataset:
    """``data`` followed by one augmented copy of each of its phantoms (same labels)."""
    from dataclasses import replace

    from triage.training.augment import augment

    copies = np.zeros(data.volumes.shape, np.float16)
    for i in range(len(data)):
        rng = np.random.default_rng([seed, i, 29])
        copies[i] = augment(np.asarray(data.volumes[i], np.float32), rng)[0].astype(np.float16)

    def twice(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, a])

    return replace(
        data,
        seeds=twice(data.seeds),
        volumes=np.concatenate([np.asarray(data.volumes), copies]),
        labels=twice(data.labels),
        slice_targets=twice(data.slice_targets),
        loc_targets=twice(data.loc_targets),
        subtypes=data.subtypes * 2,
        mimics=data.mimics * 2,
        lesion_size_mm=twice(data.lesion_size_mm),
    )


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
    t0 = time.monotonic()
    log.info("%s: generating %d training phantoms (seeds %d..)", cfg.task, cfg.n_train, TRAIN_SEED0)
    train = generate(
        cfg.task,
        TRAIN_SEED0,
        cfg.n_train,
        cfg.train_positive_fraction,
        workers,
        cache_dir,
        cfg.generator,
    )
    tune = generate(cfg.task, TUNE_SEED0, cfg.n_tune, 0.3, workers, cache_dir, cfg.generator)
    if cfg.n_second:
        from triage.training.second_source import generate_second, joined

        n_tune_second = round(cfg.n_tune * cfg.n_second / cfg.n_train)
        log.info(
            "%s: %d + %d phantoms of the second painter", cfg.task, cfg.n_second, n_tune_second
        )
        train = joined(
            train,
            generate_second(
                cfg.task, TRAIN_SEED0, cfg.n_second, cfg.train_positive_fraction, workers, cache_dir
            ),
        )
        tune = joined(
            tune, generate_second(cfg.task, TUNE_SEED0, n_tune_second, 0.3, workers, cache_dir)
        )
    log.info("%s: data ready in %.0f s; training", cfg.task, time.monotonic() - t0)
    net, loss = fit(cfg, train)
    return finish_task(cfg, net, loss, tune, models_dir, t0)


def finish_task(  # type: ignore[no-untyped-def]
    cfg: TrainConfig, net, loss: float, tune: Dataset, models_dir: Path, started: float
) -> TrainResult:
    """Operating point on the tuning set, ONNX export, config.pbtxt and training.json for a
    trained ``net``. ``started``: ``time.monotonic()`` when the task began; the result's
    ``seconds`` is the whole wall time, data, tuning and export included."""
    from triage.training.export import (
        candidate_version,
        export_onnx,
        seed_model_dir,
        write_config,
    )
    from triage.training.metrics import auc as roc_auc

    if cfg.tune_augmented:
        tune = with_augmented_copies(tune, cfg.seed)
        log.info("%s: tuning set and an augmented copy of each: %d", cfg.task, len(tune))
    logits = study_logits(net, tune.volumes)  # one pass: calibration and operating point
    a, b = calibrate(net, tune, logits)
    log.info("%s: calibration on the tuning set: logit x %.3f %+.3f", cfg.task, a, b)
    prob = _sigmoid(a * logits + b)
    thr = choose_threshold(prob, tune.labels, cfg.target_specificity)
    pos = tune.labels > 0.5
    sens = float((prob[pos] >= thr).mean()) if pos.any() else float("nan")
    spec = float((prob[~pos] < thr).mean()) if (~pos).any() else float("nan")
    auc = roc_auc(prob, tune.labels)
    seed_model_dir(models_dir / cfg.task)  # a new repository: the shipped contract and runner
    onnx_path = export_onnx(net, models_dir / cfg.task / "1" / "model.onnx")
    version = candidate_version(cfg.task, asdict(cfg), models_dir)
    write_config(models_dir / cfg.task, threshold=thr, version=version)
    if version is not None:
        log.info("%s: a candidate outside models/: exported as %s", cfg.task, version)
    seconds = time.monotonic() - started
    result = TrainResult(cfg.task, seconds, cfg.steps, thr, sens, spec, auc, str(onnx_path), loss)
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
        "%s: done in %.0f s; threshold %.4f (tuning sens %.3f spec %.3f AUC %.3f)",
        cfg.task,
        seconds,
        thr,
        sens,
        spec,
        auc,
    )
    return result


# Optimiser steps per task (each on TrainConfig.batch_size crops); pe still improved from 3,000
# to 5,000 (tuning AUC 0.921 -> 0.925, sensitivity at specificity 0.90: 0.79 -> 0.83).
# ich-synthcnn-4.0 on generator 4 too: 3,000 -> 5,000 steps, tuning AUC 0.872 -> 0.884.
DEFAULT_STEPS: dict[str, int] = {"ich": 5000, "pe": 5000}
# Front end per task (triage.training.nets.FRONT_ENDS)
# (pe-synthcnn-3.1: "lumen", the enclosure taken on contrast only; docs/models.md)
DEFAULT_FRONT: dict[str, str] = {"ich": "fixed", "pe": "lumen"}
# the generator each task's shipped model was trained on (triage.synth.ct.PhantomSpec)
DEFAULT_GENERATOR: dict[str, int] = {"ich": 4, "pe": 5}
# training phantoms painted by the second painter (triage.training.second_source), per task
# (ich-synthcnn-4.1 and pe-synthcnn-3.1: 210, with 48 more tuning phantoms; docs/models.md)
DEFAULT_SECOND: dict[str, int] = {"ich": 210, "pe": 210}
# share of the augmented training phantoms with faint calcifications, per task
DEFAULT_FAINT_CALCIFICATIONS: dict[str, float] = {"ich": 0.0, "pe": 0.0}


def train_all(
    models_dir: Path,
    cache_dir: Path | None,
    tasks: tuple[Task, ...] = ("ich", "pe"),
    *,
    n_train: int = 700,
    steps: int | None = None,
    workers: int = 2,
    front: str | None = None,
    generator: int | None = None,
    n_second: int | None = None,
    faint_calcifications: float | None = None,
) -> list[TrainResult]:
    """Train ``tasks`` one after the other (``steps`` None: :data:`DEFAULT_STEPS`; ``front``
    None: :data:`DEFAULT_FRONT`; ``generator`` None: :data:`DEFAULT_GENERATOR`)."""
    results = []
    for t in tasks:
        cfg = TrainConfig(
            task=t,
            n_train=n_train,
            steps=steps or DEFAULT_STEPS[t],
            front=front or DEFAULT_FRONT[t],
            generator=generator or DEFAULT_GENERATOR[t],
            n_second=DEFAULT_SECOND[t] if n_second is None else n_second,
            faint_calcifications=(
                DEFAULT_FAINT_CALCIFICATIONS[t]
                if faint_calcifications is None
                else faint_calcifications
            ),
        )
        results.append(train_task(cfg, models_dir, cache_dir, workers))
    return results
