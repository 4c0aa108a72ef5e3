"""A tiny PNG writer (numpy + zlib, no plotting library) and a minimal line-plot canvas, used
for the validation report's ROC plot and for looking at phantoms."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def write_png(path: Path | str, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 [H, W] grey or [H, W, 3] RGB) as a PNG file."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError("image must be uint8")
    if img.ndim == 2:
        colour, channels = 0, 1
    elif img.ndim == 3 and img.shape[2] == 3:
        colour, channels = 2, 3
    else:
        raise ValueError(f"image must be [H, W] or [H, W, 3], got {img.shape}")
    h, w = img.shape[:2]
    rows = img.reshape(h, w * channels)
    raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6))
    png += chunk(b"IEND", b"")
    out = Path(path)
    out.write_bytes(png)
    return out


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """HU -> uint8 grey with a window/level."""
    lo = centre - width / 2.0
    return (np.clip((hu - lo) / width, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
