"""Sizing the normalized map to the control image the pipeline gets.

Resize after normalizing (raw Z with a 1e10 background must never be filtered), area when shrinking, bilinear when
enlarging (no Lanczos overshoot), both sides multiples of 16 (the pipeline's VAE factor x patch size), float kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import DepthInputError

MULTIPLE = 16
DEFAULT_LONG_SIDE = 1024
MIN_LONG_SIDE = 256
MAX_LONG_SIDE = 2048


@dataclass(frozen=True)
class ControlImage:
    """The control map at generation size: float32 (H, W) in [0, 1], near = 1. Replicated to RGB for the VAE."""

    pixels: np.ndarray

    @property
    def width(self) -> int:
        return self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    def rgb(self) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]."""
        return np.repeat(self.pixels[..., None], 3, axis=2)

    def to_uint16(self) -> np.ndarray:
        return np.round(self.pixels * 65535.0).astype(np.uint16)

    def to_uint8(self) -> np.ndarray:
        return np.round(self.pixels * 255.0).astype(np.uint8)


def control_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """(w, h) with the source aspect, the long side `long_side`, each side a multiple of 16."""
    if not (MIN_LONG_SIDE <= long_side <= MAX_LONG_SIDE):
        raise DepthInputError(f"long side {long_side} is out of range; use {MIN_LONG_SIDE}..{MAX_LONG_SIDE} pixels")
    long_side = int(round(long_side / MULTIPLE)) * MULTIPLE
    scale = long_side / max(width, height)

    def snap(side: int) -> int:
        return max(MULTIPLE, int(round(side * scale / MULTIPLE)) * MULTIPLE)

    return snap(width), snap(height)


def make_control_image(values: np.ndarray, long_side: int = DEFAULT_LONG_SIDE) -> ControlImage:
    h, w = values.shape
    tw, th = control_size(w, h, long_side)
    if (tw, th) == (w, h):
        return ControlImage(values.astype(np.float32, copy=True))
    shrinking = tw * th < w * h
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    out = np.asarray(img.resize((tw, th), resample=resample), dtype=np.float32)
    return ControlImage(np.clip(out, 0.0, 1.0))
