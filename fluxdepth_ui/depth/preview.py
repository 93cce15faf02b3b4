"""One call from a depth file to everything the preview panel and the pipeline need.

The CLI (`fluxdepth preview`), the UI's preview handler and `fluxdepth generate` all go through `prepare_depth`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from .channels import DepthMap, load_depth
from ..schema import check_fields, setting
from .control import DEFAULT_LONG_SIDE, MAX_LONG_SIDE, MIN_LONG_SIDE, MULTIPLE, ControlImage, make_control_image
from ..atomic import atomic_path
from ..errors import display_name
from .errors import DepthInputError
from .normalize import DEFAULT_EDGES, ControlMap, DepthRange, NormalizeSettings, normalize, treat_edges

HISTOGRAM_BINS = 128
BANDING_LEVELS = 512
_UNIQUE_SAMPLE = 1_000_000


@dataclass(frozen=True)
class DepthSettings:
    """How one depth file is read and normalized (the depth half of settings.ShotSettings)."""

    channel: str | None = setting(None, label="Channel", kind=str, unset="auto", preset=False,
                                  help="channel to read, e.g. Z or depth.Z; auto searches Pz, depth, Z, ... in every "
                                       "part")
    normalize: NormalizeSettings = field(default_factory=NormalizeSettings)
    long_side: int = setting(DEFAULT_LONG_SIDE, label="Long side (px)", kind=int, bounds=(MIN_LONG_SIDE,
                             MAX_LONG_SIDE), step=MULTIPLE, help="control map long side in pixels: the image's size "
                                                                "(multiples of 16)")
    fixed_range: DepthRange | None = None  # a sequence's shared range (sequence.py)

    def __post_init__(self):
        check_fields(self, DepthInputError)
        if self.channel is not None and (not isinstance(self.channel, str) or len(self.channel) > 200):
            raise DepthInputError("channel must be a short text")
        if not isinstance(self.normalize, NormalizeSettings):
            raise DepthInputError("normalize must be NormalizeSettings")


@dataclass(frozen=True)
class Histogram:
    edges: np.ndarray  # bin edges, len = counts + 1 (log10 of the value when `log`)
    counts: np.ndarray
    log: bool = False
    markers: tuple[float, ...] = ()  # clip ends, in the same units as `edges`

    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2


@dataclass(frozen=True)
class DepthStats:
    file: str
    format: str
    channel: str
    channels: tuple[str, ...]
    kind: str
    sample_type: str
    source_width: int
    source_height: int
    width: int
    height: int
    valid_fraction: float
    raw_min: float | None
    raw_max: float | None
    raw_clip: tuple[float, float] | None  # the raw values the far and near ends correspond to
    unique_levels: int
    mode: str
    inverted: bool
    range: dict
    warnings: tuple[str, ...]
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # px cut at control size to keep the aspect (l, t, r, b)
    edge_pixels: int = 0  # anti-aliased in-between pixels moved onto a surface
    edges: str = DEFAULT_EDGES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["warnings"] = list(self.warnings)
        d["crop"] = list(self.crop)
        d["raw_clip"] = [c if np.isfinite(c) else None for c in self.raw_clip] if self.raw_clip else None
        return d

    def summary(self) -> str:
        """The one-line stats text shown under the preview."""
        parts = [
            f"{self.file} · {self.channel} ({self.sample_type})",
            f"{self.source_width}×{self.source_height} → {self.width}×{self.height}",
            f"valid {self.valid_fraction:.1%}",
        ]
        if self.raw_min is not None:
            parts.append(f"raw {self.raw_min:.4g}…{self.raw_max:.4g}")
        parts.append(f"mode {self.mode}{' (inverted)' if self.inverted else ''}")
        parts.append(f"{self.unique_levels} levels")
        if any(self.crop):
            left, top, right, bottom = self.crop
            parts.append(f"cropped {left + right}×{top + bottom} px to keep the aspect")
        if self.edge_pixels:
            parts.append(f"edges {self.edges}: {self.edge_pixels} px")
        return " · ".join(parts)


@dataclass(frozen=True)
class DepthPreview:
    depth: DepthMap
    control_map: ControlMap
    control: ControlImage
    stats: DepthStats
    log_histogram: bool = False

    # Histograms are made when a panel shows them, not for the CLI or a sequence frame that never does.
    @cached_property
    def raw_histogram(self) -> Histogram:
        raw = self.depth.values[self.control_map.valid]
        return _raw_histogram(raw, self.stats.raw_clip, self.log_histogram)

    @cached_property
    def control_histogram(self) -> Histogram:
        cmap = self.control_map
        return Histogram(*_hist(cmap.values[cmap.valid], 64, (0.0, 1.0))[::-1])


def prepare_depth(path: str, settings: DepthSettings = DepthSettings(), log_histogram: bool = False) -> DepthPreview:
    depth = load_depth(path, settings.channel)
    return prepare_loaded(depth, settings, log_histogram)


def prepare_loaded(depth: DepthMap, settings: DepthSettings, log_histogram: bool = False) -> DepthPreview:
    cmap = normalize(depth, settings.normalize, settings.fixed_range)
    control = make_control_image(cmap.values, settings.long_side, cmap.valid)
    # Renders only: a made image (Depth Anything, a ComfyUI map) already has the soft edges the model was trained on.
    edge_pixels = 0
    if depth.kind in ("metric", "inverse"):
        # With a background, valid pixels sit above it (the gap); without one, 0 is the far end and valid too.
        valid = control.pixels > 0 if not cmap.valid.all() else np.ones(control.pixels.shape, dtype=bool)
        edge_pixels = treat_edges(control.pixels, valid, not cmap.inverted, settings.normalize.edges)
    raw = depth.values[cmap.valid]
    raw_clip = _raw_clip(cmap.range, depth)
    levels = unique_levels(depth, raw)
    warnings = list(cmap.warnings)
    if levels < BANDING_LEVELS:
        source = {"half": "half-float", "uint8": "8-bit"}.get(depth.sample_type, "quantized")
        warnings.append(f"only {levels} distinct depth levels ({source} source): expect banding")
    flat = flat_relief_warning(cmap, depth.kind)
    if flat:
        warnings.append(flat)
    stats = DepthStats(
        file=depth.name,
        format=depth.source_format,
        channel=depth.channel,
        channels=depth.channels,
        kind=depth.kind,
        sample_type=depth.sample_type,
        source_width=depth.width,
        source_height=depth.height,
        width=control.width,
        height=control.height,
        valid_fraction=raw.size / cmap.valid.size,
        raw_min=float(raw.min()) if raw.size else None,
        raw_max=float(raw.max()) if raw.size else None,
        raw_clip=raw_clip,
        unique_levels=levels,
        mode=cmap.mode,
        inverted=cmap.inverted,
        range=cmap.range.to_dict(),
        warnings=tuple(warnings),
        crop=control.crop,
        edge_pixels=edge_pixels,
        edges=settings.normalize.edges,
    )
    return DepthPreview(depth, cmap, control, stats, log_histogram)


# Below this spread of the nearer half of the picture, near objects come out as flat cut-outs (docs/depth.md,
# "Flat relief"): measured 0.22-0.64 on real renders and photos, 0.04 on a plain-distance export read as is.
FLAT_RELIEF = 0.10
RELIEF_SAMPLES = 1 << 20


def relief(cmap: ControlMap) -> float | None:
    """How much of the control range the nearer half of the picture spans (5th-95th percentile of the pixels above
    the median, the far end left out). None when too little is in front of the background to say."""
    step = max(1, int(np.sqrt(cmap.values.size / RELIEF_SAMPLES)))
    values = cmap.values[::step, ::step][cmap.valid[::step, ::step]]
    values = values[values > 0.02]  # the far end and the background are not the subject
    if values.size < 64:
        return None
    nearer = values[values >= np.median(values)]
    if np.unique(nearer).size < 16:
        return None  # a few flat planes (a box before a wall) are flat in the scene too: nothing squeezed them
    low, high = np.percentile(nearer, (5, 95))
    return float(high - low)


def flat_relief_warning(cmap: ControlMap, kind: str) -> str | None:
    spread = relief(cmap)
    if spread is None or spread >= FLAT_RELIEF:
        return None
    message = (f"near objects will come out flat: the nearer half of the picture spans only {spread:.0%} of the "
               "control range")
    if kind == "image" and cmap.inverted:
        return message + ("; this looks like plain distance (near dark): give the export's near and far distances "
                          "with mode disparity to turn it into inverse depth")
    if kind == "image":
        return message + "; if this image holds distances, give near and far with mode disparity"
    return message + "; lower the far clip or set near and far so the subject fills more of the range"


def _hist(values: np.ndarray, bins: int, rng: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    counts, edges = np.histogram(values, bins=bins, range=rng)
    return counts, edges


def _raw_clip(rng: DepthRange, depth: DepthMap) -> tuple[float, float] | None:
    """The far and near ends of the range in the file's own units."""
    if rng.mode == "disparity" and depth.kind == "metric":
        far = 1.0 / rng.low if rng.low > 0 else float("inf")
        return (far, 1.0 / rng.high) if rng.high > 0 else None
    if rng.mode == "linear":
        return (rng.high, rng.low)
    if rng.mode == "disparity":  # a made image with near/far: ends are codes, not shown
        return None
    return (rng.low, rng.high)


def _raw_histogram(raw: np.ndarray, clip: tuple[float, float] | None, log: bool) -> Histogram:
    if raw.size == 0:
        return Histogram(np.linspace(0, 1, HISTOGRAM_BINS + 1), np.zeros(HISTOGRAM_BINS, np.int64), log)
    markers = tuple(c for c in (clip or ()) if np.isfinite(c))
    if log:
        positive = raw[raw > 0]
        if positive.size == 0:
            log = False
        else:
            raw = np.log10(positive)
            markers = tuple(float(np.log10(m)) for m in markers if m > 0)
    lo, hi = float(raw.min()), float(raw.max())
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = _hist(raw, HISTOGRAM_BINS, (lo, hi))
    return Histogram(edges, counts, log, markers)


def unique_levels(depth: DepthMap, v: np.ndarray) -> int:
    """Distinct source values `v` (the valid pixels): exact for 8/16-bit and half, sampled for float32."""
    if v.size == 0:
        return 0
    if depth.sample_type in ("uint8", "uint16") and depth.kind != "inverse":
        return int(np.count_nonzero(np.bincount(v.astype(np.uint32))))
    if depth.sample_type == "half":
        return int(np.count_nonzero(np.bincount(v.astype(np.float16).view(np.uint16))))
    if v.size > _UNIQUE_SAMPLE:
        v = v[:: v.size // _UNIQUE_SAMPLE + 1]
    return int(np.unique(v).size)


def write_preview_png(control: ControlImage, path: str, compress_level: int = 6) -> None:
    """16-bit greyscale PNG of the control image: what the model is fed, without the 8-bit squeeze.

    compress_level 1 writes ~5x faster for throwaway previews; 6 (zlib's default) makes smaller files to keep.
    """
    from PIL import Image

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DepthInputError(f"the output folder of {display_name(path)} does not exist; create it or pick "
                              "another path")
    with atomic_path(path) as tmp:
        Image.fromarray(control.to_uint16()).save(tmp, format="PNG", compress_level=compress_level)


def stats_json(stats: DepthStats) -> str:
    return json.dumps(stats.to_dict(), allow_nan=False, default=_finite)


def _finite(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
