"""PLACEHOLDER pulmonary-embolism model for the Triton Python backend (numpy only).

NOT a trained network and NOT for clinical use. It computes a real, explainable statistic of the
input volume so that the engine can be exercised end to end on synthetic phantoms. The input is
already area-averaged to the model grid, so no further smoothing is applied.

1. contrast-enhanced vessel voxels: value within [VESSEL_LOW, VESSEL_HIGH] HU;
2. candidate filling-defect (thrombus) voxels: value within [CLOT_LOW, CLOT_HIGH] HU, not near
   bone (> BONE_HU dilated by BONE_MARGIN voxels), with vessel within REACH voxels in at least
   NEED of the four in-plane directions (+x, -x, +y, -y), with lung (< LUNG_HU) within
   LUNG_REACH voxels in some in-plane direction (a pulmonary artery, not the mediastinum), and
   present on both neighbouring slices (an embolus extends along the vessel);
3. the candidate count n is mapped through a logistic on log(1 + n):
   p = sigmoid(SLOPE * (log(1 + n) - log(1 + N_HALF))); per slice the same with N_HALF_SLICE.

Tensor contract (see models/README.md): input "volume" FP32 [B, 64, 128, 128] (HU, slices
inferior -> superior); outputs "probability" FP32 [B, 1] and "slice_probabilities" FP32 [B, 64].
A later issue replaces this file with a trained ONNX network under the same contract.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

SHAPE = (64, 128, 128)
VESSEL_LOW = 150.0
VESSEL_HIGH = 700.0
CLOT_LOW = 20.0
CLOT_HIGH = 70.0
BONE_HU = 700.0
BONE_MARGIN = 2
REACH = 3
NEED = 3
LUNG_HU = -500.0
LUNG_REACH = 4
N_HALF = 12.0
N_HALF_SLICE = 3.0
SLOPE = 2.0


def shifted(mask, axis, k):
    """mask moved by k voxels along axis (k > 0: out[i] = mask[i + k]); zeros shifted in."""
    out = np.zeros_like(mask)
    dst = [slice(None)] * 3
    src = [slice(None)] * 3
    if k > 0:
        dst[axis], src[axis] = slice(None, -k), slice(k, None)
    else:
        dst[axis], src[axis] = slice(-k, None), slice(None, k)
    out[tuple(dst)] = mask[tuple(src)]
    return out


def dilate(mask, r):
    """Binary dilation with a (2r+1)^3 cube (separable maximum)."""
    out = mask.copy()
    for axis in range(3):
        acc = out.copy()
        for k in range(1, r + 1):
            acc |= shifted(out, axis, k) | shifted(out, axis, -k)
        out = acc
    return out


def logistic(n, n_half):
    return 1.0 / (1.0 + np.exp(-SLOPE * (np.log1p(n) - np.log1p(n_half))))


def directions_hit(mask, reach):
    """Per voxel: in how many of the 4 in-plane directions ``mask`` lies within ``reach``."""
    hits = np.zeros(mask.shape, dtype=np.int8)
    for axis in (1, 2):
        for sign in (1, -1):
            hit = np.zeros_like(mask)
            for k in range(1, reach + 1):
                hit |= shifted(mask, axis, sign * k)
            hits += hit
    return hits


def score(vol):
    """(probability, slice_probabilities[64]) for one HU volume [64, 128, 128]."""
    vol = np.nan_to_num(vol.astype(np.float32), nan=-1024.0)
    vessel = (vol >= VESSEL_LOW) & (vol <= VESSEL_HIGH)
    near_bone = dilate(vol > BONE_HU, BONE_MARGIN)
    clot = ~near_bone & (vol >= CLOT_LOW) & (vol <= CLOT_HIGH)
    clot &= directions_hit(vessel, REACH) >= NEED
    clot &= directions_hit(vol < LUNG_HU, LUNG_REACH) >= 1
    clot &= shifted(clot, 0, 1) & shifted(clot, 0, -1)
    per_slice = clot.sum(axis=(1, 2)).astype(np.float64)
    p = logistic(per_slice.sum(), N_HALF)
    return np.float32(p), logistic(per_slice, N_HALF_SLICE).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.version = params.get("version", {}).get("string_value", "")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                batch = pb_utils.get_input_tensor_by_name(request, "volume").as_numpy()
                if batch.ndim != 4 or tuple(batch.shape[1:]) != SHAPE:
                    raise ValueError(f"volume must be [B, 64, 128, 128], got {list(batch.shape)}")
                probs = np.zeros((batch.shape[0], 1), dtype=np.float32)
                slices = np.zeros((batch.shape[0], SHAPE[0]), dtype=np.float32)
                for i in range(batch.shape[0]):
                    probs[i, 0], slices[i] = score(batch[i])
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("probability", probs),
                            pb_utils.Tensor("slice_probabilities", slices),
                        ]
                    )
                )
            except Exception as exc:  # answer this request with an error, keep serving
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"pe: {exc}"))
                )
        return responses
