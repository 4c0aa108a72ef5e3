"""Domain randomisation (triage.training.augment): deterministic per seed, intensity and
sharpness only (nothing moves), each effect in the direction it claims."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from triage.training.augment import Augmentation, augment
from triage.training.perturb import noise_sigma

NONE = Augmentation(p_soft=0, p_contrast=0, p_blur=0, p_sharp=0, p_profile=0, p_noise=0)


def _head() -> np.ndarray:
    """A small head-like volume: air, a 1,000 HU skull ring, brain at 30 HU with 4 HU noise
    and a 70 HU blob (the generator's own phantoms are tested elsewhere; this is quick)."""
    rng = np.random.default_rng(0)
    z, n = 12, 96
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    plane = np.where(r < 44, 1000.0, -1000.0)
    plane = np.where(r < 40, 30.0, plane)
    plane = np.where(np.hypot(yy - 10, xx + 8) < 6, 70.0, plane)
    vol = np.repeat(plane[None], z, axis=0).astype(np.float32)
    return vol + rng.normal(0.0, 4.0, vol.shape).astype(np.float32)


HEAD = _head()


def test_same_seed_same_copy_and_the_input_is_untouched() -> None:
    before = HEAD.copy()
    a, done_a = augment(HEAD, np.random.default_rng(5))
    b, done_b = augment(HEAD, np.random.default_rng(5))
    assert np.array_equal(a, b) and done_a == done_b
    assert np.array_equal(HEAD, before)
    assert a.shape == HEAD.shape and a.dtype == np.float32


def test_nothing_drawn_changes_nothing() -> None:
    out, done = augment(HEAD, np.random.default_rng(1), NONE)
    assert done == [] and np.array_equal(out, HEAD)


def test_blur_lowers_the_noise_and_sharpening_raises_it() -> None:
    n0 = noise_sigma(HEAD)
    blurred, done = augment(
        HEAD, np.random.default_rng(2), replace(NONE, p_blur=1.0, blur_sigma_px=(1.0, 1.0))
    )
    assert done[0].startswith("blur") and noise_sigma(blurred) < 0.8 * n0
    sharp, done = augment(
        HEAD, np.random.default_rng(2), replace(NONE, p_sharp=1.0, sharp_amount=(0.7, 0.7))
    )
    assert done[0].startswith("sharp") and noise_sigma(sharp) > 1.1 * n0


def test_soft_tissue_shift_moves_soft_tissue_only() -> None:
    aug = replace(NONE, p_soft=1.0, soft_shift_hu=(10.0, 10.0))
    out, done = augment(HEAD, np.random.default_rng(3), aug)
    soft = (HEAD >= 0) & (HEAD <= 80)
    assert done == ["soft+10.0"]
    assert np.allclose(out[soft], HEAD[soft] + 10.0)
    assert np.array_equal(out[~soft], HEAD[~soft])  # bone, air, fat unchanged


def test_added_noise_reaches_the_drawn_factor_without_moving_the_mean() -> None:
    aug = replace(NONE, p_noise=1.0, noise_factor=(2.0, 2.0), p_texture=0.0)
    out, done = augment(HEAD, np.random.default_rng(4), aug)
    assert done == ["noise x2.00"]
    assert 1.7 < noise_sigma(out) / noise_sigma(HEAD) < 2.3
    assert abs(float(out.mean() - HEAD.mean())) < 0.5


def test_slice_profile_mixes_neighbouring_slices_only() -> None:
    aug = replace(NONE, p_profile=1.0, profile_weight=(0.25, 0.25))
    out, _ = augment(HEAD, np.random.default_rng(6), aug)
    k = 6
    expected = 0.25 * HEAD[k - 1] + 0.5 * HEAD[k] + 0.25 * HEAD[k + 1]
    assert np.allclose(out[k], expected, atol=1e-3)


def test_skull_field_is_inside_the_skull_brightest_along_the_inner_table() -> None:
    from triage.training.augment import inside_skull, skull_field

    inside = inside_skull(HEAD)
    n = HEAD.shape[1]
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    assert inside[:, r < 38].all() and not inside[:, r > 41].any()  # brain only, not bone/air
    aug = replace(NONE, p_skull_field=1.0, base_hu=(0.0, 0.0))
    out, done = augment(HEAD, np.random.default_rng(3), aug)
    field = out - HEAD
    assert len(done) == 1 and done[0].startswith("skull field")
    assert np.all(field[:, r >= 40] == 0)  # nothing on the bone or outside the head
    rim = field[:, (r > 38.5) & (r < 39.5)].mean()  # the voxels next to the inner table
    centre = field[:, r < 20].mean()
    assert rim > 5.0 and centre < 0.01 * rim
    # the floor: the lowest slices denser, fading upward, whatever the rim
    f, _ = skull_field(HEAD, np.random.default_rng(4), replace(aug, base_hu=(10.0, 10.0)))
    mid = f[:, r < 20].mean(axis=1)
    assert mid[0] > 9.0 and mid[-1] == 0.0 and np.all(np.diff(mid) <= 1e-6)


def test_an_open_ring_has_no_inside() -> None:
    from triage.training.augment import inside_skull

    broken = HEAD.copy()
    c = HEAD.shape[1] // 2
    broken[:, c - 1 : c + 2, :10] = 30.0  # a gap through the skull to the border
    assert not inside_skull(broken).any()


def _calcified_head() -> np.ndarray:
    """HEAD plus a 300 HU calcification in the brain (pineal-like, 3 x 3 pixels), a 250 HU
    knob on the inner table (part of the skull), a 900 HU piece in the brain (bone) and a
    narrow skull ring in slice 0 (the skull base: a fifth of the widest slice's area) with
    its own small 300 HU piece."""
    vol = HEAD.copy()
    n = vol.shape[1]
    c = n // 2
    vol[:, c - 1 : c + 2, c - 1 : c + 2] = 300.0
    vol[:, c - 1 : c + 1, c + 37 : c + 40] = 250.0  # touching the ring (inner radius 40)
    vol[:, c + 15 : c + 17, c - 20 : c - 18] = 900.0  # too dense for a calcification: bone
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2.0
    r = np.hypot(yy, xx)
    vol[0] = np.where(r < 22, 1000.0, -1000.0)
    vol[0][r < 18] = 30.0
    vol[0, c - 1 : c + 2, c - 1 : c + 2] = 300.0
    return vol


def test_faint_calcifications_fade_the_piece_inside_the_brain_only() -> None:
    from triage.training.augment import fade_calcifications

    vol = _calcified_head()
    n = vol.shape[1]
    c = n // 2
    aug = replace(NONE, p_faint_calcifications=1.0, calc_peak_hu=(80.0, 80.0))
    out, done = augment(vol, np.random.default_rng(7), aug)
    assert len(done) == 1 and done[0].startswith("faint calcifications")
    piece = (slice(1, None), slice(c - 1, c + 2), slice(c - 1, c + 2))
    assert np.allclose(out[piece].max(axis=(1, 2)), 80.0, atol=0.5)  # its peak where drawn
    assert (out[piece] > 30.0).all()  # still denser than the brain around it: faded, not gone
    changed = np.abs(out - vol) > 1e-3
    changed[piece] = False
    assert not changed.any()  # skull, knob, bone piece, 70 HU blob, skull base: as they were
    # nothing dense enough, or nothing inside a closed skull: nothing to do
    assert fade_calcifications(HEAD, np.random.default_rng(0), aug)[1] == 0
    open_ = vol.copy()
    open_[:, c - 1 : c + 2, : c - 5] = 30.0  # every ring opened to the border
    assert fade_calcifications(open_, np.random.default_rng(0), aug)[1] == 0


def test_faint_calcifications_are_off_by_default_and_draw_nothing() -> None:
    """The shipped recipes' augmented copies stay bit for bit what they were."""
    vol = _calcified_head()
    a, done_a = augment(vol, np.random.default_rng(11))
    b, done_b = augment(
        vol, np.random.default_rng(11), replace(Augmentation(), p_faint_calcifications=0.0)
    )
    assert Augmentation().p_faint_calcifications == 0.0
    assert np.array_equal(a, b) and done_a == done_b
    assert not any(d.startswith("faint") for d in done_a)
