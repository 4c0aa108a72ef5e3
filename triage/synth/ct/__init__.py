"""Synthetic CT studies with a known ground truth: non-contrast head CT (intracranial hemorrhage
of five kinds, or none, with mimics) and CT pulmonary angiography (emboli from central to
subsegmental, or none, with mimics).

**Synthetic phantoms; not for clinical use.** They exist so that the engine, its tests, its demo
and its models can be built and checked without patient data.

A study is described by a :class:`PhantomSpec` (:mod:`.spec`). :func:`render` (:mod:`.scanner`)
paints it on a patient-space grid (:mod:`.grid`) with the head (:mod:`.head`) or chest
(:mod:`.ctpa`, its skeleton and table in :mod:`.skeleton`) anatomy, then applies slice
profile, pose, kernel and calibration. Two paths use the same anatomy code:

- the **DICOM path** (:mod:`.dicom`: :func:`write_study`, :func:`write_head_ct`,
  :func:`write_ctpa`): a CT Image Storage series with the ground truth beside it;
- the **in-memory path** (:mod:`.sample`: :func:`model_sample`): the HU volume and the
  lesion-fraction map directly on the model grid, with the noise and resampling the engine's
  own loading gives; training and validation use it, and ``tests/synth`` checks that it agrees
  with DICOM -> :func:`~triage.inference.volume.load_volume` ->
  :func:`~triage.inference.volume.resample`.

Everything is deterministic given ``seed``. Anatomy, lesion, mimic and noise draws come from
separate random streams, so a positive and a negative study with the same seed and spec differ
only inside the lesion, and the anatomy does not depend on the grid.

This package re-exports the public names of its modules.
"""

from triage.synth.ct.dicom import (
    CTPA_DESCRIPTION,
    DISCLAIMER,
    HEAD_DESCRIPTION,
    SyntheticStudy,
    read_truth_mask,
    write_ctpa,
    write_head_ct,
    write_study,
)
from triage.synth.ct.grid import (
    AIR_HU,
    HU_MAX,
    HU_MIN,
    MODEL_SHAPES,
    MODEL_Z_RESAMPLING,
    PAINT_SIZE,
    RESCALE_INTERCEPT,
    RESCALE_SLOPE,
    Lesion,
    Task,
    equivalent_diameter,
    model_shape,
    z_resampling,
)
from triage.synth.ct.sample import ModelSample, block_fraction, block_mean, model_sample
from triage.synth.ct.scanner import profile_samples, render
from triage.synth.ct.spec import (
    CTPA_MIMICS,
    EMBOLUS_LEVELS,
    HEAD_MIMICS,
    HEMORRHAGE_SUBTYPES,
    SCANNERS,
    PhantomSpec,
    draw_spec,
    spec_set,
)

__all__ = [
    "AIR_HU",
    "CTPA_DESCRIPTION",
    "CTPA_MIMICS",
    "DISCLAIMER",
    "EMBOLUS_LEVELS",
    "HEAD_DESCRIPTION",
    "HEAD_MIMICS",
    "HEMORRHAGE_SUBTYPES",
    "HU_MAX",
    "HU_MIN",
    "MODEL_SHAPES",
    "MODEL_Z_RESAMPLING",
    "PAINT_SIZE",
    "RESCALE_INTERCEPT",
    "RESCALE_SLOPE",
    "SCANNERS",
    "Lesion",
    "ModelSample",
    "PhantomSpec",
    "SyntheticStudy",
    "Task",
    "block_fraction",
    "block_mean",
    "draw_spec",
    "equivalent_diameter",
    "model_sample",
    "model_shape",
    "profile_samples",
    "read_truth_mask",
    "render",
    "spec_set",
    "write_ctpa",
    "write_head_ct",
    "write_study",
    "z_resampling",
]
