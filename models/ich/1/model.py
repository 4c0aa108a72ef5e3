"""ich model for the Triton Python backend: runs 1/model.onnx with onnxruntime (CPU).

A small 2.5D CNN (triage/training/nets.py) TRAINED ON SYNTHETIC PHANTOMS; NOT FOR CLINICAL USE.
Model card: models/ich/README.md. Rebuilt by `triage models train`.

Tensor contract (models/README.md): input "volume" FP32 [B, 64, S, S] (HU, slices
inferior -> superior; S from config.pbtxt: 128 for ich, 256 for pe; the network windows and
normalises inside itself); outputs "probability" FP32 [B, 1], "slice_probabilities" FP32
[B, 64] and "localization" FP32 [B, 16, 32, 32] (coarse lesion map over the input grid), all
in [0, 1].
The same model.onnx is servable by a stock Triton onnxruntime backend
(config.onnxruntime.pbtxt.example).
"""

import json
import os
import threading
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

OUTPUTS = ("probability", "slice_probabilities", "localization")


def _finite(batch):
    """``batch`` as C-contiguous float32 with NaN -> -1024 HU and +-inf clipped; the same
    array (no copy) when it already is. min/max are one pass each with no temporary (NaN and
    inf propagate to them), against ~10 ms for two 4 MiB copies in the stub on a busy host."""
    if batch.dtype != np.float32 or not batch.flags.c_contiguous:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
    if np.isfinite(batch.min()) and np.isfinite(batch.max()):
        return batch
    return np.nan_to_num(batch, nan=-1024.0)


def _exit_with_the_server():
    """Exit when the tritonserver that started this stub is gone: a server killed outright
    (SIGKILL) cannot stop its stubs, and they would live on as orphans holding memory and the
    server's shared memory regions. Polled every 2 s (os.getppid changes when the parent
    dies)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(0)

    threading.Thread(target=watch, name="server-watch", daemon=True).start()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config.get("parameters", {})
        self.version = params.get("version", {}).get("string_value", "")
        self.shape = tuple(int(d) for d in config["input"][0]["dims"])
        here = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("TRIAGE_ORT_THREADS", "2"))
        opts.inter_op_num_threads = 1
        # No busy-waiting of the intra-op threads between runs: it burnt ~15-30 ms of CPU per
        # request on the cores the engine shares with Triton, for no latency gain (measured).
        opts.add_session_config_entry(
            "session.intra_op.allow_spinning", os.environ.get("TRIAGE_ORT_SPINNING", "0")
        )
        self.session = ort.InferenceSession(here, opts, providers=["CPUExecutionProvider"])
        _exit_with_the_server()

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                # a view on the request's shared memory: no copy unless there is something to fix
                batch = pb_utils.get_input_tensor_by_name(request, "volume").as_numpy()
                if batch.ndim != 4 or tuple(batch.shape[1:]) != self.shape:
                    want = ", ".join(str(d) for d in self.shape)
                    raise ValueError(f"volume must be [B, {want}], got {list(batch.shape)}")
                batch = _finite(batch)
                outs = self.session.run(list(OUTPUTS), {"volume": batch})
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(name, np.ascontiguousarray(out, dtype=np.float32))
                            for name, out in zip(OUTPUTS, outs)
                        ]
                    )
                )
            except Exception as exc:  # answer this request with an error, keep serving
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ich: {exc}"))
                )
        return responses
