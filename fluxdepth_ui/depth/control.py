"""Sizing the normalized map to the control image the pipeline gets.

Resize after normalizing (raw Z with a 1e10 background must never be filtered), area when shrinking, bilinear when
enlarging (no Lanczos overshoot), background resampled apart from the depth, the source aspect kept and the centre
cropped to multiples of 16 (the pipeline's VAE factor x patch size), float kept.
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
    # Pixels cut off at control size to reach multiples of 16 without stretching: (left, top, right, bottom).
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)

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


def _scaled(width: int, height: int, long_side: int) -> tuple[float, float]:
    if not (MIN_LONG_SIDE <= long_side <= MAX_LONG_SIDE):
        raise DepthInputError(f"long side {long_side} is out of range; use {MIN_LONG_SIDE}..{MAX_LONG_SIDE} pixels")
    long_side = int(round(long_side / MULTIPLE)) * MULTIPLE
    scale = long_side / max(width, height)
    return width * scale, height * scale


def control_size(width: int, height: int, long_side: int = DEFAULT_LONG_SIDE) -> tuple[int, int]:
    """(w, h): the long side `long_side`, each side the multiple of 16 at or below the source aspect (the rest is
    cropped, never stretched)."""
    sw, sh = _scaled(width, height, long_side)
    return (max(MULTIPLE, int(sw + 1e-6) // MULTIPLE * MULTIPLE),
            max(MULTIPLE, int(sh + 1e-6) // MULTIPLE * MULTIPLE))


def make_control_image(values: np.ndarray, long_side: int = DEFAULT_LONG_SIDE,
                       valid: np.ndarray | None = None) -> ControlImage:
    """Resize the normalized map with the source aspect, then crop the centre to multiples of 16.

    With a background (`valid` False, value 0), valid and background are resampled apart (normalized convolution):
    a pixel that is mostly background stays background, the others keep their own level, so no rim darker than the
    farthest object appears where the black background would have been blended in (docs/depth.md, "Size").
    """
    h, w = values.shape
    tw, th = control_size(w, h, long_side)
    sw, sh = _scaled(w, h, long_side)
    rw, rh = max(tw, int(round(sw))), max(th, int(round(sh)))
    if (rw, rh) == (w, h):
        out = values.astype(np.float32, copy=True)
    else:
        resample = Image.Resampling.BOX if rw * rh < w * h else Image.Resampling.BILINEAR
        out = _resize(values, rw, rh, resample)
        if valid is not None and not valid.all():
            # The share of valid source pixels under each target pixel, resampled like the values (8-bit is
            # plenty for a weight and much cheaper than float on 8K frames).
            mask = Image.fromarray(valid.view(np.uint8) * np.uint8(255))
            weight = np.asarray(mask.resize((rw, rh), resample=resample), dtype=np.float32) / np.float32(255.0)
            mostly_valid = weight >= 0.5
            np.divide(out, weight, out=out, where=mostly_valid)
            out[~mostly_valid] = 0.0
        np.clip(out, 0.0, 1.0, out=out)
    left, top = (rw - tw) // 2, (rh - th) // 2
    crop = (left, top, rw - tw - left, rh - th - top)
    if crop != (0, 0, 0, 0):
        out = np.ascontiguousarray(out[top:top + th, left:left + tw])
    return ControlImage(out, crop)


def _resize(values: np.ndarray, width: int, height: int, resample) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
    return np.array(img.resize((width, height), resample=resample), dtype=np.float32)
