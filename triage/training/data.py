"""Training / tuning / validation data: synthetic phantoms on the model grid (in-memory path of
:mod:`triage.synth.ct`), with the targets the networks learn.

Seed ranges are disjoint by construction: training uses ``TRAIN_SEED0 + i``, operating-point
tuning ``TUNE_SEED0 + i`` and the held-out validation ``VALID_SEED0 + i`` (``i`` < 1,000,000), so
no validation study is ever seen in training. Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from triage.synth.ct import (
    PAINT_SIZE,
    ModelSample,
    PhantomSpec,
    Task,
    model_sample,
    model_shape,
    spec_set,
    z_resampling,
)
from triage.synth.ct.spec import GENERATORS

log = logging.getLogger(__name__)
J = TypeVar("J")
R = TypeVar("R")

# Part of every cache folder's name: bump it when what is cached changes for the same seeds
# (2: lesion sizes count the slices the in-memory path does not paint).
CACHE_FORMAT = "c2"
# What paints a cached phantom: its folder's name also carries a hash of these sources, so a
# change to the generator or the resampling (a fix, a new anatomy) never reuses phantoms
# painted by the code before it.
PAINTER_SOURCES = ("triage/synth/ct/*.py", "triage/inference/volume.py")

TRAIN_SEED0 = 1_000_000
TUNE_SEED0 = 3_000_000
VALID_SEED0 = 5_000_000
LOC_SHAPE = (16, 32, 32)  # coarse localisation grid: model grid / 4 on each axis
SLICE_TARGET_FRACTION = 0.1  # a model voxel with >= 10% lesion marks its slice / cell


@dataclass
class Dataset:
    """Volumes (float16 HU, [N, z, y, x] on the task's model grid) and targets for one task."""

    task: Task
    seeds: np.ndarray  # int64 [N]
    volumes: np.ndarray  # float16 [N, z, y, x]
    labels: np.ndarray  # float32 [N]
    slice_targets: np.ndarray  # float32 [N, z]
    loc_targets: np.ndarray  # float32 [N, 16, 32, 32]
    subtypes: list[tuple[str, ...]]
    mimics: list[tuple[str, ...]]
    lesion_size_mm: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def targets(lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slice target [z], localisation target [z/4, y/4, x/4]) of a lesion-fraction map."""
    hit = lesion >= SLICE_TARGET_FRACTION
    slices = hit.any(axis=(1, 2)).astype(np.float32)
    z, y, x = lesion.shape
    cells = hit.reshape(
        LOC_SHAPE[0],
        z // LOC_SHAPE[0],
        LOC_SHAPE[1],
        y // LOC_SHAPE[1],
        LOC_SHAPE[2],
        x // LOC_SHAPE[2],
    ).any(axis=(1, 3, 5))
    return slices, cells.astype(np.float32)


def _worker_init() -> None:
    """Phantom workers keep the memory they free for the next phantom instead of handing it
    back to the system: each phantom allocates and frees the same few hundred MB of arrays, and
    fresh pages from the kernel cost 15-20 % of the generation time (glibc's malloc, which
    gives large blocks their own mappings by default; elsewhere this does nothing)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-4, 0)  # M_MMAP_MAX: large blocks from the heap too
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap


@contextmanager
def worker_map(
    fn: Callable[[J], R], jobs: Sequence[J], workers: int, chunksize: int = 4
) -> Iterator[Iterator[R]]:
    """``fn`` of each job in order: in a pool of ``workers`` phantom processes
    (:func:`_worker_init`; at most the CPUs there are), or in this process for one worker.
    The pool lives as long as the ``with`` block."""
    workers = max(1, min(workers, os.cpu_count() or 1))
    if workers <= 1:
        yield map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        yield pool.map(fn, jobs, chunksize=chunksize)


def cached(task: Task, folder: Path | None) -> Dataset | None:
    """The data set cached in ``folder`` (mapped, not read), or None when there is none."""
    if (
        folder is not None
        and (folder / "meta.npz").is_file()
        and (folder / "volumes.npy").is_file()
    ):
        return _load(task, folder)
    return None


def _one(args: tuple[PhantomSpec, int]) -> ModelSample:
    spec, seed = args
    return model_sample(spec, seed, model_shape(spec.task))


def painter_sources() -> list[Path]:
    """The source files of :data:`PAINTER_SOURCES` (in the installed package)."""
    root = Path(__file__).resolve().parents[2]
    return sorted(p for pattern in PAINTER_SOURCES for p in root.glob(pattern))


def source_key(paths: list[Path]) -> str:
    """Eight hex digits that change when any of ``paths`` (names or bytes) changes."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:8]


def generate(
    task: Task,
    seed0: int,
    n: int,
    positive_fraction: float,
    workers: int = 2,
    cache_dir: Path | None = None,
    generator: int = 3,
) -> Dataset:
    """``n`` phantoms with seeds ``seed0 .. seed0 + n - 1`` painted by ``generator``
    (:attr:`~triage.synth.ct.PhantomSpec.generator`), cached as .npy/.npz when ``cache_dir``
    is given: the same arguments load the same data."""
    cache = None
    if cache_dir is not None:
        shape = "x".join(str(d) for d in model_shape(task))
        z = "" if z_resampling(task) == "linear" else f"-z{z_resampling(task)}"
        gen = "" if generator == 3 else f"-g{generator}"
        name = (
            f"{task}-{seed0}-{n}-{positive_fraction:g}-{shape}-p{PAINT_SIZE}{z}{gen}-{CACHE_FORMAT}"
            f"-{source_key(painter_sources())}"
        )
        cache = Path(cache_dir) / name
        if (hit := cached(task, cache)) is not None:
            return hit
    seeds = list(range(seed0, seed0 + n))
    specs = spec_set(task, seeds, positive_fraction, generator)
    grid = model_shape(task)
    volumes = np.zeros((n, *grid), dtype=np.float16)
    labels = np.zeros(n, np.float32)
    slice_t = np.zeros((n, grid[0]), np.float32)
    loc_t = np.zeros((n, *LOC_SHAPE), np.float32)
    sizes = np.zeros(n, np.float32)
    subtypes: list[tuple[str, ...]] = []
    mimics: list[tuple[str, ...]] = []
    jobs = list(zip(specs, seeds, strict=True))
    with worker_map(_one, jobs, workers) as samples:
        _fill(samples, volumes, labels, slice_t, loc_t, sizes, subtypes, mimics, n)
    ds = Dataset(
        task, np.array(seeds, np.int64), volumes, labels, slice_t, loc_t, subtypes, mimics, sizes
    )
    if cache is not None:
        _save(ds, cache)
    return ds


def _fill(samples, volumes, labels, slice_t, loc_t, sizes, subtypes, mimics, n) -> None:  # type: ignore[no-untyped-def]
    for i, s in enumerate(samples):
        volumes[i] = s.volume.astype(np.float16)
        labels[i] = float(s.label)
        slice_t[i], loc_t[i] = targets(s.lesion)
        sizes[i] = s.lesion_size_mm
        subtypes.append(s.spec.subtypes)
        mimics.append(s.spec.mimics)
        if (i + 1) % 100 == 0:
            log.info("generated %d/%d phantoms", i + 1, n)


def trained_generator(models_dir: Path, task: str) -> int:
    """The phantom generator ``task``'s model in ``models_dir`` was trained on (its
    training.json; 3, the generator before the setting existed, when it does not say), so
    that validation and the stress suite paint what it learned from."""
    import json

    try:
        config = json.loads((Path(models_dir) / task / "training.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return 3
    value = config.get("generator", 3) if isinstance(config, dict) else 3
    return int(value) if value in GENERATORS else 3


def _save(ds: Dataset, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "volumes.npy", ds.volumes)
    np.savez(
        folder / "meta.npz",
        seeds=ds.seeds,
        labels=ds.labels,
        slice_targets=ds.slice_targets,
        loc_targets=ds.loc_targets,
        lesion_size_mm=ds.lesion_size_mm,
        subtypes=np.array(["|".join(s) for s in ds.subtypes]),
        mimics=np.array(["|".join(m) for m in ds.mimics]),
    )


def _load(task: Task, folder: Path) -> Dataset:
    meta = np.load(folder / "meta.npz")

    def split(a: np.ndarray) -> list[tuple[str, ...]]:
        return [tuple(x for x in str(v).split("|") if x) for v in a]

    return Dataset(
        task=task,
        seeds=meta["seeds"],
        volumes=np.load(folder / "volumes.npy", mmap_mode="r"),
        labels=meta["labels"],
        slice_targets=meta["slice_targets"],
        loc_targets=meta["loc_targets"],
        subtypes=split(meta["subtypes"]),
        mimics=split(meta["mimics"]),
        lesion_size_mm=meta["lesion_size_mm"],
    )
