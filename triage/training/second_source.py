"""Training phantoms from a second, independently written painter (:mod:`triage.crosscheck`,
painter "a": ``head.py`` / ``chest.py``), beside those of :mod:`triage.synth.ct`.

A network that has seen only one generator learns that generator's habits (its exact
shapes, textures and HU) along with the findings; phantoms from a painter written apart from
it, from the radiology alone, vary everything the first one fixes. They are brought onto the
model grid the way the engine brings a study: slices thinner than the contract's minimum
read as slabs (:func:`triage.inference.slabs.thicken`), then
:func:`~triage.inference.volume.resample`; the lesion mask the same way, as the fraction of
each model voxel that is lesion.

Once a model is trained on painter "a", that painter no longer gives an independent look at
it: ``triage models crosscheck`` then uses painter "b" (``head_b.py`` / ``chest_b.py``),
written apart from both. Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from triage.crosscheck import PAINTERS
from triage.synth.ct import Task, model_shape, z_resampling
from triage.training.data import (
    CACHE_FORMAT,
    LOC_SHAPE,
    Dataset,
    _save,
    cached,
    source_key,
    targets,
    worker_map,
)

log = logging.getLogger(__name__)

PAINTER = "a"  # triage.crosscheck.PAINTERS: the painter that trains; "b" stays independent
REPO = Path(__file__).resolve().parents[2]
SOURCES = (
    *(m.replace(".", "/") + ".py" for m in PAINTERS[PAINTER].values()),
    "triage/crosscheck/dicomio.py",
    "triage/crosscheck/study.py",
    "triage/inference/volume.py",
    "triage/inference/slabs.py",
    "triage/training/second_source.py",
)


@functools.cache
def min_thickness(task: Task) -> float | None:
    """The thinnest slice the shipped contract of ``task`` takes (``min_slice_thickness_mm``
    in models/<task>/config.pbtxt): a thinner painted series is read as slabs, as the engine
    reads it."""
    from triage.inference.checks import InputLimits
    from triage.inference.contract import load_contract

    contract = load_contract(REPO / "models" / task / "config.pbtxt")
    return InputLimits.from_parameters(task, contract.parameters).min_slice_thickness_mm


def labels_for(seed0: int, n: int, positive_fraction: float) -> np.ndarray:
    """Exactly ``round(n * positive_fraction)`` positives, in an order drawn from the seeds."""
    out = np.zeros(n, bool)
    k = round(n * positive_fraction)
    out[np.random.default_rng([seed0, n]).permutation(n)[:k]] = True
    return out


def on_model_grid(painted: Any, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """A painted study (:class:`triage.crosscheck.study.Painted`: slice 0 the most superior)
    on ``task``'s model grid as the engine would read it: (HU float32, lesion fraction
    float32), both [z, y, x], inferior -> superior."""
    from triage.inference.slabs import thicken
    from triage.inference.volume import Volume, resample

    acq = painted.acq
    n = painted.hu.shape[0]
    z = (acq.z_top - np.arange(n) * acq.spacing_z)[::-1].astype(np.float64)

    def volume(a: np.ndarray) -> Volume:
        return Volume(
            hu=np.ascontiguousarray(a[::-1], dtype=np.float32),
            z_positions=z,
            pixel_spacing=(acq.pixel_spacing, acq.pixel_spacing),
            slice_thickness=acq.slice_thickness,
            series_uid="",
        )

    shape, mode = model_shape(task), z_resampling(task)
    hu, _ = thicken(volume(painted.hu), min_thickness(task))
    les, _ = thicken(volume(painted.lesion), min_thickness(task))
    return resample(hu, shape, mode), resample(les, shape, mode)


def _one(
    job: tuple[Task, int, bool],
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], tuple[str, ...]]:
    task, seed, label = job
    painter = importlib.import_module(PAINTERS[PAINTER][task])
    p = painter.paint(seed, label)
    hu, lesion = on_model_grid(p, task)
    return hu.astype(np.float16), lesion, tuple(p.kinds), tuple(p.notes)


def sources() -> list[Path]:
    return sorted(p for pattern in SOURCES for p in REPO.glob(pattern))


def generate_second(
    task: Task,
    seed0: int,
    n: int,
    positive_fraction: float,
    workers: int = 2,
    cache_dir: Path | None = None,
) -> Dataset:
    """``n`` phantoms of the second painter (seeds ``seed0 ..``), on the model grid; cached
    under ``cache_dir`` like :func:`triage.training.data.generate`."""
    cache = None
    if cache_dir is not None:
        shape = "x".join(str(d) for d in model_shape(task))
        key = source_key(sources())
        name = f"{task}-a-{seed0}-{n}-{positive_fraction:g}-{shape}-{CACHE_FORMAT}-{key}"
        cache = Path(cache_dir) / name
        if (hit := cached(task, cache)) is not None:
            return hit
    labels = labels_for(seed0, n, positive_fraction)
    jobs = [(task, seed0 + i, bool(labels[i])) for i in range(n)]
    grid = model_shape(task)
    volumes = np.zeros((n, *grid), np.float16)
    slice_t = np.zeros((n, grid[0]), np.float32)
    loc_t = np.zeros((n, *LOC_SHAPE), np.float32)
    kinds: list[tuple[str, ...]] = []
    notes: list[tuple[str, ...]] = []
    with worker_map(_one, jobs, workers, chunksize=2) as results:
        for i, (hu, lesion, k, m) in enumerate(results):
            volumes[i] = hu
            slice_t[i], loc_t[i] = targets(lesion)
            kinds.append(k)
            notes.append(m)
            if (i + 1) % 50 == 0:
                log.info("%s: second painter %d/%d phantoms", task, i + 1, n)
    ds = Dataset(
        task,
        np.arange(seed0, seed0 + n, dtype=np.int64),
        volumes,
        labels.astype(np.float32),
        slice_t,
        loc_t,
        kinds,
        notes,
        np.zeros(n, np.float32),
    )
    if cache is not None:
        _save(ds, cache)
    return ds


def joined(a: Dataset, b: Dataset) -> Dataset:
    """``a`` followed by ``b`` (same task), in memory."""
    if a.task != b.task:
        raise ValueError(f"cannot join {a.task} and {b.task} phantoms")
    return Dataset(
        a.task,
        np.concatenate([a.seeds, b.seeds]),
        np.concatenate([np.asarray(a.volumes), np.asarray(b.volumes)]),
        np.concatenate([a.labels, b.labels]),
        np.concatenate([a.slice_targets, b.slice_targets]),
        np.concatenate([a.loc_targets, b.loc_targets]),
        [*a.subtypes, *b.subtypes],
        [*a.mimics, *b.mimics],
        np.concatenate([a.lesion_size_mm, b.lesion_size_mm]),
    )
