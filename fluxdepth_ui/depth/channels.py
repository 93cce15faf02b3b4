"""Choosing the depth channel of a raster and saying what its numbers mean.

Three kinds of content (docs/depth.md, "What the numbers mean"):
- `metric`: distance in scene units, near = small (Houdini `Pz`, Karma `depth`, `Z`, sensor millimetres);
- `inverse`: already 1/Z (Nuke `depth.Z`, Maya `-1/z`, Kinect raw disparity after conversion);
- `image`: an already-made depth picture (grey PNG, EXR with R=G=B or `Y`), usually near = white.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    # Made images (kind "image"): what their layout says (depth/layout.py): the polarity (None: unknown) and the
    # flat regions that are empty background.
    made_near_white: bool | None = None
    background: np.ndarray | None = None
    layout_reason: str = ""

    @property
    def width(self) -> int:
        return self.values.shape[1]

    @property
    def height(self) -> int:
        return self.values.shape[0]


def depth_name_tier(name: str) -> int | None:
    """1 for plain depth names (`Pz`, `depth`, `Z`), 2 for qualified ones (`depth.Z`, `Depth.V`, `left.Z`), 3 for
    camera-space `P.z`, else None (docs/depth.md, "Which channel")."""
    tokens = name.lower().split(".")
    if len(tokens) == 1:
        return 1 if tokens[0] in _DEPTH_TOKENS else None
    if tokens[-2:] == ["p", "z"]:
        return 3  # camera-space position (Karma, Mantra `P`): its z is depth, after any real depth AOV
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
        chosen, kind, extra = _auto_channel(raster)
        notes += extra
    mist = "mist" in chosen.label.lower().split(".")
    if mist and kind == "metric":
        # Blender's Mist pass: distance remapped by the mist start, depth and falloff into 0 (near) .. 1 (far and
        # sky). Not distances (0 is its near end, not "no data"): a made image whose near end is black.
        kind = "image"
        notes.append(f"{chosen.label} is Blender's Mist pass (a remapped distance, near = black): read as a made "
                     "depth image; render the Z pass (Depth) for true inverse depth")
    if kind == "metric" and _written_by_nuke(raster) and "depth" in chosen.label.lower():
        kind = "inverse"
        notes.append(f"{chosen.label} was written by Nuke, which stores 1/Z: read as inverse depth")

    values = _place(chosen, raster.width, raster.height)
    coverage = _coverage_for(raster, chosen)
    if abs(raster.pixel_aspect - 1.0) > 1e-3:
        values, coverage, note = _to_square_pixels(values, coverage, raster.pixel_aspect, name)
        notes.append(note)
    alpha = None if coverage is None else coverage > 0
    sample_type = chosen.sample_type
    integer = chosen.data.dtype.kind in "ui"

    if integer and chosen.data.dtype.itemsize >= 2 and _is_kinect_raw(values):
        values = (1092.5 - values) / 351.3
        values[~(values > 0)] = np.nan
        kind = "inverse"
        notes.append("Kinect v1 raw disparity (11-bit, 2047 = no data): converted to 1/metres")
    elif kind == "image" and integer and chosen.data.dtype.itemsize >= 2:
        kind, extra = _classify_integer_grey(values)
        notes += extra
    elif kind == "image" and chosen.data.dtype.kind == "f" and chosen.name == "Y" and raster.format == "exr" and \
            not {"RY", "BY", "R", "G", "B"} & {c.name for c in raster.channels} and _beyond_unit(values):
        # A lone Y holding values beyond a made image's 0..1 is a distance pass written to the luminance channel.
        kind = "metric"
        finite = values[np.isfinite(values)]
        notes.append(f"the lone Y channel holds {finite.min():.4g}..{finite.max():.4g}, beyond a made image's 0..1: "
                     "read as distances (near = small); if it is a made depth image, choose mode passthrough "
                     "(--mode passthrough)")
    elif kind == "image" and chosen.data.dtype.kind == "f" and (
            (chosen.name == "Y" and raster.format != "exr")
            or (channel and chosen.name.split(".")[-1].upper() not in ("R", "G", "B", "A", "Y"))):
        # Single-channel float rasters (PFM, float TIFF, NPY), and a float channel that is not a colour the artist
        # picked by hand (the Channel menu's rescue: "dist", "range"), hold depth unless they are a [0, 1] made map.
        # A colour channel picked by hand stays a made image (a grey map saved as RGB).
        finite = values[np.isfinite(values)]
        if finite.size and not (finite.min() == 0.0 and finite.max() == 1.0):
            kind = "metric"
            if channel:
                notes.append(f"{chosen.label} holds floats {finite.min():.4g}..{finite.max():.4g}: read as distances "
                             "(near = small); choose mode passthrough if it is a made depth image")
    elif kind == "image" and channel and chosen.data.dtype.kind == "f" and _beyond_unit(values):
        # A colour channel picked by hand that holds values beyond 0..1: an engine's render-target export keeps
        # scene depth in R (its sky at the half-float maximum). Read as distances, not stretched as a picture.
        kind = "metric"
        finite = values[np.isfinite(values)]
        notes.append(f"{chosen.label} holds floats {finite.min():.4g}..{finite.max():.4g}, beyond a made image's 0..1: "
                     "read as distances (near = small); if it is a made depth image, choose mode passthrough "
                     "(--mode passthrough)")
    if kind == "metric":
        values, extra = _fix_sign(values)
        notes += extra
    if kind == "inverse" and values.size and np.nanmin(values) < 0:
        values = np.abs(values)
    if kind in ("metric", "inverse") and coverage is not None:
        values, extra = _settle_partial_coverage(values, coverage)
        notes += extra
    looks_inverse = kind == "metric" and not integer and _metric_polarity_warning(values, chosen.label)
    if kind == "metric" and coverage is None and not looks_inverse:
        values, extra = _settle_background_edges(values)
        notes += extra
    if looks_inverse:
        notes += looks_inverse
    layout = None
    if kind == "image":
        from .layout import read_layout

        valid = np.isfinite(values) if alpha is None else np.isfinite(values) & alpha
        layout = read_layout(values, valid)
        if mist:  # its polarity is known; the layout still finds the sky (1.0)
            layout = replace(layout, near_white=False, reason="Blender Mist pass")
    return DepthMap(
        values=values.astype(np.float32, copy=False),
        kind=kind,
        channel=chosen.label,
        channels=raster.names(),
        source_format=raster.format,
        sample_type=sample_type,
        name=name,
        alpha=alpha,
        notes=tuple(notes),
        made_near_white=None if layout is None else layout.near_white,
        background=None if layout is None else layout.background,
        layout_reason="" if layout is None else layout.reason,
    )


def _named_channel(raster: Raster, wanted: str) -> Channel:
    """`wanted` may be a channel (`Z`), a part's channel (`depth_right.Z`) or a view's channel (`right.Z`)."""
    def matches(chan: Channel, fold) -> bool:
        view_name = f"{chan.view}.{chan.name}" if chan.view else None
        return any(fold(n) == fold(wanted) for n in (chan.label, chan.name, view_name) if n)

    for fold in (str, str.lower):
        hits = [c for c in raster.channels if matches(c, fold)]
        if hits:
            return sorted(hits, key=lambda c: (c.label != wanted, c.part))[0]
    raise DepthInputError(
        f"{display_name(raster.path)} has no channel {wanted!r}; its channels are: {', '.join(raster.names())}"
    )


def _is_depth_like(name: str) -> bool:
    return depth_name_tier(name) is not None or name.lower().split(".")[-1] in ("z", "pz", "depth")


def _auto_channel(raster: Raster) -> tuple[Channel, str, list[str]]:
    """The depth channel by name (docs/depth.md, "Which channel"); grey colour only when the file has nothing else."""
    # The hero view: multiView's first; without that attribute, the view of the first part that names one.
    part_views = [c.view.lower() for c in sorted(raster.channels, key=lambda c: c.part) if c.view]
    hero = raster.views[0].lower() if raster.views else (part_views[0] if part_views else "")
    other_views = {v.lower() for v in raster.views[1:]} | {v for v in part_views if v != hero}

    def view_penalty(chan: Channel) -> int:
        if chan.view and hero:
            return int(chan.view.lower() != hero)
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
        return ranked[0][4], "metric", []

    base = display_name(raster.path)
    names = {c.name: c for c in raster.channels}
    colour = {"R", "G", "B", "A", "Y", "RY", "BY"}
    others = [c.label for c in raster.channels if c.name.rpartition(".")[2] not in colour]
    if raster.format == "exr" and others:
        raise DepthInputError(
            f"{base} has no depth channel (Pz, depth, Z, P.z, ...); its channels are: {', '.join(raster.names())}; "
            "choose the depth channel (--channel NAME, or the Channel menu in the app)"
        )
    if "Y" in names:
        notes = []
        if {"RY", "BY"} & set(names):
            notes.append("read through Y (luminance) of a colour EXR: this looks like a colour image, not a depth "
                         "map; choose the depth channel if the file has one")
        return names["Y"], "image", notes
    grey = _grey_rgb(raster)
    if grey is not None:
        notes = []
        if raster.format == "exr":
            notes.append(f"no depth channel: the grey colour channel {grey.label} is read as a made depth image "
                         "(near = white); if it is a render (a clay pass), not depth, this map is wrong")
        return grey, "image", notes
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


def _coverage_for(raster: Raster, chan: Channel) -> np.ndarray | None:
    """The alpha (coverage, float) that goes with `chan`, or None when there is none or it covers every pixel."""
    prefix = chan.name.rpartition(".")[0]
    candidates = [f"{prefix}.A" if prefix else "A", "A"]
    for wanted in candidates:
        for other in raster.channels:
            if other.part == chan.part and other.name == wanted and other is not chan:
                alpha = _place(other, raster.width, raster.height)
                if other.data.dtype.kind in "ui":
                    alpha = alpha / float(np.iinfo(other.data.dtype).max)
                alpha = np.nan_to_num(alpha, nan=0.0)
                return None if (alpha >= 1.0).all() else alpha
    return None


def _settle_partial_coverage(values: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Un-premultiply coverage-weighted depth at partly covered edge pixels (docs/depth.md, "Edges").

    A renderer that averages Z with alpha (premultiplied AOVs) writes Z * a where an object covers part of a pixel
    over empty sky: nearer than the object, a glowing rim. Such a file is recognised by its edge pixels holding about
    a times the depth of their fully covered neighbour; then Z / a is the object's depth. A file that keeps full Z
    at its edges (most renderers) is left as it is.
    """
    partial = (coverage > 0) & (coverage < 1) & np.isfinite(values) & (values != 0)
    ys, xs = np.nonzero(partial)
    if ys.size == 0:
        return values, []
    h, w = values.shape
    full = (coverage >= 1) & np.isfinite(values) & (values != 0)
    ratio, alpha = [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
        ok = full[yy, xx]
        ratio.append(values[ys[ok], xs[ok]] / values[yy[ok], xx[ok]])
        alpha.append(coverage[ys[ok], xs[ok]])
    ratio, alpha = np.concatenate(ratio), np.concatenate(alpha)
    if ratio.size < 8:
        return values, []
    # Z * a (or a / Z for inverse depth) over the neighbour's value is about a; full Z (or 1/Z) gives about 1.
    if not np.median(np.abs(ratio - alpha)) < np.median(np.abs(ratio - 1.0)):
        return values, []
    out = np.array(values, dtype=np.float32)
    out[ys, xs] = values[ys, xs] / coverage[ys, xs]
    return out, [f"depth is premultiplied by alpha (coverage-weighted): {ys.size} edge pixels un-premultiplied, so "
                 "object rims keep their object's depth"]


_MAX_PIXEL_ASPECT = 4.0


def _to_square_pixels(values, coverage, aspect: float, name: str):
    """An anamorphic plate (pixelAspectRatio != 1) stretched to square pixels, so the control map and the image
    keep the picture's display aspect. Nearest neighbour: depth is never blended across an edge."""
    from .readers import check_pixels

    if not (1 / _MAX_PIXEL_ASPECT <= aspect <= _MAX_PIXEL_ASPECT):
        raise DepthInputError(f"{name} declares a pixel aspect ratio of {aspect:g}; only 1/4 to 4 is supported, "
                              "export the depth pass with square pixels")
    h, w = values.shape
    if aspect > 1:
        new_w, new_h = int(round(w * aspect)), h
    else:
        new_w, new_h = w, int(round(h / aspect))
    check_pixels(new_w, new_h, f"{name} (at square pixels)")
    cols = np.minimum((np.arange(new_w) * w / new_w).astype(np.int64), w - 1)
    rows = np.minimum((np.arange(new_h) * h / new_h).astype(np.int64), h - 1)
    stretch = (lambda a: a[np.ix_(rows, cols)]) if aspect < 1 else (lambda a: a[:, cols])
    values = stretch(values)
    coverage = None if coverage is None else stretch(coverage)
    return values, coverage, (f"pixel aspect ratio {aspect:g} (anamorphic): stretched from {w}x{h} to "
                              f"{new_w}x{new_h} square pixels, the picture's display aspect")


def _settle_background_edges(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Without alpha: edge pixels that a pixel filter averaged with an empty (0) background (Mantra / Karma Pz with
    the default filter) come out nearer than the surface they belong to, a bright rim around every object. A pixel
    that touches the background and is nearer than every pixel around it that does not is such a blend: it takes
    its surface's depth when it was mostly covered, else it is background (docs/depth.md, "Edges")."""
    with np.errstate(invalid="ignore"):
        surface = np.isfinite(values) & (values > 0) & (values < 1e9)
    empty = ~surface
    if not empty.any() or empty.all():
        return values, []
    h, w = values.shape
    rims = np.zeros_like(surface)
    rims[1:] |= empty[:-1]
    rims[:-1] |= empty[1:]
    rims[:, 1:] |= empty[:, :-1]
    rims[:, :-1] |= empty[:, 1:]
    rims &= surface
    ys, xs = np.nonzero(rims)
    if ys.size == 0:
        return values, []
    inner = surface & ~rims
    nearest = np.full(ys.size, np.inf, dtype=np.float32)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            yy, xx = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
            ok = inner[yy, xx]
            nearest[ok] = np.minimum(nearest[ok], values[yy[ok], xx[ok]])
    here = values[ys, xs]
    blended = np.isfinite(nearest) & (here < 0.97 * nearest)
    if np.count_nonzero(blended) < max(8, 0.05 * ys.size):
        return values, []  # the edges keep their surface's depth: nothing to settle
    out = np.array(values, dtype=np.float32)
    covered = here[blended] >= 0.5 * nearest[blended]
    by, bx = ys[blended], xs[blended]
    out[by[covered], bx[covered]] = nearest[blended][covered]
    out[by[~covered], bx[~covered]] = np.nan
    return out, [f"{int(blended.sum())} edge pixels were blended with the empty background (a pixel filter without "
                 "alpha): set to their surface's depth or to background, so no object gets a bright rim"]


def _beyond_unit(values: np.ndarray) -> bool:
    sample = coarse(values)
    finite = sample[np.isfinite(sample)]
    return bool(finite.size) and (float(finite.max()) > 1.0 + 1e-6 or float(finite.min()) < -1e-6)


def _written_by_nuke(raster: Raster) -> bool:
    if any(key.lower().startswith("nuke") for key in raster.metadata):
        return True
    software = str(raster.metadata.get("software", raster.metadata.get("writer", "")))
    return "nuke" in software.lower()


def coarse(a: np.ndarray, pixels: int = 250_000) -> np.ndarray:
    """A strided view of about `pixels` pixels: enough to see a frame's layout or its sign, cheap on 8K frames."""
    stride = max(1, int(np.sqrt(a.size / pixels)))
    return a[::stride, ::stride] if stride > 1 else a


def polarity_vote(values: np.ndarray, valid: np.ndarray) -> int:
    """Image-space evidence of which way the numbers run: +1 = larger values are farther (distances), -1 = larger
    values are nearer (a made image, 1/Z), 0 = no evidence (docs/depth.md, "Polarity checks").

    Two votes, both from how shots are framed: the bottom rows of a shot standing on ground are nearer than the top
    rows; and the valid pixels that touch the empty background at the frame border (sky) are the far ones.
    """
    values, valid = coarse(values), coarse(valid)
    h = values.shape[0]
    band = max(1, h // 6)
    votes = 0
    top, bottom = values[:band][valid[:band]], values[-band:][valid[-band:]]
    if top.size > band and bottom.size > band:
        t, b = float(np.median(top)), float(np.median(bottom))
        if abs(t - b) > 0.02 * max(abs(t), abs(b), 1e-30):
            votes += 1 if t > b else -1
    background = ~valid
    border = np.zeros_like(valid)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    if background.mean() >= 0.03 and (background & border).sum() > 0.1 * border.sum():
        # The surface two and three rows below the background (the horizon under a sky): not the pixels right at
        # its edge, which a pixel filter blends with the empty background, and not what stands beside it.
        below = np.zeros_like(background)
        below[2:] = background[:-2]
        below[3:] |= background[:-3]
        edge = valid & below & ~background
        near_sky = values[edge]
        if near_sky.size > 16:
            everything = values[valid]
            m_edge, m_all = float(np.median(near_sky)), float(np.median(everything))
            if abs(m_edge - m_all) > 0.02 * max(abs(m_edge), abs(m_all), 1e-30):
                votes += 1 if m_edge > m_all else -1
    return int(np.sign(votes))


def _classify_integer_grey(values: np.ndarray) -> tuple[str, list[str]]:
    """A 16-bit grey raster is a made depth image (near = white) or raw distances (mm, sensor counts, near = small).

    Not from the maximum alone (a far wall at 32.7 m writes 32700): the polarity checks decide, and an undecided file
    says so (docs/depth.md, "16-bit files").
    """
    finite = values[np.isfinite(values)]
    nonzero = finite[finite > 0]
    if nonzero.size == 0:
        return "image", []
    top = float(nonzero.max())
    sentinel = np.count_nonzero(nonzero == 65535)
    below = nonzero[nonzero < 65535]
    # A sensor's "no reading" sits far above its readings (metres in mm stay well below 49 m); a Z remap whose empty
    # sky is white reaches close to full scale with its farthest object.
    if top == 65535 and sentinel >= 0.005 * nonzero.size and below.size and below.max() < 0.75 * 65535:
        return "metric", [f"{sentinel} pixels hold 65535 with a gap below it: read as raw distances with 65535 = no "
                          "reading (background); choose mode passthrough if this is a made depth image"]
    if top <= 255:
        return "image", ["16-bit file holding only 8-bit values: expect banding"]
    finite = np.isfinite(values) & (values < 65535)
    vote = polarity_vote(values, finite & (values > 0))  # read as distances: 0 is no data
    if vote <= 0:
        # Read as a made image, 0 is the far end, not a hole: a near-white export whose far wall is black.
        vote = min(vote, polarity_vote(values, finite))
    full_scale = any(abs(top - code) <= code * 0.005 for code in _FULL_SCALE_CODES)
    # A remap of Z (near = black) whose empty sky is white: a flat region at full scale and no 0 holes. Read as
    # distances it would put the near end at infinite disparity; as a made image it is flipped by its white sky.
    flat_top = np.count_nonzero(nonzero >= top) >= 0.005 * nonzero.size
    if full_scale and flat_top and np.count_nonzero(values == 0) < 0.005 * values.size:
        return "image", ["a flat region at full scale and no 0 pixels: read as a made depth image whose empty "
                         "background is white (flipped so near is white); choose mode disparity with near and far "
                         "to convert it to true inverse depth"]
    as_distances = (f"16-bit values {int(nonzero.min())}..{int(top)} read as raw distances (near = small, 0 = no "
                    "data)")
    if vote > 0:
        return "metric", [as_distances + "; the frame's layout agrees; choose mode passthrough if this is a made "
                                         "depth image"]
    if vote < 0 or full_scale:
        notes = []
        if full_scale and top <= 32768:
            notes.append("15-bit source (max 32768, e.g. Photoshop): re-stretched to the full range")
        if vote == 0:
            notes.append("unsure whether this 16-bit file is a made depth image or raw distances: read as a made "
                         "image (near = white) because it reaches full scale; the polarity checks found no ground "
                         "or sky to decide. If near is dark in the preview, choose mode disparity (raw distances)")
        return "image", notes
    return "metric", [as_distances + " because they never reach full scale; choose mode passthrough if this is a "
                                     "made depth image"]


def speck_floor(values: np.ndarray) -> float:
    """Distances below this are not depth: a lossy codec's specks in an empty (0) sky, B44 rounding about 1e-5
    where the render wrote 0. A ten-thousandth of the median distance is nearer than any near plane."""
    sample = coarse(values)
    with np.errstate(invalid="ignore"):
        sample = sample[np.isfinite(sample) & (sample > 0) & (sample < 1e9)]
    return float(np.median(sample)) * 1e-4 if sample.size else 0.0


def _metric_polarity_warning(values: np.ndarray, label: str) -> list[str]:
    """Distances run near = small; a channel whose layout says the opposite is probably 1/Z without metadata."""
    values = coarse(values)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(values) & (values > speck_floor(values)) & (values < 1e9)
    if polarity_vote(values, valid) < 0:
        if label.lower().split(".")[-2:] == ["p", "z"]:  # a position's z: not 1/Z, not camera depth either
            return [f"{label} does not run like camera depth (its larger values are the nearer ones): a world-space "
                    "P, or a lat-long or otherwise rotated camera; export a depth AOV (Pz, depth) and read that"]
        return [f"{label} looks like inverse depth (1/Z): its larger values are the nearer ones (ground at the "
                "bottom, sky at the edges); if near is dark in the preview, choose mode inverse (--mode inverse)"]
    return []


def _fix_sign(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Camera-space z (Karma P.z, Maya) is negative in front of the camera: use -z when most values are negative."""
    sample = coarse(values)
    with np.errstate(invalid="ignore"):
        negative, positive = np.count_nonzero(sample < 0), np.count_nonzero(sample > 0)
    if negative > positive:
        return np.negative(values), ["values are mostly negative (camera-space z): using -z"]
    return values, []


def _is_kinect_raw(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if not finite.size or finite.max() != _KINECT_INVALID:
        return False
    return np.count_nonzero(finite == _KINECT_INVALID) >= finite.size * 0.001
