"""Key image: the model's most suspicious slice as a PNG, windowed, with the lesion overlay.

:func:`key_grid_slice` says which slice that is: where the evidence for the probability is.
With a localisation map, the study probability is read from its peak cell, so the key slice is
in that cell's slab (of its model slices, the one with the highest slice probability); without
one, the argmax of the slice probabilities. The analyzer maps it back to the acquired slice
nearest to it.

:func:`render_key_image` takes that acquired slice, applies the window for the finding
(brain 40/80 for hemorrhage, mediastinum 100/700 for embolism, or ``window_center`` /
``window_width`` from the model contract), and for a POSITIVE study (probability at or above
the operating point) blends the model's coarse localisation map in colour (red, opacity rising
with the map value; outline where it crosses 0.5) - only where its evidence is (:func:`evidence`:
the connected regions around the slice's strongest cells, not every cell the map lights
weakly). A NEGATIVE study gets no overlay at all -
nothing on it looks like a finding - and its caption says "below the operating point". The
caption band burnt in under the image always reads:

    AI TRIAGE AID - SYNTHETIC-PHANTOM-TRAINED MODEL - NOT FOR CLINICAL USE

plus model, version, probability and slice. The same words go in the PNG's ``tEXt`` chunks
(``Title``, ``Description``, ``Disclaimer``) for software that reads metadata.

PNG is written here with ``zlib`` (RGB, 8 bits, filter 0): no imaging dependency is needed for
one greyscale-plus-overlay image per finding, and the format is small and stable. The caption
font is a 5x7 bitmap drawn in this module.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.inference.checks import components
from triage.store.durable import write_durably

DISCLAIMER = "AI triage aid - synthetic-phantom-trained model - not for clinical use"
KEY_IMAGE_DIR = "keyimages"

# (centre, width) in HU per finding body part; a contract may override with parameters
WINDOWS: dict[str, tuple[float, float]] = {"head": (40.0, 80.0), "chest": (100.0, 700.0)}
MODEL_WINDOWS: dict[str, tuple[float, float]] = {"ich": (40.0, 80.0), "pe": (100.0, 700.0)}
DEFAULT_WINDOW = (40.0, 400.0)
OVERLAY_RGB = np.array([255.0, 40.0, 40.0], dtype=np.float32)
OVERLAY_MAX_ALPHA = 0.55
OVERLAY_MIN_VALUE = 0.2  # map values below are not drawn
OUTLINE_LEVEL = 0.5
# Only the evidence is drawn: the regions of the slice's map (cells at least EVIDENCE_SHARE of
# its peak, connected) whose own maximum reaches STRONG_SHARE of the peak. A map lit weakly
# along a whole edge (a skull's inner table) next to one strong blob shows the blob.
EVIDENCE_SHARE = 0.5
STRONG_SHARE = 0.8

# -- a 5x7 bitmap font (upper case, digits, a little punctuation); rows top to bottom -----------
_GLYPHS_SRC = {
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. #..#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# ##..# #.#.# #..## #...# #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "####. ....# ....# .###. ....# ....# ####.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": ".###. #.... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ....# .###.",
    " ": "..... ..... ..... ..... ..... ..... .....",
    "-": "..... ..... ..... ##### ..... ..... .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "/": "....# ....# ...#. ..#.. .#... #.... #....",
    "%": "##..# ##..# ...#. ..#.. .#... #..## #..##",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
}
_GLYPHS: dict[str, np.ndarray] = {
    ch: np.array([[c == "#" for c in row] for row in src.split()], dtype=bool)
    for ch, src in _GLYPHS_SRC.items()
}
GLYPH_W, GLYPH_H = 5, 7
ADVANCE = GLYPH_W + 1
LINE_H = GLYPH_H + 4


@dataclass(frozen=True)
class KeyImage:
    png: bytes
    width: int
    height: int  # image rows + caption band
    image_rows: int  # rows of the CT slice itself (the band is below)
    slice_index: int  # acquired slice shown (0 = most inferior)
    overlay: bool  # a localisation map was drawn
    caption: tuple[str, ...]


# -- pieces -------------------------------------------------------------------------------------


def window_for(model: str, parameters: Mapping[str, str] | None = None) -> tuple[float, float]:
    """(centre, width) in HU: contract ``window_center``/``window_width``, else by model or
    body part, else a soft-tissue default."""
    params = parameters or {}
    try:
        if "window_center" in params and "window_width" in params:
            c, w = float(params["window_center"]), float(params["window_width"])
            if w > 0:
                return c, w
    except ValueError:
        pass
    if model in MODEL_WINDOWS:
        return MODEL_WINDOWS[model]
    return WINDOWS.get(str(params.get("body_part", "")).lower(), DEFAULT_WINDOW)


def apply_window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """HU -> uint8 grey, linear between centre -/+ width/2."""
    lo = centre - width / 2.0
    grey = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _resize_nearest(arr: np.ndarray, rows: int, cols: int) -> np.ndarray:
    yi = np.minimum((np.arange(rows) * arr.shape[0]) // rows, arr.shape[0] - 1)
    xi = np.minimum((np.arange(cols) * arr.shape[1]) // cols, arr.shape[1] - 1)
    return arr[yi[:, None], xi[None, :]]


def _resize_bilinear(arr: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Cell-centred bilinear resize of a 2-D map (the map covers the same field as the image)."""
    a = np.asarray(arr, dtype=np.float32)
    ys = np.clip((np.arange(rows) + 0.5) * a.shape[0] / rows - 0.5, 0, a.shape[0] - 1)
    xs = np.clip((np.arange(cols) + 0.5) * a.shape[1] / cols - 0.5, 0, a.shape[1] - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, a.shape[0] - 1)
    x1 = np.minimum(x0 + 1, a.shape[1] - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bottom = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float32)


def map_for_slice(
    localization: np.ndarray, z_position: float, z_first: float, z_last: float
) -> np.ndarray:
    """The 2-D plane of a localisation map at physical position ``z_position``.

    A 3-D map [z', y', x'] spans the model grid, i.e. evenly from the first to the last slice
    position; a 2-D map is already one plane (the key slice).
    """
    loc = np.asarray(localization, dtype=np.float32)
    if loc.ndim == 2:
        return loc
    if z_last <= z_first or loc.shape[0] == 1:
        return loc[0]
    frac = (z_position - z_first) / (z_last - z_first)
    return loc[int(np.clip(np.rint(frac * (loc.shape[0] - 1)), 0, loc.shape[0] - 1))]


def evidence(plane: np.ndarray) -> np.ndarray:
    """``plane`` (a 2-D localisation map in [0, 1]) with only its evidence kept: connected
    regions of cells at or above ``EVIDENCE_SHARE`` of the plane's peak (and at least
    ``OVERLAY_MIN_VALUE``) whose own maximum reaches ``STRONG_SHARE`` of the peak; every other
    cell 0. Several strong regions (several bleeds) are all kept."""
    m = np.clip(np.asarray(plane, dtype=np.float32), 0.0, 1.0)
    peak = float(m.max()) if m.size else 0.0
    if peak < OVERLAY_MIN_VALUE:
        return np.zeros_like(m)
    labels = components(m >= max(OVERLAY_MIN_VALUE, EVIDENCE_SHARE * peak))
    strong = np.unique(labels[m >= STRONG_SHARE * peak])
    return np.where(np.isin(labels, strong[strong > 0]), m, 0.0).astype(np.float32)


def key_grid_slice(localization: np.ndarray | None, slice_probabilities: np.ndarray) -> int:
    """Index (model grid, 0 = most inferior) of the slice where the evidence is.

    A 3-D map [z', y', x'] covers the grid's ``n`` slices in ``z'`` equal slabs: the slab of its
    peak cell, and in it the slice with the highest slice probability. Otherwise (no map, a
    2-D map, or slab sizes that do not divide) the argmax of ``slice_probabilities``.
    """
    probs = np.asarray(slice_probabilities, dtype=np.float64).reshape(-1)
    loc = None if localization is None else np.asarray(localization, dtype=np.float64)
    if loc is None or loc.ndim != 3 or loc.size == 0 or probs.size % loc.shape[0]:
        return int(np.argmax(probs))
    per_cell = probs.size // loc.shape[0]
    cell = int(np.unravel_index(int(np.argmax(loc)), loc.shape)[0])
    lo = cell * per_cell
    return lo + int(np.argmax(probs[lo : lo + per_cell]))


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def wrap(text: str, max_chars: int) -> list[str]:
    """Words of ``text`` in lines of at most ``max_chars`` (a long word is cut)."""
    max_chars = max(1, max_chars)
    lines: list[str] = []
    line = ""
    for word in text.split():
        while len(word) > max_chars:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:max_chars])
            word = word[max_chars:]
        candidate = f"{line} {word}" if line else word
        if len(candidate) <= max_chars:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, colour: np.ndarray) -> None:
    """Burn ``text`` (upper-cased; unknown characters as '?') into an RGB uint8 canvas."""
    x = left
    for ch in text.upper():
        glyph = _GLYPHS.get(ch, _GLYPHS["?"])
        h = min(GLYPH_H, canvas.shape[0] - top)
        w = min(GLYPH_W, canvas.shape[1] - x)
        if h <= 0 or w <= 0:
            return
        region = canvas[top : top + h, x : x + w]
        region[glyph[:h, :w]] = colour
        x += ADVANCE


def encode_png(rgb: np.ndarray, text: Mapping[str, str] | None = None) -> bytes:
    """An RGB uint8 [H, W, 3] image as PNG bytes, with optional ``tEXt`` chunks."""
    img = np.ascontiguousarray(rgb, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3] RGB, got {img.shape}")
    h, w = img.shape[:2]
    raw = np.zeros((h, 1 + 3 * w), dtype=np.uint8)  # filter byte 0 ("None") per row
    raw[:, 1:] = img.reshape(h, 3 * w)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for key, value in (text or {}).items():
        data = key.encode("latin-1")[:79] + b"\0" + value.encode("latin-1", "replace")
        parts.append(chunk(b"tEXt", data))
    parts.append(chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    parts.append(chunk(b"IEND", b""))
    return b"".join(parts)


# -- the key image --------------------------------------------------------------------------------


def render_key_image(
    slice_hu: np.ndarray,
    *,
    window: tuple[float, float],
    localization: np.ndarray | None,
    model: str,
    model_version: str,
    probability: float | None,
    slice_index: int,
    n_slices: int,
    positive: bool = True,
    plain: bool = False,
    instance_number: int | None = None,
    frame_number: int | None = None,
) -> KeyImage:
    """Windowed slice + overlay + caption band, as PNG. ``localization`` is a 2-D map in [0, 1]
    covering the slice's field of view (any resolution), or None. ``positive`` False (the
    probability is below the operating point): no overlay is drawn, whatever the map.
    ``plain``: the same slice and window without any overlay (what the reader compares the
    overlay with); its caption says so. ``instance_number``: the slice's InstanceNumber, named
    in the caption (the image number the reader's viewer shows); ``frame_number``: its frame
    in a multi-frame image (Enhanced CT), named beside it."""
    hu = np.asarray(slice_hu, dtype=np.float32)
    rows, cols = hu.shape
    grey = apply_window(hu, *window)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    overlay = False
    if positive and not plain and localization is not None and np.size(localization) > 0:
        m = _resize_bilinear(evidence(localization), rows, cols)
        alpha = np.where(m >= OVERLAY_MIN_VALUE, m * OVERLAY_MAX_ALPHA, 0.0)[:, :, None]
        if float(alpha.max()) > 0.0:
            overlay = True
            rgb = rgb * (1.0 - alpha) + OVERLAY_RGB * alpha
            edge = _outline(m >= OUTLINE_LEVEL)
            rgb[edge] = (255.0, 255.0, 0.0)
    p = "n/a" if probability is None else f"{probability:.2f}"
    # the image number the viewer shows (InstanceNumber) when the header has one; else the
    # slice's place counted from the bottom of the series
    image = "" if instance_number is None else f"key image {instance_number}"
    if frame_number is not None:
        image = f"{image} frame {frame_number}" if image else f"key frame {frame_number}"
    where = (
        f"{image} ({n_slices} slices)"
        if image
        else f"key slice {slice_index + 1}/{n_slices} from the bottom"
    )
    info = f"{model} {model_version} p={p} {where}"
    if plain:
        info += " - the slice without the overlay"
    elif not positive:
        info += " - below the operating point: no finding, no overlay"
    elif not overlay:
        info += " (no localisation map)"
    max_chars = max(1, (cols - 4) // ADVANCE)
    lines = [*wrap(DISCLAIMER, max_chars), *wrap(info, max_chars)]
    band = LINE_H * len(lines) + 4
    canvas = np.zeros((rows + band, cols, 3), dtype=np.uint8)
    canvas[:rows] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    white = np.array([255, 255, 255], dtype=np.uint8)
    amber = np.array([255, 200, 0], dtype=np.uint8)
    for i, line in enumerate(lines):
        colour = amber if i < len(lines) - len(wrap(info, max_chars)) else white
        draw_text(canvas, line, rows + 4 + i * LINE_H, 2, colour)
    png = encode_png(
        canvas,
        {
            "Title": f"Key image - {model} {model_version}",
            "Description": f"{DISCLAIMER}. {info}",
            "Disclaimer": DISCLAIMER,
            "Software": "triage",
        },
    )
    return KeyImage(
        png=png,
        width=cols,
        height=rows + band,
        image_rows=rows,
        slice_index=slice_index,
        overlay=overlay,
        caption=tuple(lines),
    )


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def store_key_image(data_dir: Path, study_uid: str, name: str, png: bytes) -> str:
    """Write ``png`` durably under ``data_dir/keyimages/<study>/<name>.png``; return the path
    relative to ``data_dir`` (what the Finding stores). Raises :class:`StoreError` (nothing
    left behind)."""
    study = _SAFE.sub("_", study_uid)[:80].lstrip(".") or "unknown"  # never "." or ".."
    stem = _SAFE.sub("_", name)[:80].lstrip(".") or "key"
    rel = Path(KEY_IMAGE_DIR) / study / f"{stem}.png"
    write_durably(data_dir / rel, png)
    return rel.as_posix()


def plain_key_image_path(rel: str) -> str:
    """Where the slice without the overlay is stored beside the key image ``rel``."""
    return rel[: -len(".png")] + "-plain.png" if rel.endswith(".png") else ""


def resolve_key_image(data_dir: Path, rel: str) -> Path | None:
    """The file of a stored relative path, or None when missing or outside ``data_dir``."""
    if not rel:
        return None
    root = data_dir.resolve()
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(root / KEY_IMAGE_DIR) or path.suffix != ".png":
        return None
    return path if path.is_file() else None
