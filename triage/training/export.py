"""ONNX export of a trained detector and the Triton model configuration around it.

The ONNX graph takes ``volume`` FP32 [B, 64, S, S] (HU; S = 128 for ich, 256 for pe) and
answers ``probability`` [B, 1], ``slice_probabilities`` [B, 64] and ``localization``
[B, 16, 32, 32], with a dynamic
batch axis, so the same file serves from the Python backend (``1/model.py``, onnxruntime) and
from a stock Triton ``onnxruntime`` backend (``config.onnxruntime.pbtxt.example``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from triage.synth.ct import model_shape, z_resampling
from triage.training.data import LOC_SHAPE

INPUT = "volume"
OUTPUTS = ("probability", "slice_probabilities", "localization")
FINDINGS = {"ich": "intracranial hemorrhage", "pe": "pulmonary embolism"}
# Network version per task: pe 2.1 takes the 256 x 256 in-plane grid (same network otherwise),
# pe 2.2 the nearest acquired slice along z (config.pbtxt z_resampling "nearest"); 3.0 (both):
# trained on the generator with real anatomy and randomised acquisition, HU measured against
# the study's own soft tissue (nets.REFERENCE), probability recalibrated on the tuning set;
# ich 3.1: trained with domain randomisation (triage.training.augment) and its operating point
# chosen on the tuning phantoms and an augmented copy of each; ich 4.0: the same recipe,
# 5,000 steps, on head generator 4 (skull base, face and the skull's glare); ich 4.1: the same
# with 210 more training phantoms from an independently written painter
# (triage.training.second_source); pe 3.1: chest generator 5, the "lumen" front end and 210
# training phantoms from the second painter.
VERSIONS = {"ich": "synthcnn-4.1", "pe": "synthcnn-3.1"}

log = logging.getLogger(__name__)
# What a model folder needs besides 1/model.onnx to be served and checked, taken from the
# shipped repository when a model is trained into a new one: the contract (its input-check
# parameters: body part, slice thickness, enhancement...) and the Python backend's runner.
SERVING_FILES = ("config.pbtxt", "1/model.py")
SHIPPED_MODELS = Path(__file__).resolve().parents[2] / "models"  # the repository's


def export_onnx(net, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Write ``net`` (a trained Detector) as ONNX (opset 17, dynamic batch)."""
    import torch

    from triage.training.nets import Exported

    path.parent.mkdir(parents=True, exist_ok=True)
    model = Exported(net).eval()
    example = torch.zeros(1, *model_shape(net.task))
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        dynamic_axes={INPUT: {0: "batch"}, **{o: {0: "batch"} for o in OUTPUTS}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _outputs_block() -> str:
    z, y, x = LOC_SHAPE
    return f"""output [
  {{
    name: "probability"
    data_type: TYPE_FP32
    dims: [ 1 ]
  }},
  {{
    name: "slice_probabilities"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }},
  {{
    # coarse lesion map: {z} x {y} x {x} cells over the input grid, in [0, 1]
    name: "localization"
    data_type: TYPE_FP32
    dims: [ {z}, {y}, {x} ]
  }}
]"""


_HEADER = """# {name}: small CNN TRAINED ON SYNTHETIC PHANTOMS; NOT FOR CLINICAL USE.
# Outputs, threshold, version and description are written by `triage models train`
# (triage/training/export.py); the threshold is the operating point chosen on a tuning set
# (models/{name}/README.md, docs/models.md). Other parameters (input checks) are kept.
"""


def _set_param(text: str, key: str, value: str) -> str:
    pattern = re.compile(
        r'(key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")'
    )
    if pattern.search(text):
        return pattern.sub(lambda m: m.group(1) + value + m.group(2), text, count=1)
    entry = f'  {{\n    key: "{key}"\n    value: {{ string_value: "{value}" }}\n  }}'
    i = text.index("parameters [") + len("parameters [")
    empty = text[i:].lstrip().startswith("]")
    return text[:i] + "\n" + entry + ("" if empty else ",") + text[i:]


def _block_span(text: str, key: str) -> tuple[int, int] | None:
    """Where the top-level ``key [ ... ]`` list (bracket-matched) starts and ends."""
    start = re.search(r"^" + key + r"\s*\[", text, re.M)
    if start is None:
        return None
    depth, i = 0, start.end() - 1
    while i < len(text):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                break
        i += 1
    return start.start(), i + 1


def _replace_block(text: str, key: str, block: str) -> str:
    """Replace the top-level ``key [ ... ]`` list with ``block`` (appended if absent)."""
    span = _block_span(text, key)
    if span is None:
        return text.rstrip() + "\n" + block + "\n"
    return text[: span[0]] + block + text[span[1] :]


def _set_input_dims(text: str, dims: tuple[int, int, int]) -> str:
    """The input's ``dims`` set to the grid the network was trained on: a config kept from an
    earlier model must not promise the old grid (Triton would be fed the wrong shape)."""
    span = _block_span(text, "input")
    if span is None:
        return text
    block = text[span[0] : span[1]]
    z, y, x = dims
    block = re.sub(r"dims:\s*\[[^\]]*\]", f"dims: [ {z}, {y}, {x} ]", block, count=1)
    return text[: span[0]] + block + text[span[1] :]


def config_text(
    name: str,
    threshold: float,
    base: str | None = None,
    backend: str = "python",
    version: str | None = None,
) -> str:
    """config.pbtxt for model ``name``: ``base`` (the current file, whose other parameters
    are kept) with the three outputs, threshold, version (``version``, else the shipped
    ``<name>-<VERSIONS[name]>``) and description set."""
    if base is None:
        z, y, x = model_shape(name)
        base = _MINIMAL.format(name=name, z=z, y=y, x=x)
    text = base
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("# ")) + "\n"
    text = _HEADER.format(name=name) + text.lstrip("\n")
    text = _replace_block(text, "output", _outputs_block())
    text = _set_input_dims(text, model_shape(name))
    text = re.sub(r'^backend:\s*"[^"]*"\n(default_model_filename:[^\n]*\n)?', "", text, flags=re.M)
    filename = 'default_model_filename: "model.onnx"\n' if backend == "onnxruntime" else ""
    text = re.sub(
        r'^(name:\s*"[^"]*"\n)',
        lambda m: m.group(1) + f'backend: "{backend}"\n' + filename,
        text,
        count=1,
        flags=re.M,
    )
    text = _set_param(text, "threshold", f"{threshold:.4f}")
    text = _set_param(text, "version", version or f"{name}-{VERSIONS[name]}")
    text = _set_param(text, "finding", FINDINGS[name])
    text = _set_param(text, "z_resampling", z_resampling(name))
    text = _set_param(
        text, "description", "small 2.5D CNN trained on synthetic phantoms; not for clinical use"
    )
    return text


_MINIMAL = """name: "{name}"
backend: "python"
max_batch_size: 4
dynamic_batching {{
  max_queue_delay_microseconds: 0
}}
input [
  {{
    # Hounsfield units, slices ordered inferior -> superior, resampled to {z} x {y} x {x}
    name: "volume"
    data_type: TYPE_FP32
    dims: [ {z}, {y}, {x} ]
  }}
]
output [
]
instance_group [
  {{
    kind: KIND_CPU
    count: 1
  }}
]
parameters [
]
"""


def seed_model_dir(model_dir: Path, shipped: Path | None = None) -> list[str]:
    """Copy :data:`SERVING_FILES` that ``model_dir`` lacks from the shipped model folder
    ``shipped`` (same task; default: :data:`SHIPPED_MODELS` / the folder's name): a model
    trained into a new repository is then servable by Triton and keeps the shipped input
    checks, instead of a bare contract whose checks are all skipped. Files already there are
    kept. Returns what was copied."""
    shipped = SHIPPED_MODELS / model_dir.name if shipped is None else shipped
    copied: list[str] = []
    if model_dir.resolve() == shipped.resolve():
        return copied
    for rel in SERVING_FILES:
        src, dst = shipped / rel, model_dir / rel
        if dst.exists() or not src.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        copied.append(rel)
    if copied:
        log.info("%s: %s taken from %s", model_dir, ", ".join(copied), shipped)
    return copied


def write_config(model_dir: Path, threshold: float, version: str | None = None) -> None:
    """Update ``config.pbtxt`` (Python backend; other parameters kept) and write
    ``config.onnxruntime.pbtxt.example`` (stock onnxruntime backend, same ONNX);
    ``version``: see :func:`config_text`."""
    name = model_dir.name
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = model_dir / "config.pbtxt"
    base = cfg.read_text(encoding="utf-8") if cfg.is_file() else None
    text = config_text(name, threshold, base, version=version)
    cfg.write_text(text, encoding="utf-8")
    (model_dir / "config.onnxruntime.pbtxt.example").write_text(
        "# Stock Triton onnxruntime backend serving the same 1/model.onnx (e.g. on a GPU\n"
        "# server: KIND_GPU). Use as config.pbtxt in a repository holding only 1/model.onnx.\n"
        + config_text(name, threshold, text, "onnxruntime", version),
        encoding="utf-8",
    )


def candidate_version(task: str, recipe: dict[str, object], models_dir: Path) -> str | None:
    """The version a model trained into ``models_dir`` is exported with: None (the shipped
    ``<task>-<VERSIONS[task]>``) in the repository's own ``models/``; elsewhere - a candidate
    - that name with ``-candidate-`` and a hash of its ``recipe`` (the training config), so
    that a candidate is never validated, stressed, ledgered or monitored under the shipped
    model's name, and two candidates of different recipes never share one."""
    if models_dir.resolve() == SHIPPED_MODELS.resolve():
        return None
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    return f"{task}-{VERSIONS[task]}-candidate-{digest[:8]}"


def read_threshold(model_dir: Path) -> float:
    """The operating point stored in ``model_dir/config.pbtxt``."""
    text = (model_dir / "config.pbtxt").read_text(encoding="utf-8")
    m = re.search(r'key:\s*"threshold"\s*value:\s*\{\s*string_value:\s*"([0-9.eE+-]+)"', text)
    if not m:
        raise ValueError(f"no threshold in {model_dir / 'config.pbtxt'}")
    return float(m.group(1))
