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


def test_inside_is_the_area_within_a_closed_outline() -> None:
    from triage.training.nets import inside

    m = torch.zeros(1, 1, 16, 16)
    m[0, 0, 2, 2:14] = m[0, 0, 13, 2:14] = 1.0
    m[0, 0, 2:14, 2] = m[0, 0, 2:14, 13] = 1.0  # a square "skull"
    got = inside(m)[0, 0]
    assert got[3:13, 3:13].min() == 1.0
    assert got[0, 0] == 0.0 and got[8, 15] == 0.0 and got[8, 0] == 0.0


@pytest.mark.parametrize("task", ["ich", "pe"])
def test_features_are_left_right_symmetric_and_forward_is_head_of_features(task: str) -> None:
    """Training flips precomputed feature crops instead of volumes: that is only right when
    the features of a flipped volume are the flipped features."""
    from triage.training.nets import N_FEATURES, Detector

    torch.manual_seed(0)
    net = Detector(task, 4).eval()
    volume = torch.randn(1, 8, 32, 32) * 300.0
    volume[:, :, 10:20, 10:20] = 400.0
    volume[:, :, 14, 14] = 45.0
    with torch.no_grad():
        f = net.features(volume)
        assert f.shape == (8, N_FEATURES, 16, 16)
        assert torch.allclose(net.features(volume.flip(-1)), f.flip(-1), atol=1e-6)
        study, slices, loc = net(volume)
        again = net.head(f, 1, 8)
    assert torch.allclose(study, again[0]) and torch.allclose(loc, again[2])
    assert slices.shape == (1, 8) and loc.shape == (1, 2, 8, 8)
