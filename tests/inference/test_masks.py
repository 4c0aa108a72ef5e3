"""In-plane mask morphology (triage/inference/masks.py), shared by the input checks and the
training augmentation."""

from __future__ import annotations

import numpy as np

from triage.inference.masks import dilate_inplane, erode_inplane


def test_dilation_adds_the_four_in_plane_neighbours_and_never_the_next_slice() -> None:
    m = np.zeros((3, 5, 5), bool)
    m[1, 2, 2] = True
    d = dilate_inplane(m)
    assert d[1].sum() == 5 and d[1, 1, 2] and d[1, 3, 2] and d[1, 2, 1] and d[1, 2, 3]
    assert not d[1, 1, 1]  # no diagonal
    assert not d[0].any() and not d[2].any()
    assert m.sum() == 1  # the input is left as it was


def test_dilation_stops_at_the_border_and_takes_2d_masks() -> None:
    m = np.zeros((4, 4), bool)
    m[0, 0] = True
    assert dilate_inplane(m).sum() == 3


def test_erosion_keeps_only_voxels_whose_neighbours_are_all_set() -> None:
    m = np.zeros((1, 5, 5), bool)
    m[0, 1:4, 1:4] = True
    e = erode_inplane(m)
    assert e.sum() == 1 and e[0, 2, 2]
    # a plus-shaped dilation of the centre is eroded back to it
    assert (erode_inplane(dilate_inplane(e)) == e).all()
