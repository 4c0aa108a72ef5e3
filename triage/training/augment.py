"""Domain randomisation for training: what a scanner, its kernel and its calibration do to a
study, drawn at random per phantom on the model grid.

The generator already varies the acquisition (HU offset, a mild kernel, pose, slice profile,
noise share; :func:`triage.synth.ct.draw_spec`); what it draws is painted at 512 x 512 and
area-averaged, so on the model grid its kernels are mild. Real reconstructions are softer or
sharper than that, slices are thicker or thinner, soft tissue sits a few HU higher on one
scanner than another. :func:`augment` applies, each with its own probability and a random
strength, to a whole model-grid volume [z, y, x] in HU:

- soft tissue (0-80 HU) shifted by -8..+12 HU, or everything above 0 HU scaled x0.88-1.12;
- an in-plane Gaussian blur (sigma 0.3-1.3 model pixels: a soft kernel) or an unsharp mask
  (a sharp kernel);
- a slice profile along z ([w, 1 - 2w, w], w 0.1-0.33: thicker, overlapping slices);
- more noise, white or correlated (a lower dose, another kernel's texture).

Intensity and sharpness only: nothing moves, so the lesion targets stay where they are.
Independent of the stress suite (:mod:`triage.training.perturb`), which applies fixed
strengths to other phantoms; the shared helpers are only the Gaussian kernel, the separable
convolution and the noise measurement. Synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.training.perturb import convolve_axis, gaussian_kernel, noise_sigma


@dataclass(frozen=True)
class Augmentation:
    """Probabilities and ranges of :func:`augment` (each drawn uniformly)."""

    p_soft: float = 0.25
    soft_shift_hu: tuple[float, float] = (-8.0, 12.0)
    p_contrast: float = 0.2
    contrast: tuple[float, float] = (0.88, 1.12)
    p_blur: float = 0.35
    blur_sigma_px: tuple[float, float] = (0.3, 1.3)
    p_sharp: float = 0.2
    sharp_sigma_px: tuple[float, float] = (0.7, 1.3)
    sharp_amount: tuple[float, float] = (0.3, 0.9)
    p_profile: float = 0.3
    profile_weight: tuple[float, float] = (0.1, 0.33)
    p_noise: float = 0.3
    noise_factor: tuple[float, float] = (1.3, 2.2)  # total noise / measured noise
    p_texture: float = 0.4  # share of the added noise draws that are correlated


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def augment(
    volume: np.ndarray, rng: np.random.Generator, aug: Augmentation = Augmentation()
) -> tuple[np.ndarray, list[str]]:
    """(augmented float32 copy of ``volume`` [z, y, x] in HU, what was applied)."""
    hu = np.asarray(volume, dtype=np.float32).copy()
    done: list[str] = []
    noise0 = noise_sigma(hu)
    if rng.random() < aug.p_soft:
        d = _u(rng, aug.soft_shift_hu)
        hu = np.where((hu >= 0.0) & (hu <= 80.0), hu + np.float32(d), hu)
        done.append(f"soft{d:+.1f}")
    elif rng.random() < aug.p_contrast:
        c = _u(rng, aug.contrast)
        hu = np.where(hu > 0.0, hu * np.float32(c), hu)
        done.append(f"contrast x{c:.2f}")
    r = rng.random()
    if r < aug.p_blur:
        s = _u(rng, aug.blur_sigma_px)
        k = gaussian_kernel(s)
        hu = convolve_axis(convolve_axis(hu, k, 1), k, 2)
        done.append(f"blur {s:.2f}px")
    elif r < aug.p_blur + aug.p_sharp:
        s, a = _u(rng, aug.sharp_sigma_px), _u(rng, aug.sharp_amount)
        k = gaussian_kernel(s)
        smooth = convolve_axis(convolve_axis(hu, k, 1), k, 2)
        hu = hu + np.float32(a) * (hu - smooth)
        done.append(f"sharp {s:.2f}px x{a:.2f}")
    if rng.random() < aug.p_profile and hu.shape[0] >= 3:
        w = _u(rng, aug.profile_weight)
        hu = convolve_axis(hu, np.array([w, 1.0 - 2.0 * w, w], np.float32), 0)
        done.append(f"profile {w:.2f}")
    if rng.random() < aug.p_noise and noise0 > 0.0:
        f = _u(rng, aug.noise_factor)
        now = noise_sigma(hu)
        add = math.sqrt(max((f * noise0) ** 2 - now**2, 0.0))
        if add > 0.0:
            n = rng.standard_normal(hu.shape, dtype=np.float32)
            if rng.random() < aug.p_texture:
                k = gaussian_kernel(1.2)
                n = convolve_axis(convolve_axis(n, k, 1), k, 2)
                n /= np.float32(max(float(n.std()), 1e-6))
            hu = hu + np.float32(add) * n
            done.append(f"noise x{f:.2f}")
    return hu, done
