"""What one phantom shows (:class:`PhantomSpec`): task, label, lesion kinds, mimics, scanner
and acquisition; and the draws of varied studies for training and validation
(:func:`draw_spec`, :func:`spec_set`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from triage.synth.ct.grid import Task, uniform

HEMORRHAGE_SUBTYPES = (
    "intraparenchymal",
    "subdural",
    "epidural",
    "subarachnoid",
    "intraventricular",
)
HEAD_MIMICS = (
    "choroid_calcification",
    "pineal_calcification",
    "falx_calcification",
    "beam_hardening",
    "motion",
)
EMBOLUS_LEVELS = ("central", "lobar", "segmental", "subsegmental")
CTPA_MIMICS = (
    "mixing_artefact",
    "hilar_nodes",
    "poor_contrast",
    "dense_svc",
    "mucus_bronchi",
    "atelectasis",
)
GENERATORS = (3, 4, 5)  # PhantomSpec.generator
SCANNERS = (
    # model name, kernel, noise factor, HU calibration offset
    ("PhantomScan 16", "STANDARD", 1.25, 2.0),
    ("PhantomScan 64", "SOFT", 1.0, 0.0),
    ("PhantomScan 128", "B30f", 0.9, -2.0),
    ("PhantomScan 256", "FC18", 0.8, 1.0),
)


@dataclass(frozen=True)
class PhantomSpec:
    """What one synthetic study shows (not where: positions are drawn from the seed).

    ``subtypes``: hemorrhage kinds (:data:`HEMORRHAGE_SUBTYPES`) or embolus levels
    (:data:`EMBOLUS_LEVELS`), empty for a negative study. ``size_mm``: the main lesion's
    characteristic size (bleed diameter or thickness, clot diameter); ``None`` draws it.
    ``noise_hu``: per-pixel noise at 512 x 512 (before the scanner's factor).
    """

    task: Task
    label: bool
    subtypes: tuple[str, ...] = ()
    mimics: tuple[str, ...] = ()
    n_slices: int = 24
    slice_thickness: float = 5.0
    fov_mm: float = 230.0
    noise_hu: float = 5.0
    scanner: int = 1  # index into SCANNERS
    size_mm: float | None = None
    # Acquisition as real scanners vary it (draw_spec randomises each per study; the defaults
    # are a neutral acquisition): a calibration offset of the whole HU scale on top of the
    # scanner's; the reconstruction kernel (< 0: Gaussian blur of that sigma in pixels of the
    # 512 matrix, > 0: unsharp-mask sharpening of that amount, edge overshoot included); the
    # patient's in-plane rotation (degrees) and position (mm) on the table; the correlated
    # share of the noise (x the per-pixel sigma, on cells of the 128 grid).
    hu_offset: float = 0.0
    kernel: float = 0.0
    rotation_deg: float = 0.0
    shift_mm: tuple[float, float] = (0.0, 0.0)
    coarse_noise: float = 0.3
    # Which anatomy is painted. Head: 3, a closed skull around the brain from the first slice
    # to the last, its inner table a sharp edge; 4, the skull base and face below the brain
    # (cranial fossae, orbits, paranasal sinuses, nasal cavity: no bone ring encloses the
    # lowest slices) and the glare of the skull on what it encloses
    # (:func:`triage.synth.ct.scanner.render`), as a real head shows them. Chest: 3, bone as
    # solid beads and columns; 4, the skeleton as real CT shows it - cortex over marrow,
    # posterior elements, ribs round the wall with costal cartilage, scapulae - the back's
    # muscles, mediastinal fat and a real table (:mod:`triage.synth.ct.skeleton`); 5, generator
    # 4 with what lies inside real heart chambers - papillary muscles, trabeculae, the
    # moderator band, unopacified inflow from the IVC (a head is painted as by 4). Default 3,
    # the earlier generator, which the demo and most tests paint; ich-synthcnn-4.x was trained
    # on 4, pe-synthcnn-3.1 on 5 (triage.training.train.DEFAULT_GENERATOR), and
    # validation paints what a model learned from.
    generator: int = 3

    def __post_init__(self) -> None:
        known = HEMORRHAGE_SUBTYPES if self.task == "ich" else EMBOLUS_LEVELS
        mimics = HEAD_MIMICS if self.task == "ich" else CTPA_MIMICS
        if self.label != bool(self.subtypes):
            raise ValueError("a positive study needs lesion subtypes, a negative one none")
        for s in self.subtypes:
            if s not in known:
                raise ValueError(f"unknown {self.task} lesion kind {s!r} (known: {known})")
        for m in self.mimics:
            if m not in mimics:
                raise ValueError(f"unknown {self.task} mimic {m!r} (known: {mimics})")
        if self.n_slices < 2 or self.slice_thickness <= 0 or self.fov_mm <= 0:
            raise ValueError("need >= 2 slices, a positive thickness and field of view")
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator} (known: {GENERATORS})")


def z_positions(spec: PhantomSpec) -> np.ndarray:
    """Slice centres (mm) of a study: head from the skull base upward; chest centred."""
    n, t = spec.n_slices, spec.slice_thickness
    z0 = -(n * t) / 3.0 if spec.task == "ich" else -(n * t) / 2.0
    return (z0 + np.arange(n) * t).astype(np.float32)


def draw_spec(
    task: Task, rng: np.random.Generator, *, positive: bool, generator: int = 3
) -> PhantomSpec:
    """A random, varied study: thickness, FOV, noise, scanner, lesion kinds, mimics, painted
    by ``generator`` (the same draws whatever the generator)."""
    scanner = int(rng.integers(len(SCANNERS)))
    if task == "ich":
        thickness = float(rng.choice([1.25, 2.5, 3.0, 5.0]))
        coverage = uniform(rng, 120.0, 150.0)
        fov = uniform(rng, 200.0, 250.0)
        noise = uniform(rng, 3.0, 8.0)
        kinds: tuple[str, ...] = HEMORRHAGE_SUBTYPES
        # Physiological calcifications are the rule in adult heads, bleed or not.
        mimic_p: tuple[float, ...] = (
            0.55,
            0.55,
            0.25,
            0.5,
            0.1,
        )  # choroid, pineal, falx, beam hardening, motion
        mimics = tuple(m for m, p in zip(HEAD_MIMICS, mimic_p, strict=True) if rng.random() < p)
    else:
        thickness = float(rng.choice([1.0, 1.25, 2.0, 2.5]))
        coverage = uniform(rng, 180.0, 230.0)
        fov = uniform(rng, 320.0, 400.0)
        noise = uniform(rng, 6.0, 14.0)
        kinds = EMBOLUS_LEVELS
        # Each mimic in positives and negatives alike (poor contrast included: the input
        # checks refuse the worst timing, the model must cope with the rest).
        mimic_p = (0.3, 0.3, 0.15, 0.2, 0.25, 0.3)
        mimics = tuple(m for m, p in zip(CTPA_MIMICS, mimic_p, strict=True) if rng.random() < p)
    subtypes: tuple[str, ...] = ()
    if positive:
        if task == "pe":
            weights = np.array([0.25, 0.3, 0.3, 0.15])
        else:
            weights = np.full(len(kinds), 1.0 / len(kinds))
        first = str(rng.choice(kinds, p=weights))
        subtypes = (first,)
        if rng.random() < 0.2:
            subtypes = (first, str(rng.choice(kinds, p=weights)))
    n = max(8, round(coverage / thickness))
    # Acquisition (a separate stream: the draws above are those of the earlier generator).
    arng = np.random.default_rng(rng.integers(2**63))
    kernel = -uniform(arng, 0.3, 1.5) if arng.random() < 0.5 else uniform(arng, 0.0, 0.8)
    return PhantomSpec(
        task=task,
        label=positive,
        subtypes=subtypes,
        mimics=mimics,
        n_slices=n,
        slice_thickness=thickness,
        fov_mm=round(fov, 1),
        noise_hu=round(noise, 2),
        scanner=scanner,
        hu_offset=round(uniform(arng, -12.0, 12.0), 2),
        kernel=round(kernel, 3),
        rotation_deg=round(uniform(arng, -15.0, 15.0), 2),
        shift_mm=(round(uniform(arng, -15.0, 15.0), 1), round(uniform(arng, -15.0, 15.0), 1)),
        coarse_noise=round(uniform(arng, 0.3, 1.0), 3),
        generator=generator,
    )


def spec_set(
    task: Task, seeds: Sequence[int], positive_fraction: float = 0.3, generator: int = 3
) -> list[PhantomSpec]:
    """Specs for ``seeds`` (one each, drawn from the seed): positives evenly spread at
    ``positive_fraction``; the j-th positive's (first) lesion kind and the j-th negative's
    added mimic go round robin, so every kind and mimic is represented. ``generator``: what
    paints them (:attr:`PhantomSpec.generator`; the same specs otherwise)."""
    specs = []
    kinds = HEMORRHAGE_SUBTYPES if task == "ich" else EMBOLUS_LEVELS
    mimics = HEAD_MIMICS if task == "ich" else CTPA_MIMICS
    n_pos = n_neg = 0
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng([seed, 9])
        positive = math.floor((i + 1) * positive_fraction) > math.floor(i * positive_fraction)
        spec = draw_spec(task, rng, positive=positive, generator=generator)
        if positive:
            spec = replace(spec, subtypes=(kinds[n_pos % len(kinds)], *spec.subtypes[1:]))
            n_pos += 1
        else:
            extra = mimics[n_neg % len(mimics)]
            spec = replace(spec, mimics=tuple(m for m in mimics if m in spec.mimics or m == extra))
            n_neg += 1
        specs.append(spec)
    return specs
