"""Run a routed model on a stored study: select the series, build the volume, ask Triton.

This is the pipeline's :class:`~triage.pipeline.Analyzer`. It knows files and tensors; it does
not know about scoring or the RIS.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from triage.errors import ModelNotReady, NotAssessable, TritonUnavailable
from triage.inference.client import InferenceClient
from triage.inference.contract import ModelContract, load_contract
from triage.inference.volume import load_volume, resample, select_series, z_sample_positions
from triage.pipeline import Analysis
from triage.store.models import Instance


class TritonAnalyzer:
    """Analyses studies with the models of ``models_dir`` served by the attached client."""

    def __init__(self, data_dir: Path, models_dir: Path) -> None:
        self.data_dir = data_dir
        self.models_dir = models_dir
        self._client: InferenceClient | None = None
        self._contracts: dict[str, ModelContract] = {}
        self._lock = threading.Lock()

    def attach(self, client: InferenceClient) -> None:
        """Called once the inference server is reachable; until then studies stay pending."""
        with self._lock:
            self._client = client

    def contract(self, model: str) -> ModelContract:
        if model not in self._contracts:
            path = self.models_dir / model / "config.pbtxt"
            if not path.is_file():
                raise ModelNotReady(f"model {model!r} has no contract at {path}")
            self._contracts[model] = load_contract(path)
        return self._contracts[model]

    def analyze(self, model: str, instances: list[Instance]) -> Analysis:
        client = self._client
        if client is None:
            raise TritonUnavailable("inference server not started yet")
        contract = self.contract(model)
        series = select_series(instances)
        if not series:
            raise NotAssessable("no CT image series suitable for the model")
        volume = load_volume([self.data_dir / inst.path for inst in series])
        tensor = resample(volume, contract.input_shape)
        out = client.infer(model, tensor)
        key_slice = None
        if out.key_slice is not None:
            # from the model grid back to the acquired slice nearest to it (0 = most inferior)
            z = z_sample_positions(volume, contract.input_shape[0])[out.key_slice]
            key_slice = int(np.argmin(np.abs(volume.z_positions - z)))
        return Analysis(
            model_name=model,
            model_version=out.model_version or contract.version,
            status="done",
            probability=out.probability,
            positive=out.positive,
            threshold=out.threshold,
            key_slice=key_slice,
            series_uid=volume.series_uid,
        )


__all__ = ["NotAssessable", "TritonAnalyzer"]
