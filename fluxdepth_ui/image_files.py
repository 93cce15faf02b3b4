"""High-precision copies of a result, from the VAE's float decode (docs/outputs.md).

The model's decode is float; the 8-bit PNG rounds it to 256 levels, which bands in skies and fog once a compositor
grades it. These writers keep the float values:

- `png16`: 16-bit RGB PNG, the same sRGB-encoded values as the 8-bit PNG at 65,536 levels (pypng: Pillow cannot
  write 16-bit RGB), with the same settings record inside.
- `exr`: half-float RGB EXR, linear Rec.709 (the sRGB transfer removed), as Nuke and Houdini's compositor expect
  for a plate; the header states it (chromaticities, `colorInteropID` lin_rec709_scene) and carries the record.

No torch here; pixels are float32 (H, W, 3) in [0, 1].
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from .atomic import atomic_path
from .defaults import EXTRA_FORMATS
from .errors import FluxDepthError

SUFFIXES = {"png16": "-16bit.png", "exr": ".exr"}
# sRGB / Rec.709 primaries and D65 white, in the order OpenEXR's chromaticities attribute takes them.
REC709_CHROMATICITIES = (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290)


def check_formats(formats) -> tuple[str, ...]:
    """A list of extra formats (or one comma-separated text) as a tuple in a fixed order; one line when unknown."""
    if isinstance(formats, str):
        formats = formats.split(",")
    if formats is not None and not isinstance(formats, (list, tuple)):
        raise FluxDepthError(f"output formats must be a list of names; choose from: {', '.join(EXTRA_FORMATS)}")
    if len(formats or ()) > 8:
        raise FluxDepthError(f"too many output formats; choose from: {', '.join(EXTRA_FORMATS)}")
    names = [str(f).strip().lower() for f in (formats or ()) if str(f).strip()]
    unknown = [n for n in names if n not in EXTRA_FORMATS]
    if unknown:
        shown = f" {unknown[0]!r}" if unknown[0].isalnum() and len(unknown[0]) <= 12 else ""  # never echo a path
        raise FluxDepthError(f"unknown output format{shown}; choose from: {', '.join(EXTRA_FORMATS)}")
    return tuple(n for n in EXTRA_FORMATS if n in names)


def extra_path(png: str, fmt: str) -> str:
    return os.path.splitext(png)[0] + SUFFIXES[fmt]


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1) inverted."""
    v = np.asarray(values, dtype=np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """The sRGB transfer function: an EXR written here, encoded back for display."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, None)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055).astype(np.float32)


def write_png16(pixels: np.ndarray, path: str, record: dict) -> str:
    import png  # pypng

    rgb = np.clip(pixels, 0.0, 1.0)
    levels = np.round(rgb * 65535.0).astype(">u2")
    height, width = levels.shape[:2]
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=False, bitdepth=16, compression=6).write_array(buffer, levels.ravel())
    chunks = list(png.Reader(bytes=buffer.getvalue()).chunks())
    text = b"fluxdepth\x00\x00\x00\x00\x00" + json.dumps(record).encode("utf-8")  # iTXt, uncompressed
    chunks.insert(len(chunks) - 1, (b"iTXt", text))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        png.write_chunks(fh, chunks)
    return path


def write_exr(pixels: np.ndarray, path: str, record: dict) -> str:
    import OpenEXR

    linear = srgb_to_linear(np.clip(pixels, 0.0, 1.0)).astype(np.float16)
    header = {
        "compression": OpenEXR.ZIP_COMPRESSION,
        "type": OpenEXR.scanlineimage,
        "chromaticities": REC709_CHROMATICITIES,
        "colorInteropID": "lin_rec709_scene",
        "fluxdepth": json.dumps(record),
        "software": "FluxDepth Studio",
    }
    with atomic_path(path) as tmp:
        OpenEXR.File(header, {"RGB": np.ascontiguousarray(linear)}).write(tmp)
    return path


WRITERS = {"png16": write_png16, "exr": write_exr}


def write_extras(pixels: np.ndarray | None, png: str, formats: tuple[str, ...], record: dict) -> dict[str, str]:
    """Write each of `formats` beside `png`; returns format -> path."""
    if formats and pixels is None:
        raise FluxDepthError("this backend returned 8-bit pixels only; 16-bit PNG and EXR are not available")
    return {fmt: WRITERS[fmt](pixels, extra_path(png, fmt), record) for fmt in formats}


def read_extra(path: str) -> np.ndarray:
    """Decode a file written here back to float32 (H, W, 3): what the tests and resume checks compare."""
    if path.endswith(".exr"):
        import OpenEXR

        with OpenEXR.File(path) as f:
            return np.asarray(f.channels()["RGB"].pixels, dtype=np.float32)
    import png

    width, height, rows, _ = png.Reader(filename=path).asDirect()
    return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, 3) / 65535.0


def read_record(path: str) -> dict | None:
    """The settings record inside a png16 or exr file."""
    if path.endswith(".exr"):
        import OpenEXR

        with OpenEXR.File(path, header_only=True) as f:
            raw = f.header().get("fluxdepth")
        return json.loads(raw) if raw else None
    import png

    for kind, data in png.Reader(filename=path).chunks():
        if kind == b"iTXt" and data.startswith(b"fluxdepth\x00"):
            return json.loads(data.split(b"\x00", 5)[5].decode("utf-8"))
    return None

