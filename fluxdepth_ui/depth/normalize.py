"""Depth -> control map in the convention FLUX.1-Depth-dev was trained on (docs/depth.md).

Output: float32 (H, W) in [0, 1], near = 1.0 (white), background = 0.0, linear in inverse depth for metric input.
Nothing is rounded to 8 bits here.

Modes (the working variable x the ends are taken on):
- `disparity`: x = 1/Z. v = (x - lo) / (hi - lo); with background, v = g + (1 - g) v and background 0.
- `inverse`: input already 1/Z; same as disparity on |x|.
- `linear`: x = Z. v = (hi - Z) / (hi - lo) (inverted linear depth; Nuke/ComfyUI habit, fine for shallow scenes).
- `passthrough`: x = the made image; v = (x - min) / (max - min); polarity auto-checked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

import numpy as np

from ..schema import check_fields, setting
from .channels import DepthMap, speck_floor
from .errors import DepthInputError

MODES = ("auto", "disparity", "linear", "inverse", "passthrough")
INVERT_CHOICES = ("auto", "on", "off")
# What a made depth image's bright end means, for converting it back to distances with near/far.
POLARITY_CHOICES = ("auto", "near-white", "near-black")
# Anti-aliased pixels between two surfaces (docs/depth.md, "Edges"): snap to the surface they are closest to, take
# the nearer or the farther one, or keep the in-between value.
EDGE_CHOICES = ("snap", "near", "far", "off")
DEFAULT_EDGES = EDGE_CHOICES[0]
DEFAULT_CLIP = (0.5, 99.5)
GAP_MAX = 0.25
PASSTHROUGH_GAP = 0.04  # a made image's far end over an empty background: about 10 of 255 grey levels
# Below this share of invalid pixels there is no background worth a gap (a few NaN edge pixels are not sky).
_BACKGROUND_MIN_FRACTION = 0.001
_HALF_MAX = 65504.0
_SENTINEL_MIN = 1e9
# Percentiles are taken on a strided sample of at most this many valid pixels per frame.
_MAX_SAMPLES_PER_FRAME = 4_000_000


@dataclass(frozen=True)
class NormalizeSettings:
    """How raw depth becomes the control map (module docstring; docs/depth.md). The `setting` fields are the
    user's controls (fluxdepth_ui/schema.py); gap_max is internal."""

    mode: str = setting("auto", label="Mode", kind=str, choices=MODES,
                        help="normalization: auto picks by the kind of file; disparity (1/Z), linear, inverse (already "
                             "1/Z) or passthrough (a made depth image)")
    invert: str = setting("auto", label="Invert", kind=str, choices=INVERT_CHOICES, widget="radio",
                          help="flip near/far: auto, on or off")
    clip: tuple[float, float] = setting(DEFAULT_CLIP, label="Clip (percentiles)", bounds=(0.0, 100.0),
                                        parts=("clip_low", "clip_high"),
                                        part_labels=("Far clip (percentile)", "Near clip (percentile)"),
                                        metavar=("LOW", "HIGH"),
                                        help="percentiles of the valid depths that map to the far end and to white")
    near: float | None = setting(None, label="Near distance (0 = from percentiles)", bounds=(0.0, math.inf),
                                 low_open=True, unset=0.0, hint="scene units",
                                 help="distance that maps to white, in scene units (0 or empty: from the percentiles)")
    far: float | None = setting(None, label="Far distance (0 = from percentiles)", bounds=(0.0, math.inf),
                                low_open=True, unset=0.0, hint="scene units",
                                help="distance that maps to the far end, in scene units (0 or empty: from the "
                                     "percentiles)")
    gap_max: float = GAP_MAX
    polarity: str = setting("auto", label="Polarity", kind=str, choices=POLARITY_CHOICES,
                            help="which end of a made depth image is near, for near/far: auto reads it from the frame")
    edges: str = setting(DEFAULT_EDGES, label="Edges", kind=str, choices=EDGE_CHOICES,
                         help="anti-aliased pixels between two surfaces: snap to the closer surface, take the near or "
                              "far one, or off")

    def __post_init__(self):
        check_fields(self, DepthInputError)
        lo, hi = self.clip
        if not lo < hi:
            raise DepthInputError(f"far clip {lo:g} and near clip {hi:g} (percentiles) must satisfy 0 <= far < near "
                                  f"<= 100, e.g. {DEFAULT_CLIP[0]:g} and {DEFAULT_CLIP[1]:g}")
        if self.near is not None and self.far is not None and self.near >= self.far:
            raise DepthInputError(f"near ({self.near}) must be smaller than far ({self.far})")
        if not (0.0 <= self.gap_max < 1.0):
            raise DepthInputError(f"gap_max must be in [0, 1), got {self.gap_max}")


@dataclass(frozen=True)
class DepthRange:
    """The mapping from working values to [0, 1]: fixed once, it can be reused across the frames of a sequence."""

    mode: str  # resolved: disparity | linear | inverse | passthrough
    low: float  # working-value end that maps to the far end
    high: float  # working-value end that maps to white
    gap: float = 0.0  # background gap: far end maps to `gap`, background to 0
    inverted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DepthRange":
        try:
            rng = cls(
                mode=str(data["mode"]),
                low=float(data["low"]),
                high=float(data["high"]),
                gap=float(data.get("gap", 0.0)),
                inverted=bool(data.get("inverted", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DepthInputError(f"depth range is missing or has a bad field ({exc}); recompute the stats") from None
        if rng.mode not in MODES[1:] or not (np.isfinite(rng.low) and np.isfinite(rng.high)):
            raise DepthInputError(f"depth range {data} is not valid; recompute the stats")
        return rng


@dataclass(frozen=True)
class ControlMap:
    values: np.ndarray  # float32 (H, W) in [0, 1], near = 1
    valid: np.ndarray  # bool (H, W)
    range: DepthRange
    warnings: tuple[str, ...] = field(default=())

    @property
    def mode(self) -> str:
        return self.range.mode

    @property
    def inverted(self) -> bool:
        return self.range.inverted


def resolve_mode(depth: DepthMap, settings: NormalizeSettings) -> str:
    if settings.mode != "auto":
        return settings.mode
    return {"metric": "disparity", "inverse": "inverse", "image": "passthrough"}[depth.kind]


def as_settings_say(depth: DepthMap, settings: NormalizeSettings) -> DepthMap:
    """An 8/16-bit file read as raw distances is a made image when the artist says what its ends mean
    (--polarity), asks for its values flipped (--invert on), or gives near and far that cannot be distances in its
    units (all values far beyond far)."""
    if depth.kind != "metric" or depth.sample_type not in ("uint8", "uint16"):
        return depth
    from .layout import as_made_image

    if settings.polarity != "auto":
        return as_made_image(depth, f"polarity {settings.polarity} given: read as a made depth image")
    if settings.invert == "on":  # "flip this export's values": the long-standing workaround for near-black exports
        return as_made_image(depth, "invert on: read as a made depth image, its values flipped")
    if settings.near is not None and settings.far is not None:
        finite = depth.values[np.isfinite(depth.values) & (depth.values > 0)]
        if finite.size and float(np.median(finite)) > 10 * settings.far:
            return as_made_image(depth, f"values {finite.min():.0f}..{finite.max():.0f} cannot be distances with far "
                                        f"{settings.far:g}: read as a made depth image between near and far")
    return depth


def valid_mask(depth: DepthMap) -> np.ndarray:
    """Pixels that carry depth. Everything else is background and ends at 0 (black, far)."""
    v = depth.values
    valid = np.isfinite(v)
    if depth.alpha is not None:
        valid &= depth.alpha
    if depth.background is not None:
        valid &= ~depth.background
    if depth.kind in ("metric", "inverse"):
        with np.errstate(invalid="ignore"):
            valid &= v > 0
            if depth.kind == "metric" and depth.sample_type in ("half", "float", "float32"):
                valid &= v >= speck_floor(v)  # a lossy codec's specks in an empty sky are background
            if depth.kind == "metric":
                valid &= v < (_HALF_MAX if depth.sample_type == "half" else _SENTINEL_MIN)
                if depth.sample_type == "uint16":
                    valid &= v < 65535
    return valid


def _working_values(depth: DepthMap, mode: str, valid: np.ndarray, settings: NormalizeSettings) -> np.ndarray:
    """The variable the mode is linear in, float32, only meaningful on `valid`."""
    x = depth.values
    if mode == "disparity" and depth.kind == "image" and settings.near is not None and settings.far is not None:
        # A made image that is a linear remap of Z between near and far: rebuild Z (in the file's own polarity),
        # then 1/Z.
        top = _code_max(depth)
        p = np.divide(x, top, dtype=np.float32)
        if made_image_near_white(depth, settings, valid):
            p = np.float32(1.0) - p
        z = settings.near + p * np.float32(settings.far - settings.near)
        return np.divide(1.0, z, out=np.zeros_like(z), where=valid)
    if mode == "disparity" and depth.kind == "metric":
        return np.divide(1.0, x, out=np.zeros_like(x), where=valid)
    return np.array(x, dtype=np.float32)  # a copy: normalize() works on it in place


def made_polarity(depth: DepthMap, settings: NormalizeSettings) -> bool | None:
    """Whether a made depth image's near end is white: as stated (--polarity), as known (Depth Anything), or as its
    layout says (depth/layout.py); None when none of these tells."""
    if settings.polarity != "auto":
        return settings.polarity == "near-white"
    if depth.near_is_bright:
        return True
    return depth.made_near_white


def made_image_near_white(depth: DepthMap, settings: NormalizeSettings, valid: np.ndarray) -> bool:
    """For converting a made image back to distances: unknown polarity is taken as a Z remap (near = black)."""
    known = made_polarity(depth, settings)
    return bool(known) if known is not None else False


def made_image_polarity_note(depth: DepthMap, settings: NormalizeSettings, valid: np.ndarray) -> str | None:
    if made_polarity(depth, settings) is None:
        return (f"the file's polarity could not be read from the frame ({depth.layout_reason}): assumed near = "
                "black, a linear remap of Z; if near is white in the file, set polarity near-white "
                "(--polarity near-white)")
    return None


def _code_max(depth: DepthMap) -> float:
    if depth.sample_type == "uint8":
        return 255.0
    if depth.sample_type == "uint16":
        return 65535.0
    finite = depth.values[np.isfinite(depth.values)]
    return float(finite.max()) if finite.size else 1.0


def compute_range(depth: DepthMap, settings: NormalizeSettings = NormalizeSettings()) -> DepthRange:
    """The range one map would be normalized with (percentile ends, background gap, polarity)."""
    return _range_from_samples([_samples(depth, settings)], settings)


def compute_sequence_range(depths: Iterable[DepthMap], settings: NormalizeSettings = NormalizeSettings(),
                           samples_per_frame: int = _MAX_SAMPLES_PER_FRAME) -> DepthRange:
    """One range over many frames (pooled percentiles), so every frame of a camera move is mapped alike.

    `depths` may be a generator: frames are read one at a time and only a strided sample of each is kept.
    """
    samples = [_samples(d, settings, max_samples=samples_per_frame) for d in depths]
    if not samples:
        raise DepthInputError("no frames to compute a depth range from")
    modes = {s.mode for s in samples}
    if len(modes) > 1:
        raise DepthInputError(f"frames resolve to different modes ({', '.join(sorted(modes))}); set the mode")
    return _range_from_samples(samples, settings)


@dataclass
class _Samples:
    mode: str
    values: np.ndarray  # working values on valid pixels (subsampled for big frames)
    background: bool
    near_black: bool | None  # passthrough polarity vote
    working: np.ndarray | None = None  # the full working-value frame, kept for normalize()
    valid: np.ndarray | None = None
    # A made image decoded to 1/Z with near/far: those say what its codes stand for, not where the map's ends are.
    decoded: bool = False


def _samples(depth: DepthMap, settings: NormalizeSettings, keep: bool = False,
             max_samples: int = _MAX_SAMPLES_PER_FRAME) -> _Samples:
    depth = as_settings_say(depth, settings)
    mode = resolve_mode(depth, settings)
    _check_mode_fits(depth, mode, settings)
    valid = valid_mask(depth)
    count = int(np.count_nonzero(valid))
    if count == 0:
        raise DepthInputError(
            f"{depth.name}: no pixel holds usable depth in channel {depth.channel} (all background, NaN or "
            "sentinel); check the channel and the render"
        )
    x = _working_values(depth, mode, valid, settings)
    values = x[valid]
    if values.size > max_samples:
        values = values[:: values.size // max_samples + 1].copy()
    background = (valid.size - count) >= valid.size * _BACKGROUND_MIN_FRACTION
    bright = None
    if mode == "passthrough":  # flip when near is black: as stated, as known or as the layout says
        near_white = made_polarity(depth, settings)
        bright = None if near_white is None else not near_white
    decoded = mode == "disparity" and depth.kind == "image"
    if keep:
        return _Samples(mode, values, background, bright, x, valid, decoded)
    return _Samples(mode, values, background, bright, decoded=decoded)


def _check_mode_fits(depth: DepthMap, mode: str, settings: NormalizeSettings) -> None:
    if mode in ("disparity", "linear") and depth.kind == "inverse":
        raise DepthInputError(
            f"{depth.channel} holds inverse depth (1/Z); use mode inverse or passthrough, not {mode}"
        )
    if mode == "disparity" and depth.kind == "image" and (settings.near is None or settings.far is None):
        raise DepthInputError(
            f"{depth.name} is a made depth image, not distances: mode disparity needs near and far "
            "(the distances black and white stand for); or use mode passthrough or linear"
        )
    if mode == "inverse" and depth.kind == "image":
        raise DepthInputError(f"{depth.name} is a made depth image, not 1/Z values: use mode passthrough")


def _range_from_samples(samples: list[_Samples], settings: NormalizeSettings) -> DepthRange:
    mode = samples[0].mode
    values = samples[0].values if len(samples) == 1 else np.concatenate([s.values for s in samples])
    background = any(s.background for s in samples)

    if mode == "passthrough":
        low, high = float(values.min()), float(values.max())
        votes = [s.near_black for s in samples if s.near_black is not None]
        auto_invert = bool(votes) and sum(votes) * 2 > len(votes)
        # With an empty background (alpha, a detected sky), the farthest surface stays above its black.
        gap = PASSTHROUGH_GAP if background else 0.0
        return DepthRange(mode, low, high, gap, _decide_invert(settings, auto_invert))

    # `values` is our own copy: let percentile partition it in place instead of copying it again.
    p_lo, p_hi = np.percentile(values, settings.clip, overwrite_input=True)
    low, high = float(p_lo), float(p_hi)
    if mode == "disparity" and (settings.near is not None or settings.far is not None) and not any(
            s.decoded for s in samples):
        # Explicit distances replace the percentile ends (near -> white, far -> far end). Not for a made image
        # decoded with them: its 1/Z is stretched between its own percentiles, as Depth Anything's maps are
        # (docs/depth.md "Made images with near and far").
        if settings.near is not None:
            high = 1.0 / settings.near
        if settings.far is not None:
            low = 1.0 / settings.far
    elif mode == "linear":
        if settings.near is not None:
            low = settings.near
        if settings.far is not None:
            high = settings.far
    gap = 0.0
    # With a background, the far end stays above it: low/high is far/near in 1/Z and near/far in Z alike.
    if mode in ("disparity", "inverse", "linear") and background and high > 0:
        gap = min(max(low, 0.0) / high, settings.gap_max)
    return DepthRange(mode, low, high, gap, _decide_invert(settings, False))


def _decide_invert(settings: NormalizeSettings, auto_value: bool) -> bool:
    return {"on": True, "off": False}.get(settings.invert, auto_value)


def normalize(
    depth: DepthMap,
    settings: NormalizeSettings = NormalizeSettings(),
    fixed_range: DepthRange | None = None,
) -> ControlMap:
    """Map a depth channel to the control map. `fixed_range` (from `compute_sequence_range`) overrides the ends."""
    depth = as_settings_say(depth, settings)
    # A note that suggests choosing a mode is moot once the artist has chosen one.
    warnings = [n for n in depth.notes if settings.mode == "auto" or "choose mode" not in n]
    if fixed_range is not None:
        mode = fixed_range.mode
        _check_mode_fits(depth, mode, settings)
        rng = fixed_range
        if settings.invert != "auto":
            rng = replace(rng, inverted=settings.invert == "on")
        valid = valid_mask(depth)
        if not valid.any():
            raise DepthInputError(f"{depth.name}: no pixel holds usable depth in channel {depth.channel}")
        x = _working_values(depth, mode, valid, settings)
    else:
        samples = _samples(depth, settings, keep=True)
        rng = _range_from_samples([samples], settings)
        mode, x, valid = rng.mode, samples.working, samples.valid
        if mode == "passthrough" and settings.invert == "auto" and samples.near_black is None:
            warnings.append(
                f"the file's polarity could not be read from the frame ({depth.layout_reason}): kept as it is "
                "(near = white); if near is dark in the preview, set polarity near-black (--polarity near-black)"
            )

    if mode == "disparity" and depth.kind == "image":
        note = made_image_polarity_note(depth, settings, valid)
        if note:
            warnings.append(note)
    # Everything below works in place on x, our own copy: no full-frame temporaries beyond it.
    span = rng.high - rng.low
    constant = not span > 1e-6 * max(abs(rng.high), abs(rng.low), 1e-30)
    if constant:
        warnings.append("the depth is constant over the frame: no shape for the model to follow")
        x.fill(1.0 if not valid.all() else 0.5)
    else:
        if mode == "linear":
            np.subtract(np.float32(rng.high), x, out=x)
        else:
            x -= np.float32(rng.low)
        x /= np.float32(span)
        np.clip(x, 0.0, 1.0, out=x)
        if rng.inverted:
            np.subtract(np.float32(1.0), x, out=x)
        if rng.gap > 0:
            x *= np.float32(1.0 - rng.gap)
            x += np.float32(rng.gap)
    x[~valid] = 0.0
    return ControlMap(x, valid, rng, tuple(warnings))


_EDGE_JUMP = 0.05  # a step of 5 % between the two sides of a pixel is a depth edge, not a slope
_EDGE_FLAT = 0.25  # ... when each side is flat (its own step under a quarter of the jump)
_EDGE_STRIPE = 1024  # rows per pass: bounds the temporaries on 8K frames


def treat_edges(x: np.ndarray, valid: np.ndarray, larger_is_nearer: bool, how: str) -> int:
    """Move anti-aliased in-between pixels at depth edges onto a surface, in place. Returns how many moved.

    Run on the control image (values >= 0, near = larger unless inverted), after resizing: it also settles the
    in-between pixels that area resampling makes at every edge. A pixel is such a "ghost" when, along a row or a
    column, its two neighbours differ by a jump, the surfaces on both sides are flat next to it, and its value lies
    inside the jump. A smooth slope (a ground plane near the horizon) has no flat sides and is never touched
    (docs/depth.md, "Edges"). Works on stripes of rows, so the temporaries stay small and every access is along
    memory.
    """
    if how == "off":
        return 0
    height, width = x.shape
    moved = np.zeros(x.shape, dtype=bool)
    for r0 in range(0, height, _EDGE_STRIPE):
        r1 = min(height, r0 + _EDGE_STRIPE)
        lo, hi = max(0, r0 - 2), min(height, r1 + 2)
        block, vblock, mblock = x[lo:hi], valid[lo:hi], moved[lo:hi]
        for axis in (1, 0):
            rows, cols = _edge_candidates(block, axis)
            centre = rows if axis == 0 else cols
            size = hi - lo if axis == 0 else width
            keep = (centre >= 2) & (centre <= size - 3) & (rows + lo >= r0) & (rows + lo < r1)
            if axis == 0:
                keep &= (rows + lo >= 2) & (rows + lo <= height - 3)
            rows, cols = rows[keep], cols[keep]
            if rows.size:
                _snap_ghosts(block, vblock, mblock, rows, cols, axis, larger_is_nearer, how)
    return int(np.count_nonzero(moved))


def _edge_candidates(block: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of pixels whose two neighbours along `axis` differ by more than the edge jump."""
    if axis == 1:
        before, after = block[:, :-2], block[:, 2:]
    else:
        before, after = block[:-2], block[2:]
    # Values are >= 0: the neighbours differ by more than the jump exactly when the smaller is under (1 - jump)
    # times the larger.
    with np.errstate(invalid="ignore"):
        larger = np.maximum(after, before)
        larger *= np.float32(1.0 - _EDGE_JUMP)
        rows, cols = np.nonzero(np.minimum(after, before) < larger)
    if axis == 1:
        return rows, cols + 1
    return rows + 1, cols


def _snap_ghosts(block, vblock, mblock, rows, cols, axis, larger_is_nearer, how) -> None:
    dr, dc = (1, 0) if axis == 0 else (0, 1)
    taps = [(rows + k * dr, cols + k * dc) for k in (-2, -1, 0, 1, 2)]
    a, b, c, d, e = (block[r, q] for r, q in taps)
    ok = np.logical_and.reduce([vblock[r, q] for r, q in taps])
    jump = np.abs(d - b)
    lo, hi = np.minimum(b, d), np.maximum(b, d)
    ghost = (ok & (np.maximum(np.abs(b - a), np.abs(e - d)) < _EDGE_FLAT * jump)
             & (c > lo + 0.05 * jump) & (c < hi - 0.05 * jump))
    if not ghost.any():
        return
    near, far = (hi, lo) if larger_is_nearer else (lo, hi)
    target = {"near": near, "far": far}.get(how)
    if target is None:  # snap: the surface the pixel is closest to
        target = np.where(np.abs(c - b) <= np.abs(c - d), b, d)
    block[rows[ghost], cols[ghost]] = target[ghost]
    mblock[rows[ghost], cols[ghost]] = True
