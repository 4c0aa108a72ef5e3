"""Run a routed model on a stored study: select the series, build the volume, check, ask Triton.

This is the pipeline's :class:`~triage.ports.Analyzer`. It knows files and tensors; it does
not know about scoring or the RIS. Steps, in order:

1. select the series (:func:`~triage.inference.volume.rank_series`: the best first; when the
   checks below refuse it, the next primary axial soft-tissue series, three in all), load it
   in HU; slices
   thinner than the contract's ``min_slice_thickness_mm`` are read as slabs just thick enough
   (:mod:`triage.inference.slabs`), as a thicker reconstruction would be; resample to the
   contract's input grid;
2. input checks (:mod:`triage.inference.checks`) with the limits of the model contract: a study
   the model may not judge is returned as ``not_assessable`` with the reasons - before Triton
   is asked anything, so such a study never waits for the server;
3. inference (:class:`~triage.inference.client.InferenceClient`); Triton down or the model not
   ready raise ``TritonUnavailable`` / ``ModelNotReady`` and the pipeline lists the study as
   "AI pending";
4. the key image (:mod:`triage.inference.keyimage`): the key slice (the localisation map's peak,
   where the study probability comes from; named by its InstanceNumber, the image number a
   viewer shows), windowed, with the model's localisation map for a
   positive study only, stored under ``<data_dir>/keyimages/``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.multival import MultiValue

from triage.errors import ModelNotReady, NotAssessable, TritonUnavailable
from triage.inference.checks import InputFacts, InputLimits, check_input
from triage.inference.client import InferenceClient, ModelOutput
from triage.inference.contract import ModelContract, load_contract
from triage.inference.keyimage import (
    KeyImage,
    key_grid_slice,
    map_for_slice,
    render_key_image,
    store_key_image,
    window_for,
)
from triage.inference.slabs import thicken
from triage.inference.slices import SliceCache
from triage.inference.volume import (
    Volume,
    image_numbers,
    load_volume,
    rank_series,
    resample,
    z_sample_positions,
)
from triage.ports import Analysis
from triage.store.models import Instance

log = logging.getLogger(__name__)

# Series of one study tried, the best-ranked first, before it is called not assessable
MAX_SERIES_TRIED = 3


class TritonAnalyzer:
    """Analyses studies with the models of ``models_dir`` served by the attached client."""

    def __init__(
        self,
        data_dir: Path,
        models_dir: Path,
        *,
        key_images: bool = True,
        slices: SliceCache | None = None,
    ) -> None:
        """``slices``: the slices read while studies arrive (None: read at completion)."""
        self.data_dir = data_dir
        self.models_dir = models_dir
        self.key_images = key_images
        self.slices = slices
        self._client: InferenceClient | None = None
        self._contracts: dict[str, ModelContract] = {}
        self._lock = threading.Lock()

    def attach(self, client: InferenceClient | None) -> None:
        """Called once the inference server is reachable (again); None detaches (server down:
        studies wait as AI pending)."""
        with self._lock:
            self._client = client

    @property
    def client(self) -> InferenceClient | None:
        return self._client

    def contract(self, model: str) -> ModelContract:
        if model not in self._contracts:
            path = self.models_dir / model / "config.pbtxt"
            if not path.is_file():
                raise ModelNotReady(f"model {model!r} has no contract at {path}")
            self._contracts[model] = load_contract(path)
        return self._contracts[model]

    def analyze(self, model: str, instances: list[Instance]) -> Analysis:
        try:
            return self._analyze(model, instances)
        finally:
            if self.slices is not None:  # the study's reads made ahead are not needed now
                self.slices.discard([str(self.data_dir / inst.path) for inst in instances])

    def _analyze(self, model: str, instances: list[Instance]) -> Analysis:
        contract = self.contract(model)
        try:
            ranked = rank_series(instances)
        except NotAssessable as exc:
            return self._not_assessable(model, contract, exc, [], None, 1)
        # The best series first; when the model may not judge it (contrast where a
        # non-contrast model needs none or the reverse, images missing, too thick, ...), the
        # next primary axial soft-tissue series of the study, up to MAX_SERIES_TRIED in all: a
        # head CT with and without contrast, a CTPA after a plain chest, each at the same
        # thickness, are judged on the series the model is for.
        tried = [ranked[0], *(r for r in ranked[1:] if r.plain)][:MAX_SERIES_TRIED]
        refused: NotAssessable | None = None
        first: tuple[list[Instance], Volume | None, int] = ([], None, 1)
        for n, candidate in enumerate(tried):
            series = candidate.instances
            volume: Volume | None = None
            per_slab = 1
            try:
                volume = load_volume([self.data_dir / inst.path for inst in series], self.slices)
                volume, per_slab, tensor, facts = self._prepare(model, contract, series, volume)
            except NotAssessable as exc:
                if len(tried) > 1:  # one series: _not_assessable says it
                    log.info(
                        "%s: series %d of %d not assessable: %s", model, n + 1, len(tried), exc
                    )
                if refused is None:
                    refused, first = exc, (series, volume, per_slab)
                continue
            if refused is not None:
                log.info(
                    "%s: judged on series %s (the best-ranked one was not assessable: %s)",
                    model,
                    series[0].series_uid,
                    refused.reason,
                )
            break
        else:
            assert refused is not None
            if len(tried) > 1:
                others = len(tried) - 1
                refused = NotAssessable(
                    f"{refused.reason} (and {others} other series of the study not "
                    "assessable either)",
                    refused.reasons,
                )
            return self._not_assessable(model, contract, refused, *first)
        client = self._client
        if client is None:
            raise TritonUnavailable("inference server not started or not reachable yet")
        out = client.infer(model, tensor)
        key_slice = key_instance = key_frame = None
        if out.key_slice is not None:
            # where the evidence for the probability is (the localisation map's peak, when
            # there is one), from the model grid back to the nearest acquired slice
            grid_slice = key_grid_slice(out.localization, out.slice_probabilities)
            z = z_sample_positions(volume, contract.input_shape[0])[grid_slice]
            key_slice = int(np.argmin(np.abs(volume.z_positions - z)))
            key_instance, key_frame = image_number_of(series, volume, key_slice)
        key_image = ""
        if self.key_images and key_slice is not None:
            key_image = self._key_image(
                contract, out, volume, key_slice, series, key_instance, key_frame
            )
        return Analysis(
            model_name=model,
            model_version=out.model_version or contract.version,
            status="done",
            probability=out.probability,
            positive=out.positive,
            threshold=out.threshold,
            key_slice=key_slice,
            key_instance=key_instance,
            key_frame=key_frame,
            series_uid=volume.series_uid,
            key_image=key_image,
            inputs=input_mix(self.data_dir, series, volume, facts, per_slab=per_slab),
        )

    @staticmethod
    def _prepare(
        model: str, contract: ModelContract, series: list[Instance], volume: Volume
    ) -> tuple[Volume, int, np.ndarray, InputFacts]:
        """The loaded ``volume`` of ``series`` as the model's input: thin slices read as slabs
        (and how many per slab), resampled to the contract's grid, checked. Raises
        NotAssessable."""
        limits = InputLimits.from_parameters(model, contract.parameters)
        volume, per_slab = thicken(volume, limits.min_slice_thickness_mm)
        if per_slab > 1:
            log.info(
                "%s: slices thinner than the trained range, read as slabs of %d (%.3g mm)",
                model,
                per_slab,
                volume.slice_thickness or 0.0,
            )
        tensor = resample(volume, contract.input_shape, contract.z_resampling)
        return volume, per_slab, tensor, check_input(limits, series, volume, tensor)

    def _not_assessable(
        self,
        model: str,
        contract: ModelContract,
        exc: NotAssessable,
        series: list[Instance],
        volume: Volume | None,
        per_slab: int,
    ) -> Analysis:
        log.info("%s: not assessable: %s", model, exc.reason)
        return Analysis(
            model_name=model,
            model_version=contract.version,
            status="not_assessable",
            detail=exc.reason,
            reasons=exc.reasons,
            inputs=input_mix(self.data_dir, series, volume, None, per_slab=per_slab),
        )

    def _key_image(
        self,
        contract: ModelContract,
        out: ModelOutput,
        volume: Volume,
        key_slice: int,
        series: list[Instance],
        key_instance: int | None = None,
        key_frame: int | None = None,
    ) -> str:
        """Render and store the key image; "" (logged) when that fails - never the result."""
        try:
            plane = None
            if out.localization is not None:
                plane = map_for_slice(
                    out.localization,
                    float(volume.z_positions[key_slice]),
                    float(volume.z_positions[0]),
                    float(volume.z_positions[-1]),
                )
            window = window_for(contract.name, contract.parameters)

            def render(localization: np.ndarray | None, plain: bool) -> KeyImage:
                return render_key_image(
                    volume.hu[key_slice],
                    window=window,
                    localization=localization,
                    model=out.model_name,
                    model_version=out.model_version,
                    probability=out.probability,
                    slice_index=key_slice,
                    n_slices=volume.shape[0],
                    instance_number=key_instance,
                    frame_number=key_frame,
                    positive=out.positive,
                    plain=plain,
                )

            image = render(plane, plain=False)
            plain = render(None, plain=True)
            study_uid = series[0].study_uid if series else volume.series_uid
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time() % 1:.3f}"[1:]
            name = f"{out.model_name}-{stamp}"
            # the slice without the overlay first: the key image's path names both
            store_key_image(self.data_dir, study_uid, f"{name}-plain", plain.png)
            return store_key_image(self.data_dir, study_uid, name, image.png)
        except Exception as exc:  # a key image is an aid; the finding stands without it
            log.warning("%s: key image not made: %s", out.model_name, exc)
            return ""


def image_number_of(
    series: Sequence[Instance], volume: Volume, index: int
) -> tuple[int | None, int | None]:
    """The InstanceNumber of ``volume``'s slice ``index`` (:func:`image_numbers`: its source
    image among ``series``, whichever way the scanner numbered the slices) and its frame in a
    multi-frame image; None where unknown or ``index`` is outside the volume."""
    if not 0 <= index < len(volume.paths):
        return None, None
    return image_numbers(series, volume)[index]


#: DICOM keywords read for the input mix (one header of the selected series).
_MIX_TAGS = ("Manufacturer", "ManufacturerModelName", "ConvolutionKernel")


def input_mix(
    data_dir: Path,
    series: list[Instance],
    volume: Volume | None,
    facts: InputFacts | None,
    *,
    per_slab: int = 1,
) -> str:
    """What went into the model, as the JSON stored in ``Finding.inputs`` (drift monitoring,
    :mod:`triage.monitoring`): manufacturer, scanner model and kernel from the first image's
    header, slice thickness (of the slabs, when thin slices were read as slabs of
    ``per_slab``, recorded as ``slab_slices``), and the reference tissue's median HU (when
    the checks measured it). "" when nothing is known; never raises (an aid, not part of the
    result)."""
    mix: dict[str, object] = {}
    try:
        if series:
            ds = pydicom.dcmread(
                data_dir / series[0].path, stop_before_pixels=True, specific_tags=list(_MIX_TAGS)
            )
            for key, name in zip(("manufacturer", "scanner", "kernel"), _MIX_TAGS, strict=True):
                value = ds.get(name)
                if value is not None:
                    text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else value
                    mix[key] = str(text).strip()[:64]
        thickness = facts.slice_thickness_mm if facts is not None else None
        if thickness is None and volume is not None and volume.slice_thickness:
            thickness = float(volume.slice_thickness)
        if thickness is not None:
            mix["thickness_mm"] = round(float(thickness), 2)
        if per_slab > 1:
            mix["slab_slices"] = per_slab
        if facts is not None and facts.tissue_hu is not None:
            mix["tissue_hu"] = round(float(facts.tissue_hu), 1)
    except Exception as exc:  # an unreadable header: the finding stands without its mix
        log.debug("input mix not read: %s", exc)
    return json.dumps(mix, sort_keys=True) if mix else ""


__all__ = ["NotAssessable", "TritonAnalyzer", "input_mix"]
