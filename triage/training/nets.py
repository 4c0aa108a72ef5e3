"""The detection network (PyTorch; training-only dependency). One architecture, two tasks.

Input: HU volume [B, 64, S, S] (the engine's model contract: S = 128 for ich, 256 for pe,
:data:`triage.synth.ct.MODEL_SHAPES`). Inside the network:

1. **Fixed feature channels** (:meth:`Detector.features`, nothing learned), at full resolution
   then on a 64 x 64 grid [B*64, 18, 64, 64] (cells of 2 x 2 voxels at S = 128, 4 x 4 at 256;
   the in-plane reaches below are in 128-grid voxels, scaled with S): task and wide windows of
   the max / mean / min of HU per cell; a lesion-range indicator (acute blood ~70 HU, clot ~45
   HU) and its erosion (a blob, not a one-voxel partial-volume edge between bone or contrast and
   softer tissue); "dense" (bone > 150 HU / contrast > 180 HU) nearby; "enclosed": dense on both
   sides of a voxel within a few voxels, in plane or along z (a filling defect inside a
   contrast-filled vessel); a dip below the brightest voxel nearby (a defect partly filling the
   lumen); "inside": dense somewhere left, right, above and below (within the skull).
2. **Learned, per slice**: a 1 x 1 convolution over the features, a 3 x 3 and a stride-2 3 x 3
   convolution -> [2w, 32, 32]; a 2D head gives per-slice logits (max over the slice) ->
   ``slice_probabilities`` [B, 64].
3. **Learned, 3D**: z folded by 4, an in-plane dilated 3 x 3, then along z -> localisation
   logits [B, 16, 32, 32] -> ``localization`` (sigmoid); the study logit is the maximum cell
   times a learned scale plus a bias -> ``probability`` [B, 1].

The features depend only on the input, so training computes them once per phantom and trains
the learned part on crops (:func:`triage.training.train.fit`); the exported graph computes
them itself. Trained on synthetic phantoms; not for clinical use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from triage.synth.ct import model_shape

N_FEATURES = 18  # the "fixed" front end (every shipped model so far)
# Front ends: "fixed" (the 18 channels below); "contrast" adds 4 channels for blood that the
# fixed lesion range and its opening miss - thin subarachnoid blood mixed with CSF, small or
# partial-volume bleeds: a lower, wider lesion range without opening, and the voxel's
# excess over its own neighbourhood (a 3 x 3 mean minus the mean of the soft tissue and CSF
# within 13 x 13 voxels), as its maximum, mean and 2 x 2 opening per cell.
# "learned" is "contrast" plus a learned branch on the HU voxels themselves (two 3 x 3
# convolutions at full resolution, their maximum and mean per cell: LEARNED_CHANNELS more).
# "enclosure" is "fixed" plus 2 channels for a defect inside a lumen rather than tissue
# between two lumens (or against a heart chamber): lesion-range voxels enclosed by dense on
# both in-plane axes (left-right and above-below), not on either, and their 2 x 2 opening
# (maximum per cell).
FRONT_ENDS = {
    "fixed": N_FEATURES,
    "contrast": N_FEATURES + 4,
    "learned": N_FEATURES + 4,
    "enclosure": N_FEATURES + 2,
    "lumen": N_FEATURES + 2,
}
# "lumen" is "enclosure" with the ring taken on contrast only: dense voxels more than
# LUMEN_BONE_REACH (128-grid voxels) from any voxel over BONE_HU, so that a ring of ribs or a
# vertebral cortex round soft tissue is not read as a ring of contrast round a defect.
BONE_HU = 700.0
LUMEN_BONE_REACH = 2
LEARNED_WIDTH = 8
LEARNED_CHANNELS = 2 * LEARNED_WIDTH
LOW_LESION = (58.0, 18.0)  # centre, half-width (HU): 40-76, mixed / partial-volume blood
CONTRAST = (13, -5.0, 90.0, 20.0, 100.0, 20.0)  # window (128-grid px); neighbourhood HU range;
# the 3 x 3 mean's HU range that counts; HU per unit of excess
WINDOWS = {  # task: (centre, half-width) of the task window, HU
    "ich": (45.0, 45.0),
    "pe": (150.0, 200.0),
}
# lesion centre, half-width; dense HU threshold; in-plane reach (px, model grid) of
# "enclosed by dense" for a lesion voxel
FEATURES = {
    "ich": (70.0, 25.0, 150.0, 3),
    "pe": (45.0, 30.0, 180.0, 4),
}
# The study's own soft tissue as its HU reference: (window low, high) of the first mean, half
# width of the second, and the value the reference is moved to. The brain (ich) or the chest's
# muscle and mediastinum (pe) of any scanner, calibration offset or patient then sit where the
# windows below expect them, and a bleed or a clot is judged against its own surroundings.
REFERENCE = {
    "ich": (10.0, 65.0, 12.0, 33.0),
    "pe": (0.0, 100.0, 20.0, 45.0),
}
MAX_REFERENCE_SHIFT = 25.0  # HU; past it the input checks call the scale uncalibrated


def _reach(m: torch.Tensor, r: int, dim: int, sign: int) -> torch.Tensor:
    """Per element of ``m`` (values >= 0): the maximum of ``m`` at 1..``r`` steps along ``dim``
    toward lower (``sign`` > 0) or higher indices, 0 past the edge; one 1-D max pool (the
    same values as the maximum of the ``r`` shifted copies, without ``r`` full-size copies)."""
    dim %= m.dim()  # non-negative: ONNX Transpose takes no negative axes
    last = m.dim() - 1
    x = m.movedim(dim, last)
    shape = x.shape
    x = F.pad(x.reshape(-1, 1, shape[-1]), (r, 0) if sign > 0 else (0, r))
    out = F.max_pool1d(x, r, stride=1)
    out = out[..., :-1] if sign > 0 else out[..., 1:]
    return out.reshape(shape).movedim(last, dim)


def _max_square(m: torch.Tensor, k: int) -> torch.Tensor:
    """``F.max_pool2d(m, k, stride=1, padding=k // 2)`` (odd ``k``) as two 1-D passes: the
    same values, O(k) instead of O(k^2) per element (a 13 x 13 window on a 256 grid)."""
    p = k // 2
    rows = F.max_pool2d(m, (1, k), stride=1, padding=(0, p))
    return F.max_pool2d(rows, (k, 1), stride=1, padding=(p, 0))


def _opening2(m: torch.Tensor) -> torch.Tensor:
    """Grey-level opening of ``m`` [..., H, W] (values in [0, 1]) by a 2 x 2 square: a voxel
    keeps its value only as part of a 2 x 2 block at least that high (one-voxel-wide edges
    vanish). Symmetric under flips, unlike a bare 2 x 2 erosion."""
    eroded = -F.max_pool2d(F.pad(-m, (0, 1, 0, 1), value=0.0), 2, stride=1)  # outside: 0
    return F.max_pool2d(F.pad(eroded, (1, 0, 1, 0), value=0.0), 2, stride=1)


def _box_mean(m: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of ``m`` [..., H, W] over a k x k square (odd ``k``; zeros past the edge), as
    two 1-D passes."""
    p = k // 2
    rows = F.avg_pool2d(m, (1, k), stride=1, padding=(0, p), count_include_pad=True)
    return F.avg_pool2d(rows, (k, 1), stride=1, padding=(p, 0), count_include_pad=True)


def _axes(m: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pixel of ``m`` [..., H, W]: dense left and right, and dense above and below, within
    ``r`` pixels."""
    lr = torch.minimum(_reach(m, r, -1, 1), _reach(m, r, -1, -1))
    ud = torch.minimum(_reach(m, r, -2, 1), _reach(m, r, -2, -1))
    return lr, ud


def enclosed(m: torch.Tensor, r: int) -> torch.Tensor:
    """Per pixel of ``m`` [..., H, W]: dense on both sides (left and right, or above and below)
    within ``r`` pixels."""
    return torch.maximum(*_axes(m, r))


def enclosed_both(m: torch.Tensor, r: int) -> torch.Tensor:
    """Per pixel of ``m`` [..., H, W]: dense on all four sides (left, right, above and below)
    within ``r`` pixels - inside a ring, as a defect within a contrast-filled lumen, not
    between two lumens side by side."""
    return torch.minimum(*_axes(m, r))


def inside(m: torch.Tensor) -> torch.Tensor:
    """Per pixel of binary ``m`` [..., H, W]: some dense pixel left, right, above and below
    (any distance) - e.g. within the skull."""
    out = None
    for dim in (-1, -2):
        c = torch.cumsum(m, dim=dim)
        before = c - m
        after = c.narrow(dim, m.shape[dim] - 1, 1) - c
        both = torch.minimum(before, after).clamp(0.0, 1.0)
        out = both if out is None else torch.minimum(out, both)
    assert out is not None
    return out


class Detector(nn.Module):
    # fixed parameters (buffers: saved with the weights, exported as constants)
    centre: torch.Tensor
    halfwidth: torch.Tensor
    lesion_c: torch.Tensor
    lesion_h: torch.Tensor
    dense_hu: torch.Tensor
    reference: torch.Tensor

    def __init__(
        self, task: str, width: int = 12, size: int | None = None, front: str = "fixed"
    ) -> None:
        super().__init__()
        if front not in FRONT_ENDS:
            raise ValueError(f"front end {front!r}: one of {sorted(FRONT_ENDS)}")
        self.front = front
        size = size or model_shape(task)[2]
        if size % 128:
            raise ValueError(f"input size {size} is not a multiple of 128")
        self.scale = size // 128  # input voxels per 128-grid voxel, in plane
        centre, half = WINDOWS[task]
        lc, lh, dense, enc = FEATURES[task]
        self.register_buffer("centre", torch.tensor(centre))
        self.register_buffer("halfwidth", torch.tensor(half))
        self.register_buffer("lesion_c", torch.tensor(lc))
        self.register_buffer("lesion_h", torch.tensor(lh))
        self.register_buffer("dense_hu", torch.tensor(dense))
        self.register_buffer("reference", torch.tensor(REFERENCE[task]))
        self.task = task
        self.enc = enc
        n_feat = FRONT_ENDS[front]
        self.learned = front == "learned"
        if self.learned:
            n_feat += LEARNED_CHANNELS
            lw = LEARNED_WIDTH
            self.r0 = nn.Conv2d(2, lw, 3, padding=1)
            self.rb0 = nn.BatchNorm2d(lw)
            self.r1 = nn.Conv2d(lw, lw, 3, padding=1)
            self.rb1 = nn.BatchNorm2d(lw)
        w = width
        self.c0 = nn.Conv2d(n_feat, w, 1)
        self.b0 = nn.BatchNorm2d(w)
        self.c1 = nn.Conv2d(w, w, 3, padding=1)
        self.b1 = nn.BatchNorm2d(w)
        self.c2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.b2 = nn.BatchNorm2d(2 * w)
        self.slice_head = nn.Conv2d(2 * w, 1, 1)
        self.c3 = nn.Conv3d(2 * w, 2 * w, (4, 1, 1), stride=(4, 1, 1))
        self.b3 = nn.BatchNorm3d(2 * w)
        self.c4 = nn.Conv3d(2 * w, 2 * w, (1, 3, 3), padding=(0, 2, 2), dilation=(1, 2, 2))
        self.b4 = nn.BatchNorm3d(2 * w)
        self.c5 = nn.Conv3d(2 * w, 2 * w, (3, 1, 1), padding=(1, 0, 0))
        self.b5 = nn.BatchNorm3d(2 * w)
        self.loc_head = nn.Conv3d(2 * w, 1, 1)
        for head in (self.loc_head, self.slice_head):
            assert head.bias is not None
            nn.init.constant_(head.bias, -3.0)
        self.study_scale = nn.Parameter(torch.tensor(1.0))
        self.study_bias = nn.Parameter(torch.tensor(0.0))

    def _lesion(self, v: torch.Tensor) -> torch.Tensor:
        return (1.0 - (v - self.lesion_c).abs() / self.lesion_h).clamp(0.0, 1.0)

    def _task(self, v: torch.Tensor) -> torch.Tensor:
        return ((v - self.centre) / self.halfwidth).clamp(-1.5, 2.0)

    def normalise(self, volume: torch.Tensor) -> torch.Tensor:
        """``volume`` [B, Z, H, W] shifted so that its soft-tissue reference (:data:`REFERENCE`:
        the mean of the voxels in a soft-tissue window, then the mean of those within a half
        width of it) lands on the reference value; the shift is at most
        :data:`MAX_REFERENCE_SHIFT`. A calibration offset or a denser brain no longer looks
        like blood."""
        lo, hi, half, value = self.reference.unbind()
        dims = (1, 2, 3)
        m = ((volume >= lo) & (volume <= hi)).to(volume.dtype)
        m1 = (volume * m).sum(dim=dims) / m.sum(dim=dims).clamp(min=1.0)
        m = ((volume - m1[:, None, None, None]).abs() <= half).to(volume.dtype)
        m2 = (volume * m).sum(dim=dims) / m.sum(dim=dims).clamp(min=1.0)
        shift = (m2 - value).clamp(-MAX_REFERENCE_SHIFT, MAX_REFERENCE_SHIFT)
        return volume - shift[:, None, None, None]

    def features(self, volume: torch.Tensor) -> torch.Tensor:
        """Fixed (not learned) channels on the 64 x 64 cell grid [B*Z, C, 64, 64] (C:
        :data:`FRONT_ENDS` of the front end), of the volume after :meth:`normalise`."""
        b, z, h, w = volume.shape
        s = self.scale
        cell = 2 * s  # input voxels per feature cell, in plane
        v = self.normalise(volume).reshape(b * z, 1, h, w)
        # full resolution: a lesion-range voxel enclosed by dense (contrast / bone) voxels,
        # in plane or along z
        dense = (v > self.dense_hu).to(v.dtype)
        lesion = self._lesion(v)
        enc = enclosed(dense, self.enc * s)
        dz = dense.reshape(b, z, h, w)
        encz = torch.minimum(_reach(dz, 2, 1, 1), _reach(dz, 2, 1, -1)).reshape(b * z, 1, h, w)
        # a filling defect / dip: clearly below the brightest voxel nearby, enclosed
        local = _max_square(v, 4 * s + 1)
        dip = ((local - v - 80.0) / 150.0).clamp(0.0, 1.0) * (local > self.dense_hu).to(v.dtype)
        dip = dip * torch.maximum(enc, encz)
        dip_enc = F.max_pool2d(dip, cell)
        dip_avg = F.avg_pool2d(dip, cell)
        # lesion-range blobs, not one-voxel partial-volume edges: erosion at full resolution
        core_full = _opening2(lesion)
        air = (v < -400.0).to(v.dtype)
        near_air = _max_square(air, 4 * s + 1)
        near_dense = _max_square(dense, 6 * s + 1)
        core_max = F.max_pool2d(core_full, cell)
        core_air = F.max_pool2d(core_full * near_air * near_dense, cell)
        core_dense = F.max_pool2d(core_full * near_dense, cell)
        lesion_enc = F.max_pool2d(lesion * enc, cell)
        lesion_encz = F.max_pool2d(lesion * encz, cell)
        # cell grid: max / mean / min of HU, then windows
        hmax = F.max_pool2d(v, cell)
        havg = F.avg_pool2d(v, cell)
        hmin = -F.max_pool2d(-v, cell)
        dense2 = (hmax > self.dense_hu).to(v.dtype)
        near = _max_square(dense2, 3)
        within = inside(dense2)
        core = -_max_square(-self._lesion(havg), 3)
        extra = []
        if self.front in ("contrast", "learned"):
            extra = self._contrast(v, cell)
        elif self.front in ("enclosure", "lumen"):
            ring = dense
            if self.front == "lumen":
                bone = (v > BONE_HU).to(v.dtype)
                ring = dense * (1.0 - _max_square(bone, 2 * LUMEN_BONE_REACH * s + 1))
            both = enclosed_both(ring, self.enc * s)
            extra = [F.max_pool2d(lesion * both, cell), F.max_pool2d(core_full * both, cell)]
        return torch.cat(
            [
                self._task(havg),
                self._task(hmax),
                self._task(hmin),
                (havg / 500.0).clamp(-2.0, 3.0),
                self._lesion(havg),
                self._lesion(hmin),
                core,
                near,
                within,
                lesion_enc,
                lesion_encz,
                lesion_enc * within,
                dip_enc,
                dip_avg,
                core_max,
                core_air,
                core_dense,
                self._lesion(hmax),
                *extra,
            ],
            dim=1,
        )

    def _contrast(self, v: torch.Tensor, cell: int) -> list[torch.Tensor]:
        """The "contrast" front end's channels of normalised ``v`` [N, 1, H, W] (see
        :data:`FRONT_ENDS`): the lower lesion range's maximum per cell, and the excess over
        the neighbourhood's maximum, mean and opening per cell."""
        s = self.scale
        lc, lh = LOW_LESION
        low = (1.0 - (v - lc).abs() / lh).clamp(0.0, 1.0)
        k, lo, hi, s_lo, s_hi, unit = CONTRAST
        m = ((v > lo) & (v < hi)).to(v.dtype)
        near = _box_mean(v * m, k * s) / _box_mean(m, k * s).clamp(min=1e-3)
        s3 = _box_mean(v, 2 * s + 1)
        excess = ((s3 - near) / unit).clamp(0.0, 3.0) * ((s3 > s_lo) & (s3 < s_hi)).to(v.dtype)
        return [
            F.max_pool2d(low, cell),
            F.max_pool2d(excess, cell),
            F.avg_pool2d(excess, cell),
            F.max_pool2d(_opening2(excess / 3.0), cell),
        ]

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, z = volume.shape[:2]
        with torch.no_grad():
            x = self.features(volume)
            raw = self.normalise(volume) if self.learned else None
        return self.head(x, b, z, raw)

    def head(
        self, x: torch.Tensor, b: int, z: int, raw: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The learned part, on :meth:`features` [B*Z, C, G, G] (G = 64) and, for the
        "learned" front end, the normalised HU ``raw`` [B, Z, H, W] of the same voxels."""
        h, w = x.shape[-2] * 2, x.shape[-1] * 2  # in 128-grid voxels
        act = F.leaky_relu
        if self.learned:
            if raw is None:
                raise ValueError("the learned front end needs the normalised HU voxels")
            cell = raw.shape[-1] // x.shape[-1]
            r = raw.reshape(-1, 1, *raw.shape[-2:])
            r = torch.cat([((r - 40.0) / 40.0).clamp(-1.5, 2.0), (r / 500.0).clamp(-2.0, 3.0)], 1)
            r = act(self.rb0(self.r0(r)), 0.1)
            r = act(self.rb1(self.r1(r)), 0.1)
            x = torch.cat([x, F.max_pool2d(r, cell), F.avg_pool2d(r, cell)], dim=1)
        x = act(self.b0(self.c0(x)), 0.1)
        x = act(self.b1(self.c1(x)), 0.1)
        x = act(self.b2(self.c2(x)), 0.1)
        slice_logits = self.slice_head(x).amax(dim=(1, 2, 3)).reshape(b, z)
        c = x.shape[1]
        x = x.reshape(b, z, c, h // 4, w // 4).permute(0, 2, 1, 3, 4)
        x = act(self.b3(self.c3(x)), 0.1)
        x = act(self.b5(self.c5(act(self.b4(self.c4(x)), 0.1))), 0.1) + x
        loc = self.loc_head(x)[:, 0]
        study = loc.amax(dim=(1, 2, 3)) * self.study_scale + self.study_bias
        return study, slice_logits, loc


class Exported(nn.Module):
    """The contract's outputs: probability [B, 1], slice_probabilities [B, Z], localization
    [B, Z/4, 32, 32] (cells of 4 x 4 voxels on a 128 grid, 8 x 8 on 256), all in [0, 1]."""

    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.net = net

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        study, slices, loc = self.net(volume)
        return torch.sigmoid(study)[:, None], torch.sigmoid(slices), torch.sigmoid(loc)
