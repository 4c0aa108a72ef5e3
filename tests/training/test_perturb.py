"""The stress suite's perturbations do what their documentation says, on hand-made scans with
known anatomy (no generator, no torch): a head (skull ring around brain) and a chest (body,
lungs, a contrast vessel, a vertebra with a dense cortex)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from triage.training import perturb as P

PIX = 1.8  # mm per pixel
NOISE = 4.0


def _disk(n: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:n, :n]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _ellipse(n: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:n, :n]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _noisy(clean: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(clean + rng.normal(0, NOISE, clean.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def head() -> P.Scan:
    n, nz = 96, 20
    sl = np.full((n, n), -1000.0, np.float32)
    sl[_ellipse(n, 48, 48, 44, 36)] = 1200.0  # skull
    sl[_ellipse(n, 48, 48, 40, 32)] = 32.0  # brain
    clean = np.stack([sl] * nz)
    return P.Scan(_noisy(clean), np.arange(nz) * 5.0, PIX, 5.0)


@pytest.fixture(scope="module")
def chest() -> P.Scan:
    n, nz = 128, 16
    sl = np.full((n, n), -1000.0, np.float32)
    sl[_ellipse(n, 64, 64, 45, 60)] = 40.0  # body
    sl[_ellipse(n, 60, 38, 25, 18)] = -850.0  # lungs
    sl[_ellipse(n, 60, 90, 25, 18)] = -850.0
    sl[_disk(n, 52, 64, 6)] = 350.0  # contrast-filled vessel, anterior midline
    sl[_disk(n, 92, 64, 10)] = 900.0  # vertebral cortex
    sl[_disk(n, 92, 64, 8)] = 400.0  # cancellous bone
    clean = np.stack([sl] * nz)
    return P.Scan(_noisy(clean, 1), np.arange(nz) * 2.5, PIX, 2.5)


def _region(scan: P.Scan, lo: float, hi: float) -> np.ndarray:
    return (scan.hu > lo) & (scan.hu < hi)


def test_noise_is_measured(head: P.Scan) -> None:
    assert P.noise_sigma(head.hu) == pytest.approx(NOISE, rel=0.08)


@pytest.mark.parametrize("name,delta", [("offset+10", 10.0), ("offset-10", -10.0)])
def test_global_offset_moves_every_tissue(head: P.Scan, name: str, delta: float) -> None:
    out = P.by_name(name).apply(head, 1)
    brain = _region(head, -100, 150)
    air = head.hu < -900
    assert out.hu[brain].mean() - head.hu[brain].mean() == pytest.approx(delta, abs=0.01)
    assert out.hu[air].mean() == pytest.approx(-1000.0 + delta, abs=0.5)  # air moves too
    assert P.noise_sigma(out.hu) == pytest.approx(P.noise_sigma(head.hu), abs=0.05)


@pytest.mark.parametrize("name,delta", [("soft+6", 6.0), ("soft+10", 10.0)])
def test_soft_tissue_shift_only_touches_0_to_80(chest: P.Scan, name: str, delta: float) -> None:
    out = P.by_name(name).apply(chest, 1)
    soft = (chest.hu >= 0) & (chest.hu <= 80)
    assert np.all(out.hu[soft] == chest.hu[soft] + delta)
    assert np.all(out.hu[~soft] == chest.hu[~soft])  # lung, air, contrast, bone untouched


def test_contrast_scales_above_water_only(chest: P.Scan) -> None:
    out = P.by_name("contrast x1.1").apply(chest, 1)
    bone = chest.hu > 850
    assert np.allclose(out.hu[bone], np.rint(chest.hu[bone] * 1.1))
    assert np.all(out.hu[chest.hu <= 0] == chest.hu[chest.hu <= 0])
    low = P.by_name("contrast x0.9").apply(chest, 1)
    vessel = (chest.hu > 300) & (chest.hu < 380)
    assert low.hu[vessel].mean() == pytest.approx(0.9 * chest.hu[vessel].mean(), abs=0.3)


def test_noise_x2_doubles_the_measured_noise(head: P.Scan) -> None:
    out = P.by_name("noise x2").apply(head, 1)
    assert P.noise_sigma(out.hu) == pytest.approx(2 * P.noise_sigma(head.hu), rel=0.06)
    brain = _region(head, -100, 150)
    assert out.hu[brain].mean() == pytest.approx(head.hu[brain].mean(), abs=0.2)


def test_noise_texture_is_correlated(head: P.Scan) -> None:
    out = P.by_name("noise texture").apply(head, 1)
    added = (out.hu - head.hu)[:, 20:76, 24:72]  # inside the brain
    a, b = added[:, :, :-1].ravel(), added[:, :, 1:].ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.5  # neighbours move together: a texture, not white
    assert added.std() == pytest.approx(NOISE, rel=0.3)


def test_blur_and_sharpen(head: P.Scan) -> None:
    blur = P.by_name("kernel blur").apply(head, 1)
    sharp = P.by_name("kernel sharp").apply(head, 1)
    assert P.noise_sigma(blur.hu) < 0.5 * P.noise_sigma(head.hu)
    assert P.noise_sigma(sharp.hu) > 1.5 * P.noise_sigma(head.hu)
    # the skull/brain edge: blur makes intermediate values, sharpening overshoots bone
    edge_vals = lambda s: ((s.hu > 200) & (s.hu < 1000)).sum()  # noqa: E731
    assert edge_vals(blur) > 2 * edge_vals(head)
    assert sharp.hu.max() > head.hu.max() + 100


def test_slice_profile_spreads_one_slice() -> None:
    hu = np.zeros((7, 8, 8), np.float32)
    hu[3] = 400.0
    out = P.by_name("slice profile").apply(P.Scan(hu, np.arange(7.0), 1.0, 1.0), 0)
    assert out.hu[2:5, 4, 4].tolist() == [100.0, 200.0, 100.0]
    assert out.hu[0, 4, 4] == 0.0


def test_thick_and_thin_slices(head: P.Scan) -> None:
    thick = P.by_name("thick slices").apply(head, 1)
    assert thick.hu.shape[0] == head.hu.shape[0] // 2 and thick.thickness == 2 * head.thickness
    assert np.allclose(thick.z, head.z[0::2] + 2.5)
    assert P.noise_sigma(thick.hu) == pytest.approx(P.noise_sigma(head.hu) / math.sqrt(2), rel=0.1)
    thin = P.by_name("thin slices").apply(head, 1)
    assert thin.hu.shape[0] == 2 * head.hu.shape[0] - 1 and thin.thickness == head.thickness / 2
    assert np.allclose(thin.z[0::2], head.z) and np.allclose(thin.z[1::2], head.z[:-1] + 2.5)
    for part in (thin.hu[0::2], thin.hu[1::2]):  # originals and in-betweens alike
        assert P.noise_sigma(part) == pytest.approx(math.sqrt(2) * NOISE, rel=0.1)


def test_rotation_keeps_the_body(chest: P.Scan) -> None:
    out = P.by_name("rotate 10").apply(chest, 1)
    area0, area1 = (chest.hu > -500).sum(), (out.hu > -500).sum()
    assert area1 == pytest.approx(area0, rel=0.02)
    # the vertebra (on the midline, 28 px below the centre) swings by 10 degrees
    ys, xs = np.nonzero(out.hu[0] > 600)
    angle = math.degrees(math.atan2(xs.mean() - 63.5, ys.mean() - 63.5))
    assert abs(angle) == pytest.approx(10.0, abs=1.5)
    assert P.noise_sigma(out.hu) == pytest.approx(P.noise_sigma(chest.hu), rel=0.1)


def _bone(scan: P.Scan) -> tuple[tuple[float, float], float]:
    """Centroid (y, x) and mass of the vertebra in slice 0, weighted by HU above 62 (soft
    tissue + 5 sigma; bilinear resampling keeps both where a threshold would not)."""
    w = np.clip(scan.hu[0] - 62.0, 0, None)
    w[:70] = 0  # the vessel is anterior
    yy, xx = np.mgrid[: w.shape[0], : w.shape[1]]
    return (float((w * yy).sum() / w.sum()), float((w * xx).sum() / w.sum())), float(w.sum())


def test_translation_moves_the_body_by_the_stated_mm(chest: P.Scan) -> None:
    out = P.by_name("translate").apply(chest, 1)
    (y0, x0), _ = _bone(chest)  # the vertebra (the body's edge leaves the field)
    (y1, x1), _ = _bone(out)
    assert (x1 - x0) * PIX == pytest.approx(-12.0, abs=0.3)  # to the patient's right
    assert (y1 - y0) * PIX == pytest.approx(-8.0, abs=0.3)  # anterior


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_field_of_view_keeps_physical_size(chest: P.Scan, factor: float) -> None:
    out = P.by_name(f"fov {factor:g}").apply(chest, 1)
    assert out.pixel_mm == pytest.approx(PIX * factor)
    (y0, _), mass0 = _bone(chest)
    (y1, _), mass1 = _bone(out)
    assert mass1 * out.pixel_mm**2 == pytest.approx(mass0 * chest.pixel_mm**2, rel=0.03)
    assert (y1 - 63.5) * out.pixel_mm == pytest.approx((y0 - 63.5) * PIX, abs=0.3)


def test_sinus_is_inserted_on_the_midline_toward_the_vertex() -> None:
    n, nz = 96, 20
    rng = np.random.default_rng(3)
    hu = np.full((nz, n, n), -1000.0, np.float32)
    for k in range(nz):  # a head narrowing toward the vertex
        s = 1.0 - 0.5 * k / nz
        hu[k][_ellipse(n, 48, 48, 44 * s, 36 * s)] = 1200.0
        hu[k][_ellipse(n, 48, 48, 40 * s, 32 * s)] = 32.0
    hu = np.rint(hu + rng.normal(0, NOISE, hu.shape)).astype(np.float32)
    scan = P.Scan(hu, np.arange(nz) * 5.0, PIX, 5.0)
    out = P.by_name("sinus 62").apply(scan, 1)
    changed = out.hu != scan.hu
    slices = np.flatnonzero(changed.any(axis=(1, 2)))
    assert slices.min() >= nz // 2 and slices.max() == nz - 1  # upper part of the brain only
    assert out.hu[changed].mean() == pytest.approx(62.0, abs=1.5)
    assert scan.hu[changed].max() < 100  # never painted over bone
    ys, xs = np.nonzero(changed[slices[0]])
    assert abs(xs.mean() - 47.5) < 1.0  # midline
    assert {y < 48 for y in ys} == {True, False}  # front and back


def test_spine_replaced_and_vessel_kept(chest: P.Scan) -> None:
    out = P.by_name("spine 60").apply(chest, 1)
    vertebra = _disk(128, 92, 64, 10)[None].repeat(chest.hu.shape[0], 0)
    vessel = _disk(128, 52, 64, 6)[None].repeat(chest.hu.shape[0], 0)
    assert out.hu[vertebra].mean() == pytest.approx(60.0, abs=3.0)
    assert out.hu.max() < 400  # no dense bone left anywhere
    assert np.array_equal(out.hu[vessel], chest.hu[vessel])


def test_every_perturbation_is_deterministic_and_named(head: P.Scan, chest: P.Scan) -> None:
    names = [p.name for p in (*P.PERTURBATIONS, *P.COMBINATIONS)]
    assert len(set(names)) == len(names)
    for task, scan in (("ich", head), ("pe", chest)):
        for p in P.suite(task):
            a, b = p.apply(scan, 7), p.apply(scan, 7)
            assert np.array_equal(a.hu, b.hu), p.name
            assert a.hu.shape[0] == len(a.z) and a.hu.dtype == np.float32
            assert not np.array_equal(a.hu, scan.hu) or a.hu.shape != scan.hu.shape, p.name
    assert "sinus 62" not in [p.name for p in P.suite("pe")]
    assert "spine 60" not in [p.name for p in P.suite("ich")]
