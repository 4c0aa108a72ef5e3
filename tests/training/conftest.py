"""Fixed phantoms on the model grid for the trained models (in-memory path of triage.synth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from triage.synth import ct
from triage.training.train import DEFAULT_GENERATOR

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

# (spec, seed) -> expected label. Seeds 700..799 are outside every training / tuning /
# validation range (triage.training.data).
# Each task's cases are painted by the generator its shipped model was trained on.
HEAD = DEFAULT_GENERATOR["ich"]
CHEST = DEFAULT_GENERATOR["pe"]
CASES: dict[str, list[tuple[ct.PhantomSpec, int]]] = {
    "ich": [
        (ct.PhantomSpec("ich", True, subtypes=("intraparenchymal",), size_mm=20.0, n_slices=28,
                        slice_thickness=5.0, generator=HEAD), 701),
        (ct.PhantomSpec("ich", True, subtypes=("epidural",), size_mm=12.0, n_slices=48,
                        slice_thickness=2.5, generator=HEAD), 702),
        (ct.PhantomSpec("ich", True, subtypes=("intraventricular",), size_mm=15.0, n_slices=48,
                        slice_thickness=2.5, generator=HEAD), 703),
        (ct.PhantomSpec("ich", False, n_slices=28, slice_thickness=5.0, generator=HEAD), 704),
        (ct.PhantomSpec("ich", False, mimics=("falx_calcification", "choroid_calcification",
                                              "pineal_calcification"), n_slices=48,
                        slice_thickness=2.5, generator=HEAD), 705),
        (ct.PhantomSpec("ich", False, mimics=("beam_hardening",), n_slices=28,
                        slice_thickness=5.0, generator=HEAD), 706),
    ],
    "pe": [
        (ct.PhantomSpec("pe", True, subtypes=("central",), n_slices=80, slice_thickness=2.5,
                        fov_mm=360.0, noise_hu=8.0, generator=CHEST), 711),
        (ct.PhantomSpec("pe", True, subtypes=("lobar",), n_slices=100, slice_thickness=2.0,
                        fov_mm=360.0, noise_hu=8.0, generator=CHEST), 712),
        (ct.PhantomSpec("pe", False, n_slices=80, slice_thickness=2.5, fov_mm=360.0,
                        noise_hu=8.0, generator=CHEST), 713),
        (ct.PhantomSpec("pe", False, mimics=("hilar_nodes", "mixing_artefact"), n_slices=80,
                        slice_thickness=2.5, fov_mm=360.0, noise_hu=8.0, generator=CHEST), 714),
    ],
}  # fmt: skip


CASE_IDS = [(task, i) for task, cases in CASES.items() for i in range(len(cases))]
# Cases the committed models get wrong, documented in the model cards (models/*/README.md);
# they are reported as expected failures, not hidden.
KNOWN_MISSES: dict[tuple[str, int], str] = {
    ("pe", 1): "pe-synthcnn-3.1 (tuning sensitivity 0.79 at specificity 0.90 on chest generator 5) "
    "misses this lobar embolus (p 0.175 under 0.2758), as 3.0 (generator 4) and the retraining "
    "on generator 3 did (models/pe/README.md)",
}
_CACHE: dict[str, list[tuple[np.ndarray, bool, str]]] = {}


def case_volumes(task: str) -> list[tuple[np.ndarray, bool, str]]:
    """(model-grid HU volume, expected label, description) of the fixed cases of ``task``."""
    if task in _CACHE:
        return _CACHE[task]
    out = []
    for spec, seed in CASES[task]:
        what = "/".join(spec.subtypes or spec.mimics or ("plain",))
        out.append((ct.model_sample(spec, seed).volume, spec.label, f"{task}:{what}:{seed}"))
    _CACHE[task] = out
    return out
