"""The detection network (PyTorch; training-only dependency). One architecture, two tasks.

Input: HU volume [B, 64, 128, 128] (the engine's model contract). Inside the network:

1. fixed windowing into four channels: the task window (e.g. 0-90 HU for ``ich``, contrast
   for ``pe``), a wide bone/air window, a lesion-range indicator (acute blood ~70 HU / clot
   ~45 HU) and "context nearby" (bone / contrast-filled vessel within a few voxels, a max-pool);
2. per slice: 2 x 2 max-, mean- and min-pooling of the four channels (keeps a 2-voxel bleed or a
   dark filling defect visible at half resolution), two 2D conv layers -> [16, 32, 32] per slice;
3. a 2D head gives per-slice logits (max over the slice) -> ``slice_probabilities`` [B, 64];
4. three 3D conv layers (z folded by 4; in-plane dilated 3 x 3, then along z)
   -> localisation logits [B, 16, 32, 32]
   -> ``localization`` (sigmoid); the study logit is the maximum cell plus a learned
   affine map -> ``probability`` [B, 1].

~10 k parameters: it trains on 2 CPU cores in minutes. Trained on synthetic phantoms; not for
clinical use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WINDOWS = {  # task: (centre, half-width) of the task window, HU
    "ich": (45.0, 45.0),
    "pe": (150.0, 200.0),
}
# Fixed feature channels: (lesion-range centre, half-width; "context" HU threshold, its
# in-plane neighbourhood in voxels). ich: acute blood near 70 HU, bone (> 150 HU) nearby;
# pe: clot near 45 HU, contrast-filled vessel (> 180 HU) nearby.
FEATURES = {
    "ich": (70.0, 25.0, 150.0, 7),
    "pe": (45.0, 30.0, 180.0, 5),
}


class Detector(nn.Module):
    def __init__(self, task: str, width: int = 8) -> None:
        super().__init__()
        centre, half = WINDOWS[task]
        self.register_buffer("centre", torch.tensor(centre))
        self.register_buffer("halfwidth", torch.tensor(half))
        lesion_c, lesion_h, context_hu, reach = FEATURES[task]
        self.register_buffer("lesion_c", torch.tensor(lesion_c))
        self.register_buffer("lesion_h", torch.tensor(lesion_h))
        self.register_buffer("context_hu", torch.tensor(context_hu))
        self.reach = reach
        w = width
        self.c1 = nn.Conv2d(12, w, 3, padding=1)
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
        for head in (self.loc_head, self.slice_head):  # start from "no lesion" (p ~ 0.05)
            assert head.bias is not None
            nn.init.constant_(head.bias, -3.0)
        self.study_scale = nn.Parameter(torch.tensor(1.0))
        self.study_bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(study logit [B], slice logits [B, Z], localisation logits [B, Z/4, Y/4, X/4])."""
        b, z, h, w = volume.shape
        centre, half = self.centre, self.halfwidth
        lc, lh, ctx = self.lesion_c, self.lesion_h, self.context_hu
        assert isinstance(centre, torch.Tensor) and isinstance(half, torch.Tensor)
        assert isinstance(lc, torch.Tensor) and isinstance(lh, torch.Tensor)
        assert isinstance(ctx, torch.Tensor)
        task = ((volume - centre) / half).clamp(-1.5, 2.0)
        wide = (volume / 500.0).clamp(-2.0, 3.0)
        lesion_like = (1.0 - (volume - lc).abs() / lh).clamp(0.0, 1.0)
        context = (volume > ctx).to(volume.dtype).reshape(b * z, 1, h, w)
        near = F.max_pool2d(context, self.reach, stride=1, padding=self.reach // 2)
        x = torch.stack([task, wide, lesion_like], dim=2).reshape(b * z, 3, h, w)
        x = torch.cat([x, near], dim=1)
        x = torch.cat([F.max_pool2d(x, 2), F.avg_pool2d(x, 2), -F.max_pool2d(-x, 2)], dim=1)
        act = F.leaky_relu
        x = act(self.b1(self.c1(x)), 0.1)
        x = act(self.b2(self.c2(x)), 0.1)  # [B*Z, C, H/4, W/4]
        slice_logits = self.slice_head(x).amax(dim=(1, 2, 3)).reshape(b, z)
        c = x.shape[1]
        x = x.reshape(b, z, c, h // 4, w // 4).permute(0, 2, 1, 3, 4)
        x = act(self.b3(self.c3(x)), 0.1)
        x = act(self.b5(self.c5(act(self.b4(self.c4(x)), 0.1))), 0.1) + x
        loc = self.loc_head(x)[:, 0]  # [B, Z/4, H/4, W/4]
        study = loc.amax(dim=(1, 2, 3)) * self.study_scale + self.study_bias
        return study, slice_logits, loc


class Exported(nn.Module):
    """The contract's outputs: probability [B, 1], slice_probabilities [B, Z], localization
    [B, Z/4, Y/4, X/4], all in [0, 1]."""

    def __init__(self, net: Detector) -> None:
        super().__init__()
        self.net = net

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        study, slices, loc = self.net(volume)
        return torch.sigmoid(study)[:, None], torch.sigmoid(slices), torch.sigmoid(loc)
