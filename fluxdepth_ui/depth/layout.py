"""How a made depth image is laid out: which end is near, and which flat region is the empty background (issue 25).

A made image (an 8/16-bit PNG from COPs, a grey EXR) carries no units, so both questions are answered from how
renders look, with more than one cue (docs/depth.md, "Made images"):

- candidate backgrounds: flat regions at either end of the values that touch the frame border (connected, at least
  2 % of the frame). A Z remap leaves the empty sky at 0 (Pz is 0 where nothing is hit) or, inverted, at white; a
  clamped far end is white; any of these can be the sky.
- the ground: in most shots, down each column, the bottom of the frame is nearer than the band above it;
- the sky: a background region that touches the top border and not the bottom one borders the farthest surfaces
  (the horizon), so the values just below it tell which end is far. Transparent pixels (alpha) count as such a
  region;
- the backdrop: a flat region around the subject (most of the frame's border, a product shot) is the far end.

The cues vote; when they disagree, or none can be read, the polarity is unknown and the caller
warns with the flag that fixes it. A candidate region at the near end is background only when it is sky-like and
borders the far end (an inverted remap's white sky); a flat near surface (a pillar, a clipped floor) touches the
bottom or borders nearer surfaces and stays a surface.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

_STEPS = 1023  # values within (max - min) / _STEPS of an end are "at" that end (8- and 16-bit exact codes)
_MIN_REGION = 0.02  # share of the frame a background candidate covers at least
_SKY_FAR = 0.7  # the sky's neighbours lie in the farthest 30 % of the other values ...
_SKY_NEAR_END = 0.8  # ... the farthest 20 % when the region sits at the near end (an inverted remap's white sky)


@dataclass(frozen=True)
class Layout:
    near_white: bool | None  # None: the cues disagree or none could be read
    background: np.ndarray | None  # bool (H, W): flat regions read as empty background; None: none
    reason: str  # what decided, for the notes


# The cues are read on a strided grid of about this many pixels: enough for a frame's layout, and the border flood
# below stays a few milliseconds on an 8K frame.
_GRID_PIXELS = 40_000


def connected_to_border(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` 4-connected to the frame's border: a flood fill from the border, on the small grid.
    (scipy.ndimage.label would do it, but importing scipy.ndimage takes 0.6-0.9 s on the 2-core dev machine, more
    than the whole-process preview budget of docs/depth.md.)"""
    region = np.zeros_like(mask)
    region[0], region[-1], region[:, 0], region[:, -1] = mask[0], mask[-1], mask[:, 0], mask[:, -1]
    count = int(np.count_nonzero(region))
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        now = int(np.count_nonzero(grown))
        if now == count:
            return grown
        region, count = grown, now


def _grow(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def read_layout(values: np.ndarray, valid: np.ndarray) -> Layout:
    stride = max(1, int(np.sqrt(values.size / _GRID_PIXELS)))
    cv, cm = values[::stride, ::stride], valid[::stride, ::stride]
    if not cm.any():
        return Layout(None, None, "no valid pixels")
    vv = cv[cm]
    lo, hi = float(vv.min()), float(vv.max())
    if not hi > lo:
        return Layout(None, None, "constant")
    tol = (hi - lo) / _STEPS
    regions: dict[str, np.ndarray] = {}
    for end, value in (("low", lo), ("high", hi)):
        with np.errstate(invalid="ignore"):
            flat = cm & (np.abs(cv - value) <= tol)
        region = connected_to_border(flat)
        if region.mean() >= _MIN_REGION:
            regions[end] = region
    def sky_like(region: np.ndarray) -> bool:
        return bool(region[0].any()) and not region[-1].any()

    def farness_of(region: np.ndarray) -> float | None:
        """Where the surface just below the region sits among all other values: 1.0 = at the high end. Below, not
        around: below a sky (or a far wall) is the horizon, while beside it may be whatever stands in front."""
        others = cm & ~region
        below = np.zeros_like(region)
        below[2:] = region[:-2]
        below[3:] |= region[:-3]
        ring = below & others
        if np.count_nonzero(ring) < 16 or np.count_nonzero(others) < 64:
            return None
        ranked = np.sort(cv[others])
        return float(np.searchsorted(ranked, np.median(cv[ring])) / ranked.size)

    def surrounds(region: np.ndarray) -> bool:
        """A backdrop all around the subject (a product shot): most of the frame's border."""
        edge = np.concatenate([region[0], region[-1], region[1:-1, 0], region[1:-1, -1]])
        return bool(edge.mean() >= 0.5) and not sky_like(region)

    # The backdrop: a flat region around the subject is the far end (the studio wall, empty space).
    backdrop = [(end, r) for end, r in regions.items() if surrounds(r)]
    surround = 0
    if len(backdrop) == 1:
        surround = 1 if backdrop[0][0] == "high" else -1  # a bright backdrop: larger values are farther

    # What is surface for the ground cue: everything valid but the sky-like candidates and the backdrop.
    rest = cm & ~np.logical_or.reduce([r for r in regions.values() if sky_like(r) or surrounds(r)]
                                      or [np.zeros_like(cm)])
    if np.count_nonzero(rest) < 64:
        return Layout(None, None, "too few pixels outside the flat regions")

    # The ground: along each column, the bottom sixth of the frame is nearer than the sixth above it (a floor or a
    # terrain runs away from the camera up the frame). Per column, so a flat surface standing in front (a pillar:
    # no change down its column) or the empty sky above takes no part.
    ground = 0
    h = cv.shape[0]
    if h >= 12:
        bands = [slice(h * 5 // 6, h), slice(h * 4 // 6, h * 5 // 6)]
        medians = []
        for band in bands:
            block = np.where(rest[band], cv[band], np.nan)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # columns with no surface in the band
                medians.append(np.nanmedian(block, axis=0))
        change = medians[1] - medians[0]  # the band above minus the bottom band, per column
        change = change[np.isfinite(change) & (np.abs(change) > 0.01 * (hi - lo))]
        if change.size >= max(8, 0.1 * cv.shape[1]):
            up = np.count_nonzero(change > 0) / change.size
            if up >= 0.65 or up <= 0.35:
                ground = 1 if up >= 0.65 else -1  # +1: larger values are farther (near = black)

    # The sky: background regions (and transparent or empty pixels) above the scene border the far end.
    skies = [r for r in regions.values() if sky_like(r)]
    empty = ~cm
    if empty.mean() >= _MIN_REGION and sky_like(empty):
        skies.append(empty)
    sky_votes = []
    for region in skies:
        q = farness_of(region)
        if q is not None and (q >= _SKY_FAR or q <= 1 - _SKY_FAR):
            sky_votes.append(1 if q >= _SKY_FAR else -1)
    sky = int(np.sign(sum(sky_votes)))

    cues = {"the ground": ground, "the sky": sky, "the backdrop": surround}
    said = {name: v for name, v in cues.items() if v}
    if len(set(said.values())) > 1:
        return Layout(None, None, " and ".join(said) + " disagree")
    if not said:
        return Layout(None, None, "no ground, sky or backdrop to read")
    vote = next(iter(said.values()))
    near_white = vote < 0
    cues = " and ".join(said)

    near_end = "high" if near_white else "low"
    chosen = []
    for end, region in regions.items():
        if not sky_like(region):
            continue
        q = farness_of(region)
        if q is None:
            continue
        farness = q if not near_white else 1 - q  # 1.0: its neighbours are the farthest surfaces
        # Only at the near end: there a sky must be taken out (else it would come out white). At the far end a sky
        # and a far wall look alike, and both end at the far end anyway.
        if end == near_end and farness >= _SKY_NEAR_END:
            chosen.append((end, region))
    background = None
    if chosen:
        full = np.zeros(values.shape, dtype=bool)
        for end, region in chosen:
            value = hi if end == "high" else lo
            # Each grid cell stands for the stride x stride pixels after it; one cell more all round, so the pixels
            # at the region's edge that the grid skipped are taken too (only those at the region's exact value).
            region = _grow(region)
            cells = np.repeat(np.repeat(region, stride, axis=0), stride, axis=1)[: values.shape[0], : values.shape[1]]
            with np.errstate(invalid="ignore"):
                full |= cells & valid & (np.abs(values - value) <= tol)
        background = full if full.any() else None
    return Layout(near_white, background, cues)


def as_made_image(depth, note: str):
    """A map read as distances, taken as a made image instead (the artist said so: --polarity, or near and far
    that cannot be distances in the file's units)."""
    valid = np.isfinite(depth.values) if depth.alpha is None else np.isfinite(depth.values) & depth.alpha
    layout = read_layout(depth.values, valid)
    notes = [n for n in depth.notes if "read as raw distances" not in n]
    return replace(depth, kind="image", made_near_white=layout.near_white, background=layout.background,
                   layout_reason=layout.reason, notes=(*notes, note))
