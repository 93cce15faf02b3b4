"""Choosing the depth channel of a raster and saying what its numbers mean.

Three kinds of content (depth-conventions.md §6):
- `metric`: distance in scene units, near = small (Houdini `Pz`, Karma `depth`, `Z`, sensor millimetres);
- `inverse`: already 1/Z (Nuke `depth.Z`, Maya `-1/z`, Kinect raw disparity after conversion);
- `image`: an already-made depth picture (grey PNG, EXR with R=G=B or `Y`), usually near = white.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import display_name
from .errors import DepthInputError
from .readers import Channel, Raster

_DEPTH_TOKENS = {"pz", "depth", "z"}
_COMPONENT_TOKENS = {"z", "v", "r", "y", "x"}
# Prefixes of vector AOVs whose `.z` is not depth (normals, positions, motion, colours).
_VECTOR_PREFIXES = {
    "p", "n", "ng", "nn", "pw", "pref", "normal", "normals", "position", "pos", "v", "vel", "velocity", "motion",
    "vector", "vectors", "uv", "tangent", "forward", "backward", "disparityl", "disparityr", "albedo", "color",
    "diffuse", "specular", "emission", "combined", "mv", "flow",
}
# Full-scale codes of made 16-bit depth images: 16-bit, 8-bit scaled x257 or x256, Photoshop's 15-bit.
_FULL_SCALE_CODES = (65535, 65280, 32768, 32767)
_KINECT_INVALID = 2047


@dataclass(frozen=True)
class DepthMap:
    """One depth channel, placed in the display window, with what its values mean."""

    values: np.ndarray  # float32 (H, W); NaN where the file has no data
    kind: str  # "metric" | "inverse" | "image"
    channel: str
    channels: tuple[str, ...]
    source_format: str
    sample_type: str  # "half", "float", "uint8", "uint16", "float32", ...
    name: str
    alpha: np.ndarray | None = None  # bool (H, W): pixel has coverage; None when the file has no alpha
    notes: tuple[str, ...] = ()
    near_is_bright: bool = False  # polarity known (e.g. Depth Anything output): auto invert never flips it

    @property
    def width(self) -> int:
        return self.values.shape[1]

    @property
    def height(self) -> int:
        return self.values.shape[0]

    @property
    def is_integer(self) -> bool:
        return self.sample_type.startswith(("uint", "int"))


def depth_name_tier(name: str) -> int | None:
    """1 for plain depth names (`Pz`, `depth`, `Z`), 2 for qualified ones (`depth.Z`, `Depth.V`, `left.Z`), else None."""
    tokens = name.lower().split(".")
    if len(tokens) == 1:
        return 1 if tokens[0] in _DEPTH_TOKENS else None
    if tokens[-1] in ("pz", "depth"):
        return 2
    if tokens[-2] in _DEPTH_TOKENS and tokens[-1] in _COMPONENT_TOKENS:
        return 2
    if tokens[-1] == "z" and tokens[-2] not in _VECTOR_PREFIXES:
        return 2
    return None


def load_depth(path: str, channel: str | None = None) -> DepthMap:
    """Read a depth file and pick its depth channel (or `channel`, when the user names one)."""
    from .readers import read_raster

    return interpret(read_raster(path), channel)


def interpret(raster: Raster, channel: str | None = None) -> DepthMap:
    name = display_name(raster.path)
    notes = list(raster.notes)
    if channel:
        chosen = _named_channel(raster, channel)
        kind = "metric" if _is_depth_like(chosen.name) else "image"
    else:
        chosen, kind = _auto_channel(raster)
    if kind == "metric" and _written_by_nuke(raster) and "depth" in chosen.name.lower():
        kind = "inverse"
        notes.append(f"{chosen.name} was written by Nuke, which stores 1/Z: read as inverse depth")

    values = _place(chosen, raster.width, raster.height)
    alpha = _alpha_for(raster, chosen)
    sample_type = chosen.sample_type

    if kind == "image" and chosen.data.dtype.kind in "ui" and chosen.data.dtype.itemsize >= 2:
        kind, extra = _classify_integer_grey(values)
        notes += extra
    elif kind == "image" and chosen.data.dtype.kind == "f" and chosen.name == "Y" and raster.format != "exr":
        # Single-channel float rasters (PFM, float TIFF, NPY) hold depth unless they are a [0, 1] made map.
        finite = values[np.isfinite(values)]
        if finite.size and not (finite.min() == 0.0 and finite.max() == 1.0):
            kind = "metric"
    if kind == "metric":
        values, extra = _fix_sign(values)
        notes += extra
    if kind == "inverse" and values.size and np.nanmin(values) < 0:
        values = np.abs(values)
    if kind == "metric" and chosen.data.dtype.kind in "ui" and _is_kinect_raw(values):
        values = (1092.5 - values) / 351.3
        values[~(values > 0)] = np.nan
        kind = "inverse"
        notes.append("Kinect v1 raw disparity (11-bit, 2047 = no data): converted to 1/metres")
    return DepthMap(
        values=values.astype(np.float32, copy=False),
        kind=kind,
        channel=chosen.name,
        channels=raster.names(),
        source_format=raster.format,
        sample_type=sample_type,
        name=name,
        alpha=alpha,
        notes=tuple(notes),
    )


def _named_channel(raster: Raster, wanted: str) -> Channel:
    for chan in raster.channels:
        if chan.name == wanted:
            return chan
    for chan in raster.channels:
        if chan.name.lower() == wanted.lower():
            return chan
    raise DepthInputError(
        f"{display_name(raster.path)} has no channel {wanted!r}; its channels are: {', '.join(raster.names())}"
    )


def _is_depth_like(name: str) -> bool:
    return depth_name_tier(name) is not None or name.lower().split(".")[-1] in ("z", "pz", "depth")


def _auto_channel(raster: Raster) -> tuple[Channel, str]:
    other_views = {v.lower() for v in raster.views[1:]}

    def view_penalty(chan: Channel) -> int:
        return int("." in chan.name and chan.name.split(".")[0].lower() in other_views)

    ranked = sorted(
        (
            (tier, view_penalty(c), c.part, i, c)
            for i, c in enumerate(raster.channels)
            if (tier := depth_name_tier(c.name)) is not None
        ),
        key=lambda t: t[:4],
    )
    if ranked:
        return ranked[0][4], "metric"

    names = {c.name: c for c in raster.channels}
    if "Y" in names:
        return names["Y"], "image"
    grey = _grey_rgb(raster)
    if grey is not None:
        return grey, "image"
    base = display_name(raster.path)
    if {"R", "G", "B"} <= set(names):
        if raster.format == "exr":
            raise DepthInputError(
                f"{base} has no depth channel and its R, G, B differ (a colour image); its channels are: "
                f"{', '.join(raster.names())}; choose the depth channel (--channel NAME, or the Channel menu in the app)"
            )
        raise DepthInputError(
            f"{base} looks like a colour visualisation (R, G, B differ), not a depth map; "
            "export the raw grey depth (16-bit PNG or EXR) instead of a colour-mapped one"
        )
    raise DepthInputError(
        f"{base} has no depth channel; its channels are: {', '.join(raster.names())}; "
        "choose one (--channel NAME, or the Channel menu in the app)"
    )


def _grey_rgb(raster: Raster) -> Channel | None:
    """The R channel of an R=G=B triplet (preferring the unprefixed one), or None."""
    by_prefix: dict[tuple[int, str], dict[str, Channel]] = {}
    for chan in raster.channels:
        prefix, _, comp = chan.name.rpartition(".")
        if comp in ("R", "G", "B"):
            by_prefix.setdefault((chan.part, prefix), {})[comp] = chan
    tolerance = 3 if raster.format == "jpeg" else 0  # JPEG chroma noise on grey content
    for (_, prefix), rgb in sorted(by_prefix.items(), key=lambda kv: (kv[0][1] != "", kv[0])):
        if len(rgb) < 3:
            continue
        r, g, b = (rgb[c].data for c in "RGB")
        if r.dtype.kind == "f":
            rr = r.astype(np.float32)
            ok = np.allclose(rr, g, atol=1e-5, equal_nan=True) and np.allclose(rr, b, atol=1e-5, equal_nan=True)
        else:
            ri = r.astype(np.int32)
            ok = (np.abs(ri - g) <= tolerance).all() and (np.abs(ri - b) <= tolerance).all()
        if ok:
            return rgb["R"]
    return None


def _place(chan: Channel, width: int, height: int) -> np.ndarray:
    """Paste a data window into the display window as float32; outside the data window there is no data (NaN)."""
    data = chan.data
    x, y = chan.origin
    h, w = data.shape
    if (x, y) == (0, 0) and (h, w) == (height, width):
        return data.astype(np.float32, copy=False)  # shared with the raster: never modified in place
    out = np.full((height, width), np.nan, dtype=np.float32)
    sx0, sy0 = max(0, -x), max(0, -y)
    dx0, dy0 = max(0, x), max(0, y)
    cw, ch = min(w - sx0, width - dx0), min(h - sy0, height - dy0)
    if cw > 0 and ch > 0:
        out[dy0 : dy0 + ch, dx0 : dx0 + cw] = data[sy0 : sy0 + ch, sx0 : sx0 + cw]
    return out


def _alpha_for(raster: Raster, chan: Channel) -> np.ndarray | None:
    prefix = chan.name.rpartition(".")[0]
    candidates = [f"{prefix}.A" if prefix else "A", "A"]
    for wanted in candidates:
        for other in raster.channels:
            if other.part == chan.part and other.name == wanted and other is not chan:
                alpha = _place(other, raster.width, raster.height)
                covered = alpha > 0
                return None if covered.all() else covered
    return None


def _written_by_nuke(raster: Raster) -> bool:
    if any(key.lower().startswith("nuke") for key in raster.metadata):
        return True
    software = str(raster.metadata.get("software", raster.metadata.get("writer", "")))
    return "nuke" in software.lower()


def _classify_integer_grey(values: np.ndarray) -> tuple[str, list[str]]:
    """A 16-bit grey raster is either a made depth image (reaches full scale) or raw units (mm, sensor counts)."""
    finite = values[np.isfinite(values)]
    nonzero = finite[finite > 0]
    if nonzero.size == 0:
        return "image", []
    top = float(nonzero.max())
    if any(abs(top - code) <= code * 0.005 for code in _FULL_SCALE_CODES):
        note = []
        if top <= 32768:
            note.append("15-bit source (max 32768, e.g. Photoshop): re-stretched to the full range")
        return "image", note
    if top <= 255:
        return "image", ["16-bit file holding only 8-bit values: expect banding"]
    return "metric", [
        f"16-bit values {int(nonzero.min())}..{int(top)} never reach full scale: read as raw distances "
        "(0 = no data); choose mode passthrough if this is a made depth image"
    ]


def _fix_sign(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Camera-space z (Karma P.z, Maya) is negative in front of the camera: use -z when most values are negative."""
    with np.errstate(invalid="ignore"):
        negative, positive = np.count_nonzero(values < 0), np.count_nonzero(values > 0)
    if negative > positive:
        return np.negative(values), ["values are mostly negative (camera-space z): using -z"]
    return values, []


def _is_kinect_raw(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if not finite.size or finite.max() != _KINECT_INVALID:
        return False
    return np.count_nonzero(finite == _KINECT_INVALID) >= finite.size * 0.001
