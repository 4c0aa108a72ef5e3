"""The detector's fixed feature functions and the properties training relies on. Skipped when
PyTorch (the optional `train` group) is not installed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is the optional 'train' group: pip install -e '.[train]'"
)


def test_enclosed_marks_a_defect_inside_a_vessel_not_a_node_beside_it() -> None:
    from triage.training.nets import enclosed

    m = torch.zeros(1, 1, 20, 20)
    m[0, 0, 5:10, 5:10] = 1.0  # a vessel cross-section ...
    m[0, 0, 7, 7] = 0.0  # ... with a filling defect in its middle
    m[0, 0, 14, 3:8] = 1.0  # a vessel seen lengthwise, a node below it
    enc = enclosed(m, 3)[0, 0]
    assert enc[7, 7] == 1.0  # contrast on both sides
    assert enc[16, 5] == 0.0  # contrast above only
    assert enc[7, 15] == 0.0  # far from everything
    assert enclosed(m, 1)[0, 0, 3, 7] == 0.0  # reach 1: the vessel's edge is not "inside"


def test_enclosed_both_is_a_defect_in_a_ring_not_tissue_between_two_lumens() -> None:
    from triage.training.nets import enclosed, enclosed_both

    m = torch.zeros(1, 1, 24, 24)
    m[0, 0, 3:10, 3:10] = 1.0  # a vessel cross-section ...
    m[0, 0, 6, 6] = 0.0  # ... with a filling defect in its middle
    m[0, 0, 14:20, 2:6] = m[0, 0, 14:20, 9:13] = 1.0  # two lumens side by side
    both, either = enclosed_both(m, 3)[0, 0], enclosed(m, 3)[0, 0]
    assert both[6, 6] == 1.0 and either[6, 6] == 1.0
    assert either[16, 7] == 1.0 and both[16, 7] == 0.0  # between the two: one axis only
    assert (both <= either).all()


def test_inside_is_the_area_within_a_closed_outline() -> None:
    from triage.training.nets import inside

    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 2, 2:14] = m[0, 0, 13, 2:14] = 1.0
    m[0, 0, 2:14, 2] = m[0, 0, 2:14, 13] = 1.0  # a square "skull"
    got = inside(m)[0, 0]
    assert got[3:13, 3:13].min() == 1.0
    assert got[0, 0] == 0.0 and got[8, 15] == 0.0 and got[8, 0] == 0.0


@pytest.mark.parametrize(
    ("task", "front"),
    [("ich", "fixed"), ("pe", "fixed"), ("ich", "contrast"), ("pe", "enclosure"), ("pe", "lumen")],
)
def test_features_are_left_right_symmetric_and_forward_is_head_of_features(
    task: str, front: str
) -> None:
    """Training flips precomputed feature crops instead of volumes: that is only right when
    the features of a flipped volume are the flipped features."""
    from triage.training.nets import FRONT_ENDS, Detector

    torch.manual_seed(0)
    net = Detector(task, 4, front=front).eval()
    k = net.scale  # pe takes a 2x finer in-plane grid; the feature grid is the same
    volume = torch.randn(1, 8, 32 * k, 32 * k) * 300.0
    volume[:, :, 10 * k : 20 * k, 10 * k : 20 * k] = 400.0
    volume[:, :, 14 * k : 15 * k, 14 * k : 15 * k] = 45.0
    with torch.no_grad():
        f = net.features(volume)
        assert f.shape == (8, FRONT_ENDS[front], 16, 16)
        assert torch.allclose(net.features(volume.flip(-1)), f.flip(-1), atol=1e-6)
        study, slices, loc = net(volume)
        again = net.head(f, 1, 8)
    assert torch.allclose(study, again[0]) and torch.allclose(loc, again[2])
    assert slices.shape == (1, 8) and loc.shape == (1, 2, 8, 8)


def test_the_feature_grid_is_the_same_for_both_input_sizes() -> None:
    """pe's 256 x 256 input gives the same 64 x 64 feature grid as ich's 128 x 128 (cells of
    4 x 4 instead of 2 x 2 voxels), and a volume drawn at 128 and repeated 2 x 2 gives nearly
    the same per-cell HU channels at both sizes."""
    from triage.training.nets import Detector

    with pytest.raises(ValueError, match="multiple of 128"):
        Detector("pe", 4, size=200)
    torch.manual_seed(1)
    coarse = torch.randn(1, 4, 128, 128) * 200.0
    fine = coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    a = Detector("pe", 4, size=128).eval()
    b = Detector("pe", 4).eval()
    assert (a.scale, b.scale) == (1, 2)
    with torch.no_grad():
        fa, fb = a.features(coarse), b.features(fine)
    assert fa.shape == fb.shape == (4, 18, 64, 64)
    assert torch.allclose(fa[:, :4], fb[:, :4], atol=1e-4)  # windows of mean / max / min HU


def test_reach_and_square_max_are_the_plain_definitions() -> None:
    """The pooled forms give exactly the maximum of shifted copies / the 2-D max pool."""
    import torch.nn.functional as F

    from triage.training.nets import _max_square, _reach

    def _shift(m: torch.Tensor, k: int, dim: int) -> torch.Tensor:
        """``m`` moved by ``k`` along ``dim`` (k > 0: value at i comes from i - k), zero filled."""
        n = m.shape[dim]
        pad = torch.zeros_like(m.narrow(dim, 0, abs(k)))
        if k > 0:
            return torch.cat([pad, m.narrow(dim, 0, n - k)], dim=dim)
        return torch.cat([m.narrow(dim, -k, n + k), pad], dim=dim)

    torch.manual_seed(2)
    m = (torch.rand(9, 1, 17, 23) > 0.7).float() * torch.rand(9, 1, 17, 23)
    for dim in (-1, -2, 0):  # in plane, and along the first axis (z in the network)
        for sign in (1, -1):
            for r in (1, 2, 3, 8):
                want = _shift(m, sign, dim)
                for k in range(2, r + 1):
                    want = torch.maximum(want, _shift(m, sign * k, dim))
                assert torch.equal(_reach(m, r, dim, sign), want)
    v = torch.randn(2, 1, 19, 21) * 100.0
    for k in (3, 5, 9, 13):
        assert torch.equal(_max_square(v, k), F.max_pool2d(v, k, stride=1, padding=k // 2))


def _head_slice(blood_hu: float | None) -> torch.Tensor:
    """One 128 x 128 slice: a skull ring (1200 HU) around brain at 36 HU with sulci of CSF
    (5 HU, 2 voxels wide) near the cortex; ``blood_hu``: the sulci of one region hold blood
    mixed with CSF at that HU instead."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    r = torch.hypot(yy - 64.0, xx - 64.0)
    v = torch.full((128, 128), -1000.0)
    v[r < 56] = 1200.0
    v[r < 50] = 36.0
    sulci = (r > 38) & (r < 46) & (torch.remainder(torch.atan2(yy - 64, xx - 64) * 40, 6.3) < 1.0)
    v[sulci] = 5.0
    if blood_hu is not None:
        v[sulci & (xx > 90)] = blood_hu
    return v[None, None].repeat(1, 4, 1, 1)


def test_the_contrast_front_end_marks_thin_blood_in_sulci_more_than_the_fixed_one() -> None:
    """Subarachnoid blood mixed with CSF (55 HU) in sulci a voxel or two wide: the fixed
    lesion range (70 +- 25 HU, after the soft-tissue reference) gives it a weak response;
    the contrast front end's lower range and its excess over the neighbourhood give it a
    clearly stronger one than the same head with CSF in those sulci."""
    from triage.training.nets import N_FEATURES, Detector

    net = Detector("ich", 4, front="contrast").eval()
    with torch.no_grad():
        bleed = net.features(_head_slice(55.0))[1]  # [C, 64, 64] of one slice
        clean = net.features(_head_slice(None))[1]
    right = (slice(16, 48), slice(44, 56))  # cells of the blood-filled sulci
    brain = (slice(8, 56), slice(8, 56))

    def peak(f: torch.Tensor, channel: int, where: tuple[slice, slice]) -> float:
        return float(f[channel][where].max())

    core_max = 14  # the fixed front end's lesion opening, maximum per cell
    low, excess_max, excess_avg = N_FEATURES, N_FEATURES + 1, N_FEATURES + 2
    assert peak(bleed, core_max, right) < 0.4
    assert peak(clean, low, brain) == 0.0 and peak(bleed, low, right) > 0.6
    for ch in (excess_max, excess_avg):
        assert peak(bleed, ch, right) > 2.0 * peak(clean, ch, brain)


def test_the_fixed_front_end_is_the_default_and_unchanged_by_the_option() -> None:
    """The shipped models' 18 channels are the first 18 of the contrast front end (the new
    ones are appended), and an unknown front end is refused."""
    from triage.training.nets import N_FEATURES, Detector

    torch.manual_seed(2)
    volume = torch.randn(1, 4, 128, 128) * 200.0
    with torch.no_grad():
        fixed = Detector("ich", 4).features(volume)
        wider = Detector("ich", 4, front="contrast").features(volume)
    assert fixed.shape[1] == N_FEATURES and wider.shape[1] == N_FEATURES + 4
    assert torch.equal(fixed, wider[:, :N_FEATURES])
    with pytest.raises(ValueError, match="front end"):
        Detector("ich", 4, front="windows")


def test_the_learned_front_end_reads_the_normalised_voxels_beside_the_fixed_channels() -> None:
    """The "learned" front end: training feeds the head the precomputed channels and the
    normalised HU of the same crop; forward computes both itself and gives the same outputs;
    the head refuses to run without the voxels; gradients reach the voxel convolutions."""
    from triage.training.nets import FRONT_ENDS, LEARNED_CHANNELS, Detector

    torch.manual_seed(3)
    net = Detector("ich", 4, front="learned").eval()
    volume = torch.randn(1, 8, 32, 32) * 30.0 + 35.0
    with torch.no_grad():
        f = net.features(volume)
        assert f.shape == (8, FRONT_ENDS["learned"], 16, 16)
        assert net.c0.in_channels == FRONT_ENDS["learned"] + LEARNED_CHANNELS
        study, _, loc = net(volume)
        again = net.head(f, 1, 8, net.normalise(volume))
    assert torch.allclose(study, again[0]) and torch.allclose(loc, again[2])
    with pytest.raises(ValueError, match="voxels"):
        net.head(f, 1, 8)
    net.train()
    net.head(f, 1, 8, net.normalise(volume))[0].sum().backward()
    assert net.r0.weight.grad is not None and float(net.r0.weight.grad.abs().sum()) > 0.0


def test_the_lumen_front_end_reads_a_ring_of_contrast_not_a_ring_of_bone() -> None:
    """Soft tissue ringed by contrast (a defect in an artery) and soft tissue ringed by bone
    (a mass between ribs): the "enclosure" front end marks both, "lumen" only the first."""
    from triage.training.nets import FRONT_ENDS, N_FEATURES, Detector

    volume = torch.full((1, 4, 128, 128), -800.0)
    for x0, ring_hu in ((20, 350.0), (80, 1000.0)):
        volume[:, :, 50:62, x0 : x0 + 12] = ring_hu
        volume[:, :, 54:58, x0 + 4 : x0 + 8] = 45.0  # soft tissue inside the ring
    got = {}
    for front in ("enclosure", "lumen"):
        net = Detector("pe", 4, size=128, front=front).eval()
        with torch.no_grad():
            f = net.features(volume)
        assert f.shape[1] == FRONT_ENDS[front]
        got[front] = f[:, N_FEATURES].amax(dim=0)  # lesion enclosed on both axes, per cell
    contrast, bone = (slice(25, 31), slice(10, 16)), (slice(25, 31), slice(40, 46))
    assert got["enclosure"][contrast].max() > 0.5 and got["enclosure"][bone].max() > 0.5
    assert got["lumen"][contrast].max() > 0.5 and got["lumen"][bone].max() == 0.0
