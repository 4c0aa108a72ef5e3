"""Invariants of the phantom anatomy, of every lesion kind and mimic, of the varied specs, and
agreement of the in-memory model-grid path with DICOM -> load_volume -> resample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage.inference.volume import load_volume, resample
from triage.synth import ct
from triage.synth.ct.ctpa import draw_chest, render_chest
from triage.synth.ct.grid import Grid
from triage.synth.ct.head import HeadCanvas, draw_head, render_head, within_inner
from triage.synth.ct.spec import z_positions

SMALL = 160  # in-plane matrix for fast noise-free renders


def head_grid(n: int = 40, thickness: float = 3.0, size: int = SMALL) -> Grid:
    return Grid.at(
        size,
        230.0,
        z_positions(ct.PhantomSpec("ich", False, n_slices=n, slice_thickness=thickness)),
        thickness,
    )


def chest_grid(n: int = 60, thickness: float = 3.5, size: int = SMALL) -> Grid:
    spec = ct.PhantomSpec("pe", False, n_slices=n, slice_thickness=thickness, fov_mm=380.0)
    return Grid.at(size, 380.0, z_positions(spec), thickness)


def test_head_tissues_noise_free() -> None:
    g = head_grid()
    head = draw_head(np.random.default_rng([4, 0]))
    c = HeadCanvas(g, head)
    vol = c.vol
    assert np.allclose(vol[c.white & ~c.ventricles & (vol < 50)].mean(), head.white_hu, atol=3)
    assert 21 <= head.white_hu < head.grey_hu <= 46  # grey brighter than white
    assert 5 <= head.grey_hu - head.white_hu <= 12
    assert np.all(np.abs(vol[c.ventricles] - head.csf_hu) < 1e-3)
    assert 0 <= head.csf_hu <= 10
    assert c.sulci.any() and c.cistern.any() and c.falx.any()
    assert vol.max() > 1000 and (vol == ct.AIR_HU).any()  # bone and air
    assert (vol[c.inside] < 2000).all()


def test_head_masks_are_their_full_grid_definitions() -> None:
    """The canvas paints slice by slice for speed; its masks must be exactly the plain
    whole-grid expressions (same float32 arithmetic, so bit-equal)."""
    g = head_grid(thickness=2.5, n=48)
    head = draw_head(np.random.default_rng([11, 0]))
    c = HeadCanvas(g, head)
    ax, ay, az = head.inner_axes

    def radius(shrink: float) -> np.ndarray:
        return np.sqrt(
            (g.x / (ax - shrink)) ** 2 + (g.y / (ay - shrink)) ** 2 + (g.z / (az - shrink)) ** 2
        )

    assert np.array_equal(c.r_inner, radius(0.0))
    assert np.array_equal(c.inside, radius(0.0) <= 1.0)
    assert np.array_equal(c.white, radius(7.0) <= 1.0)
    for margin in (1.5, 3.0):
        assert np.array_equal(within_inner(g, head, margin), radius(margin) <= 1.0)
    freq, zf, phase, width = head.sulci
    wave = np.abs(np.sin(freq * np.arctan2(g.y, g.x) + zf * g.z + phase + 1.7 * np.sin(0.05 * g.z)))
    band = (radius(1.5) <= 1.0) & (radius(7.0) > 1.0)
    assert np.array_equal(c.sulci, band & (wave < width))
    above = g.z > head.cistern_z + 6.0
    fissure = (np.abs(g.x) < 2.5) & c.inside & above & (np.abs(g.y) < 0.9 * ay)
    assert np.array_equal(c.falx, fissure & (np.abs(g.x) < 0.9))


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_block_averages(s: int) -> None:
    rng = np.random.default_rng(s)
    a = (rng.standard_normal((3, 12 * s, 12 * s)) * 300.0).astype(np.float32)
    reference = a.reshape(3, 12, s, 12, s).mean(axis=(2, 4))
    got = ct.block_mean(a, s)
    assert got.dtype == np.float32 and got.shape == (3, 12, 12)
    assert np.allclose(got, reference, rtol=1e-6, atol=1e-4)
    mask = rng.random((3, 12 * s, 12 * s)) < 0.4
    frac = ct.block_fraction(mask, s)
    assert frac.dtype == np.float32
    assert np.array_equal(frac, mask.reshape(3, 12, s, 12, s).mean(axis=(2, 4), dtype=np.float32))


@pytest.mark.parametrize("kind", ct.HEMORRHAGE_SUBTYPES)
def test_every_hemorrhage_kind(kind: str) -> None:
    g = head_grid()
    spec = ct.PhantomSpec(
        "ich", True, subtypes=(kind,), size_mm=10.0, n_slices=40, slice_thickness=3.0
    )
    for seed in (1, 2, 3):
        vol, mask, lesions = render_head(spec, seed, g)
        assert mask.any(), (kind, seed)
        assert lesions[0].kind == kind and lesions[0].volume_ml > 0
        blood = vol[mask]
        assert blood.min() >= 45 and blood.max() <= 90, (kind, blood.min(), blood.max())
        c = HeadCanvas(g, draw_head(np.random.default_rng([seed, 0])))
        assert c.inside[mask].all()  # always intracranial
        r = c.r_inner[mask]
        if kind in ("subdural", "epidural"):  # against the inner table
            assert r.max() > 0.95
        if kind == "intraventricular":
            assert c.ventricles[mask].all()
        if kind == "subarachnoid":
            assert (c.sulci | c.cistern)[mask].all()
        if kind == "intraparenchymal":
            assert r.max() < 1.0 and not c.ventricles[mask].any()


def test_small_bleeds_down_to_a_few_mm() -> None:
    g = Grid.at(256, 230.0, np.arange(-20.0, 40.0, 1.25, dtype=np.float32), 1.25)
    spec = ct.PhantomSpec("ich", True, subtypes=("intraparenchymal",), size_mm=3.0)
    _, mask, lesions = render_head(spec, 8, g)
    assert mask.any()
    assert ct.equivalent_diameter(lesions[0].volume_ml) < 6.0


@pytest.mark.parametrize("mimic", ct.HEAD_MIMICS)
def test_head_mimics_change_the_image_not_the_label(mimic: str) -> None:
    g = head_grid()
    plain, _, _ = render_head(ct.PhantomSpec("ich", False), 5, g)
    vol, mask, lesions = render_head(ct.PhantomSpec("ich", False, mimics=(mimic,)), 5, g)
    assert not mask.any() and lesions == []
    changed = vol != plain
    assert changed.any()
    if mimic.endswith("calcification"):
        assert vol[changed].max() >= 100  # calcium, brighter than blood
    if mimic == "beam_hardening":
        assert vol[changed].max() - plain[changed].max() > 5 or (vol[changed] > 50).any()


def test_chest_anatomy_and_contrast() -> None:
    g = chest_grid()
    vol, _, _ = render_chest(ct.PhantomSpec("pe", False), 3, g)
    chest = draw_chest(np.random.default_rng([3, 0]))
    assert 250 <= chest.artery_hu <= 450
    levels = {v.level for v in chest.tree}
    assert set(ct.EMBOLUS_LEVELS) <= levels
    assert (vol == ct.AIR_HU).any() and (np.abs(vol - chest.lung_hu) < 1e-3).mean() > 0.1
    assert (np.abs(vol - chest.artery_hu) < 1e-3).sum() > 1000  # contrast-filled tree
    assert (vol >= 600).any()  # ribs / spine


@pytest.mark.parametrize("level", ct.EMBOLUS_LEVELS)
def test_emboli_at_every_level_are_filling_defects(level: str) -> None:
    g = chest_grid(thickness=2.0, n=100, size=256)
    spec = ct.PhantomSpec("pe", True, subtypes=(level,), n_slices=100, slice_thickness=2.0)
    neg, _, _ = render_chest(ct.PhantomSpec("pe", False), 6, g)
    vol, mask, lesions = render_chest(spec, 6, g)
    assert mask.any() and lesions[0].kind == level
    assert (vol[mask] >= 20).all() and (vol[mask] <= 70).all()
    assert neg[mask].min() >= 250  # inside a contrast-filled artery
    assert not (vol != neg)[~mask].any()


def test_ctpa_mimics() -> None:
    g = chest_grid()
    plain, _, _ = render_chest(ct.PhantomSpec("pe", False), 2, g)
    chest = draw_chest(np.random.default_rng([2, 0]))
    poor, m, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("poor_contrast",)), 2, g)
    assert not m.any() and poor.max() < plain.max() + 1
    assert not (np.abs(poor - chest.artery_hu) < 1e-3).any()
    mix, _, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("mixing_artefact",)), 2, g)
    changed = mix != plain
    assert changed.any() and mix[changed].min() > 100  # dimmer than the artery, not clot-dark
    nodes, _, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("hilar_nodes",)), 2, g)
    assert ((nodes != plain) & (nodes > 40) & (nodes < 60)).any()
    svc, _, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("dense_svc",)), 2, g)
    assert svc.max() > 650


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        ct.PhantomSpec("ich", True)  # positive without a kind
    with pytest.raises(ValueError):
        ct.PhantomSpec("ich", True, subtypes=("central",))
    with pytest.raises(ValueError):
        ct.PhantomSpec("pe", False, mimics=("motion",))


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_spec_set_covers_every_kind_and_mimic(task: ct.Task) -> None:
    specs = ct.spec_set(task, list(range(100, 300)), 0.3)
    pos = [s for s in specs if s.label]
    assert 0.28 <= len(pos) / len(specs) <= 0.32
    kinds = ct.HEMORRHAGE_SUBTYPES if task == "ich" else ct.EMBOLUS_LEVELS
    mimics = ct.HEAD_MIMICS if task == "ich" else ct.CTPA_MIMICS
    assert {k for s in pos for k in s.subtypes} == set(kinds)
    assert {m for s in specs if not s.label for m in s.mimics} == set(mimics)
    assert len({s.slice_thickness for s in specs}) >= 3
    assert len({s.scanner for s in specs}) == len(ct.SCANNERS)
    assert len({round(s.fov_mm) for s in specs}) > 20
    assert specs == ct.spec_set(task, list(range(100, 300)), 0.3)  # deterministic


def test_model_sample_shape_and_truth() -> None:
    spec = ct.PhantomSpec("ich", True, subtypes=("epidural",), n_slices=30, slice_thickness=5.0)
    s = ct.model_sample(spec, 12)
    assert s.volume.shape == s.lesion.shape == ct.model_shape("ich") == (64, 128, 128)
    assert s.volume.dtype == np.float32 and s.volume.min() >= -1024 and s.volume.max() <= 3071
    assert s.lesion.min() >= 0 and s.lesion.max() <= 1 and s.lesion.max() > 0.5
    assert s.label and s.lesion_size_mm > 5
    neg = ct.model_sample(ct.PhantomSpec("ich", False, n_slices=30, slice_thickness=5.0), 12)
    assert neg.lesion.max() == 0 and neg.lesion_size_mm == 0
    chest = ct.PhantomSpec("pe", True, subtypes=("lobar",), n_slices=40, slice_thickness=5.0)
    pe = ct.model_sample(chest, 12)
    assert pe.volume.shape == pe.lesion.shape == ct.model_shape("pe") == (64, 256, 256)
    assert pe.lesion.max() > 0.5 and pe.label


@pytest.mark.parametrize(
    "spec",
    [
        ct.PhantomSpec(
            "ich",
            True,
            subtypes=("intraparenchymal",),
            size_mm=18.0,
            n_slices=16,
            slice_thickness=5.0,
            noise_hu=6.0,
        ),
        ct.PhantomSpec(  # skull base, face and glare (generator 4)
            "ich",
            True,
            subtypes=("subdural",),
            size_mm=12.0,
            n_slices=24,
            slice_thickness=5.0,
            noise_hu=6.0,
            generator=4,
        ),
        ct.PhantomSpec(
            "pe",
            True,
            subtypes=("central",),
            n_slices=16,
            slice_thickness=8.0,
            fov_mm=360.0,
            noise_hu=10.0,
        ),
    ],
    ids=["head", "head-generator-4", "ctpa"],
)
def test_in_memory_path_matches_dicom_path(spec: ct.PhantomSpec, tmp_path: Path) -> None:
    """Same spec and seed: the model-grid volume of the in-memory path agrees statistically
    with writing DICOM, loading it and resampling it as the engine does."""
    study = ct.write_study(tmp_path, spec, seed=21, patient_id="P", accession="A")
    via_dicom = resample(
        load_volume(study.files), ct.model_shape(spec.task), ct.z_resampling(spec.task)
    )
    mem = ct.model_sample(spec, 21)
    a, b = via_dicom, mem.volume
    assert a.shape == b.shape
    assert abs(float(a.mean()) - float(b.mean())) < 3.0
    # same anatomy voxel by voxel, up to noise (white noise averaged over 4 x 4 pixels at 128,
    # only 2 x 2 at pe's 256: twice the spread)
    assert np.median(np.abs(a - b)) < 3.0 * a.shape[2] / 128
    soft = (a > 0) & (a < 80) & (b > 0) & (b < 80)
    assert abs(float(a[soft].std()) - float(b[soft].std())) < 1.5  # same noise after averaging
    lesion = mem.lesion > 0.9
    assert lesion.sum() > 10
    assert abs(float(np.median(a[lesion])) - float(np.median(b[lesion]))) < 10.0
    dicom_ml = ct.read_truth_mask(study.truth_mask).sum()  # type: ignore[arg-type]
    dicom_ml = dicom_ml * (spec.fov_mm / 512) ** 2 * spec.slice_thickness / 1000
    mem_ml = sum(les.volume_ml for les in mem.lesions)
    # The truth mask marks voxels whose slab is at least half lesion; the lesion's volume is the
    # mean over the planes of the slice profile: on 8 mm slices they differ by up to ~20 %.
    assert abs(dicom_ml - mem_ml) / mem_ml < (0.1 if spec.slice_thickness < 6 else 0.2)


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_in_memory_lesion_volume_counts_the_slices_it_did_not_paint(task: str) -> None:
    """The in-memory path paints only the slices its resampling reads (a third of a 1 mm
    series for pe); the lesion volume it reports is still that of the whole series."""
    spec = ct.PhantomSpec(
        task,  # type: ignore[arg-type]
        True,
        subtypes=("lobar",) if task == "pe" else ("intraparenchymal",),
        n_slices=150,
        slice_thickness=1.0,
        fov_mm=360.0 if task == "pe" else 230.0,
        noise_hu=8.0,
    )
    mem = ct.model_sample(spec, 31, shape=(64, 64, 64), supersample=2)
    z_all = z_positions(spec)
    _, _, full = ct.render(spec, 31, Grid.at(128, spec.fov_mm, z_all, spec.slice_thickness))
    mem_ml, full_ml = (sum(les.volume_ml for les in x) for x in (mem.lesions, full))
    assert full_ml > 0.1
    assert abs(mem_ml - full_ml) / full_ml < 0.1, (mem_ml, full_ml)


# ------------------------------------------------------------------ real anatomy, acquisition


def test_every_head_has_its_dural_venous_sinuses() -> None:
    """The superior sagittal sinus under the vertex (midline, wider at the back), the
    transverse/sigmoid sinuses low and lateral: blood at 42-70 HU that is not a bleed."""
    g = head_grid(n=48, thickness=2.5)
    for seed in (3, 8):
        head = draw_head(np.random.default_rng([seed, 0]))
        c = HeadCanvas(g, head)
        assert 42 <= head.sinus_hu <= 70
        assert c.sinus.any() and (c.sinus <= c.inside).all()
        values = c.vol[c.sinus]
        assert abs(float(np.median(values)) - head.sinus_hu) < 5  # texture only moves it a little
        zi, yi, xi = np.nonzero(c.sinus)
        x, y, z = g.x[0, 0, xi], g.y[0, yi, 0], g.z[zi, 0, 0]
        top = z > 0.6 * head.inner_axes[2]
        assert top.any() and np.abs(x[top]).max() < 8.0  # sagittal sinus: midline at the vertex
        low = z < head.cistern_z
        assert low.any() and np.abs(x[low]).max() > 30.0  # transverse/sigmoid: lateral
        assert y[low].mean() > 0  # posterior


def test_slice_profile_integrates_the_thickness() -> None:
    """A 5 mm slice is the mean of four planes across it: bone cut obliquely at the vertex gives
    values between brain and bone that no single plane has."""
    assert [ct.profile_samples(t) for t in (0.625, 1.25, 2.5, 3.0, 5.0, 8.0)] == [1, 1, 2, 2, 4, 4]
    spec = ct.PhantomSpec("ich", False, n_slices=8, slice_thickness=5.0)
    z = np.float32(z_positions(replace_n(spec, 28))[-8:])
    g = Grid.at(SMALL, 230.0, z, 5.0)
    vol, _, _ = ct.render(spec, 4, g)
    planes = [
        render_head(spec, 4, Grid.at(SMALL, 230.0, z + np.float32(d), 5.0))[0]
        for d in (-1.875, -0.625, 0.625, 1.875)
    ]
    assert np.allclose(vol, np.mean(planes, axis=0) + ct.SCANNERS[spec.scanner][3], atol=1e-3)
    single = planes[1]
    between = lambda v: ((v > 150) & (v < 600)).sum()  # noqa: E731
    assert between(vol) > 1.5 * between(single)


def replace_n(spec: ct.PhantomSpec, n: int) -> ct.PhantomSpec:
    from dataclasses import replace

    return replace(spec, n_slices=n)


def test_acquisition_offset_pose_and_kernel() -> None:
    g = head_grid(n=12, thickness=1.25)
    base = ct.PhantomSpec("ich", False, n_slices=12, slice_thickness=1.25)
    from dataclasses import replace

    plain, _, _ = ct.render(base, 7, g)
    shifted, _, _ = ct.render(replace(base, hu_offset=10.0), 7, g)
    assert np.allclose(shifted - plain, 10.0, atol=1e-3)
    # pose: the head turned and moved keeps its size; its centre moves by the shift
    posed, _, _ = ct.render(replace(base, rotation_deg=12.0, shift_mm=(10.0, -6.0)), 7, g)
    body0, body1 = plain > -500, posed > -500
    assert abs(int(body1.sum()) - int(body0.sum())) / body0.sum() < 0.03
    cx0 = float(g.x[0, 0, np.nonzero(body0)[2]].mean())
    cx1 = float(g.x[0, 0, np.nonzero(body1)[2]].mean())
    assert abs((cx1 - cx0) - 10.0) < 2.0
    # kernel: blur narrows the range at edges, sharpening overshoots beyond the bone's value
    blur, _, _ = ct.render(replace(base, kernel=-1.5), 7, g)
    sharp, _, _ = ct.render(replace(base, kernel=0.8), 7, g)
    assert blur.max() < plain.max() and sharp.max() > plain.max() + 50
    inner = HeadCanvas(g, draw_head(np.random.default_rng([7, 0]))).white
    assert abs(float(sharp[inner].mean()) - float(plain[inner].mean())) < 2.0  # flat: unchanged


def test_chest_detail_spine_table_veins_bronchi() -> None:
    g = chest_grid(thickness=2.5, n=60, size=256)
    plain, _, _ = render_chest(ct.PhantomSpec("pe", False), 5, g)
    chest = draw_chest(np.random.default_rng([5, 0]))
    assert 60 <= chest.marrow_hu <= 450
    spine = (g.x**2 + (g.y - 72.0) ** 2 <= 12.0**2) & np.ones(g.shape, bool)
    assert np.allclose(np.median(plain[spine]), chest.marrow_hu, atol=1.0)
    below = g.y[0, :, 0] > chest.body_axes[1] + 1.0  # the table, under the patient
    assert (plain[:, below, :] > 50).any()
    mucus, _, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("mucus_bronchi",)), 5, g)
    changed = mucus != plain
    assert changed.any() and ((mucus[changed] > 0) & (mucus[changed] < 50)).all()
    atel, _, _ = render_chest(ct.PhantomSpec("pe", False, mimics=("atelectasis",)), 5, g)
    changed = atel != plain
    assert changed.any() and (plain[changed] < -300).all() and (atel[changed] > 20).all()


def test_generator_5_puts_soft_tissue_inside_the_heart_chambers_and_nothing_else() -> None:
    """Papillary muscles, trabeculae, the moderator band and IVC inflow (generator 5): soft
    tissue against contrast inside the chambers; outside the heart the study is generator 4's,
    an embolus included."""
    g = chest_grid(thickness=2.5, n=60, size=256)
    for seed in (3, 8, 11):
        spec4 = ct.PhantomSpec("pe", True, subtypes=("lobar",), generator=4)
        spec5 = ct.PhantomSpec("pe", True, subtypes=("lobar",), generator=5)
        v4, m4, _ = render_chest(spec4, seed, g)
        v5, m5, _ = render_chest(spec5, seed, g)
        assert np.array_equal(m4, m5) and np.array_equal(v4[m4], v5[m5])
        changed = v4 != v5
        assert changed.sum() > 200, seed
        # only where generator 4 had contrast-filled chamber blood, now soft tissue or mixed
        assert (v4[changed] >= 200).all(), seed
        assert (v5[changed] < v4[changed]).all() and (v5[changed] >= 20).all(), seed
        heart = (g.z < -5.0) & (g.z > -115.0) & (g.y < 20.0) & np.ones(g.shape, bool)
        assert heart[changed].all(), seed
        assert ((v5[changed] > 20) & (v5[changed] < 70)).sum() > 50, seed  # muscle-dense
