"""Issue 25's classes of depth files as artists export them, generated from scenes with known geometry.

Each case writes one file and says what is true about it: the planar Z through each pixel centre (NaN = empty
background) and which pixels are whole surface (not an anti-aliased edge). `evaluate` reads the file as a user would
(defaults, or the flags a case names) and sorts the outcome:

- right: Spearman(control, 1/Z) >= 0.99 on whole-surface pixels, the background black, no valid pixel brighter than
  the surface it borders (edges settled);
- warned: not right, and the preview says something is uncertain (a warning);
- silently wrong: not right and no warning. The corpus test holds this at 0.

Used by tests/test_depth_corpus.py; `python tests/depth_corpus.py` prints the table.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenes import Scene, render, spearman  # noqa: E402

SKY = Scene(wall_z=None)  # ground, spheres, sky above the horizon
ROOM = Scene(wall_z=25.0)  # ground, spheres, a back wall: no background
# A pillar at the left border, the nearest surface, flat to the camera (planar Z constant): issue 25 item 3.
PILLAR = Scene(wall_z=25.0, spheres=((0.0, -0.3, 8.0, 1.2), (2.0, 0.2, 14.0, 1.5), (-3.1, 0.0, 3.0, 1.3)))


@dataclass
class Case:
    name: str
    write: Callable[[Path], str]  # writes the file into a folder, returns its path
    truth: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]  # (planar Z, whole surface, empty background)
    flags: dict = field(default_factory=dict)  # NormalizeSettings fields the user gives (a warning's advice)
    channel: str | None = None


_RENDERS: dict = {}


@dataclass(frozen=True)
class Slab:
    """A scene plus a flat surface facing the camera over columns [x0, x1) (a pillar at the border)."""
    scene: Scene
    x0: int
    x1: int
    z: float


SLAB = Slab(ROOM, 0, 40, 2.5)
SLAB_SKY = Slab(SKY, 0, 40, 2.5)


def rendered(scene):
    if scene not in _RENDERS:
        if isinstance(scene, Slab):
            r = render(scene.scene)
            r = type(r)(*(np.array(a) for a in (r.zmin, r.z_avg, r.z_premult, r.alpha, r.z_center)))
            for a in (r.zmin, r.z_avg, r.z_center):
                a[:, scene.x0:scene.x1] = scene.z
            r.z_premult[:, scene.x0:scene.x1] = scene.z
            r.alpha[:, scene.x0:scene.x1] = 1.0
            _RENDERS[scene] = r
        else:
            _RENDERS[scene] = render(scene)
    return _RENDERS[scene]


def truth_of(scene: Scene, flip: bool = False):
    """(planar Z, whole-surface pixels, empty background pixels); `flip`: mirrored (the other stereo eye)."""
    def truth():
        r = rendered(scene)
        z, whole, sky = r.z_center, (r.alpha == 1.0) & np.isfinite(r.z_center), (r.alpha == 0) & ~np.isfinite(r.z_center)
        if flip:
            z, whole, sky = (np.ascontiguousarray(a[:, ::-1]) for a in (z, whole, sky))
        return z, whole, sky
    return truth


def remap(z: np.ndarray, near: float, far: float) -> np.ndarray:
    """COPs Remap of Pz to [0, 1]: near = 0 (black), far = 1; empty pixels (Pz 0) stay 0."""
    v = np.clip((z - near) / (far - near), 0.0, 1.0)
    return np.where(np.isfinite(z) & (z > 0), v, 0.0)


def save_png(path: Path, v: np.ndarray, bits: int) -> str:
    top = 255 if bits == 8 else 65535
    data = np.round(np.clip(v, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    Image.fromarray(data).save(path)
    return str(path)


REMAP_FAR = 40.0


def _write_remap(scene, bits, inverted, sky_value, near=1.0, far=REMAP_FAR):
    """A Z remap exported from COPs: near black (inverted: near white), the empty sky at `sky_value`."""
    def write(folder: Path) -> str:
        r = rendered(scene)
        z = r.z_avg  # the pixel filter's average over the hits
        v = remap(z, near, far)
        if inverted:
            v = 1.0 - v
        v = np.where(np.isfinite(z), v, sky_value)
        tag = f"{bits}-{'inv' if inverted else 'plain'}-{sky_value}-{near}-{far}-{abs(hash(scene))}"
        return save_png(folder / f"remap-{tag}.png", v, bits)
    return write


def _write_exr(scene, name, build, compression=None, header=None):
    def write(folder: Path) -> str:
        from conftest import write_exr

        path = folder / f"{name}.exr"
        channels = build(rendered(scene))
        extra = {} if header is None else dict(header)
        if compression is not None:
            import OpenEXR

            extra["compression"] = getattr(OpenEXR, compression)
        return write_exr(path, channels, header=extra)
    return write


def _filtered_pz(r):
    """Mantra/Karma Pz with the default (averaging) pixel filter and no alpha: edge pixels over the empty sky (0)
    are averaged with it, so they come out nearer than the surface."""
    return {"Pz": np.nan_to_num(r.z_premult, nan=0.0).astype(np.float32)}


def _mist(r):
    """Blender's Mist pass: (distance - start) / depth, clamped to [0, 1]; 1 where nothing is hit. The start is past
    the nearest ground, so the near end is clamped to 0."""
    z = r.z_avg
    return {"ViewLayer.Mist.Z": np.where(np.isfinite(z), np.clip((z - 4.0) / 40.0, 0, 1), 1.0).astype(np.float32)}


def _lone_y(r):
    return {"Y": np.where(np.isfinite(r.zmin), r.zmin, 0.0).astype(np.float32)}


def _half_zero_sky(r):
    return {"Z": np.where(np.isfinite(r.zmin), r.zmin, 0.0).astype(np.float16)}


def _speckled_half(r):
    """Half Z with a 0 sky, after a lossy codec: specks of about 1e-5 in the sky (B44's 4x4 blocks round so)."""
    z = np.where(np.isfinite(r.zmin), r.zmin, 0.0).astype(np.float32)
    rng = np.random.default_rng(3)
    sky = ~np.isfinite(r.zmin)
    specks = sky & (rng.random(z.shape) < 0.01)
    z[specks] = rng.uniform(1e-5, 3e-5, np.count_nonzero(specks))
    return {"Z": z.astype(np.float16)}


def _stereo_without_multiview(r):
    """Two parts, the right eye first, each with a `view` attribute, and no multiView: part 0's view is the hero."""
    left = np.where(np.isfinite(r.zmin), r.zmin, np.inf).astype(np.float32)
    right = np.ascontiguousarray(left[:, ::-1])  # a different picture, so reading the wrong eye shows
    return right, left


def _write_stereo(scene):
    def write(folder: Path) -> str:
        from conftest import write_exr

        right, left = _stereo_without_multiview(rendered(scene))
        return write_exr(folder / "stereo.exr", {}, parts=[({"name": "right", "view": "right"}, {"Z": right}),
                                                          ({"name": "left", "view": "left"}, {"Z": left})])
    return write


def _write_tiff(scene, compression, predictor):
    def write(folder: Path) -> str:
        import tifffile

        z = np.where(np.isfinite(rendered(scene).zmin), rendered(scene).zmin, 0.0).astype(np.float32)
        path = folder / f"z-{compression}-{predictor}.tif"
        tifffile.imwrite(path, z, compression=compression, predictor=predictor)
        return str(path)
    return write


def _write_anamorphic(scene):
    """A 2:1 squeezed plate: the file is half as wide as the picture, pixelAspectRatio 2."""
    def write(folder: Path) -> str:
        from conftest import write_exr

        z = np.where(np.isfinite(rendered(scene).zmin), rendered(scene).zmin, np.inf).astype(np.float32)
        return write_exr(folder / "anamorphic.exr", {"Z": np.ascontiguousarray(z[:, ::2])},
                         header={"pixelAspectRatio": 2.0})
    return write


def _render_target(r):
    """A game engine's render-target export: scene depth in R (the sky at the half-float maximum), G and B zero."""
    z = np.where(np.isfinite(r.zmin), r.zmin, 65504.0).astype(np.float16)
    zero = np.zeros_like(z)
    return {"R": z, "G": zero, "B": zero, "A": np.ones_like(z)}


def _write_alpha_png(scene):
    """An 8-bit near-white map with an alpha channel; the far wall nearly as dark as the transparent background."""
    def write(folder: Path) -> str:
        r = rendered(scene)
        inv = np.where(np.isfinite(r.zmin), 1.0 / r.zmin, 0.0)
        v = inv / np.nanmax(inv)
        grey = np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)
        alpha = np.round(r.alpha * 255).astype(np.uint8)
        path = folder / "alpha-masked.png"
        Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(path)
        return str(path)
    return write


def _write_near_white(scene, bits):
    """A made near-white map (1/Z stretched), background black: what Depth Anything gives, the reference case."""
    def write(folder: Path) -> str:
        r = rendered(scene)
        inv = np.where(np.isfinite(r.zmin), 1.0 / r.zmin, np.nan)
        lo, hi = np.nanmin(inv), np.nanmax(inv)
        v = np.where(np.isfinite(inv), 0.05 + 0.95 * (inv - lo) / (hi - lo), 0.0)
        return save_png(folder / f"near-white-{bits}-{scene.wall_z}.png", v, bits)
    return write


def _tilted_wall():
    """A wall turned away to the right, filling the frame: no ground, no sky, no backdrop to read polarity from."""
    z = np.tile(np.linspace(3.0, 30.0, 256, dtype=np.float32), (192, 1))
    return z, np.ones(z.shape, bool), np.zeros(z.shape, bool)


def _write_tilted(folder: Path) -> str:
    z, _, _ = _tilted_wall()
    return save_png(folder / "tilted-near-black.png", remap(z, 1.0, REMAP_FAR), 8)


def cases() -> list[Case]:
    out = []
    for bits in (8, 16):
        out += [
            Case(f"cops remap near-black, sky 0, {bits}-bit", _write_remap(SKY, bits, False, 0.0), truth_of(SKY)),
            Case(f"cops remap inverted, sky white, {bits}-bit", _write_remap(SKY, bits, True, 1.0), truth_of(SKY)),
            Case(f"cops remap inverted, sky 0, {bits}-bit", _write_remap(SKY, bits, True, 0.0), truth_of(SKY)),
            Case(f"cops remap near-black, room, {bits}-bit", _write_remap(ROOM, bits, False, 0.0), truth_of(ROOM)),
            Case(f"made near-white, sky, {bits}-bit", _write_near_white(SKY, bits), truth_of(SKY)),
            Case(f"made near-white, pillar at the border, {bits}-bit", _write_near_white(PILLAR, bits),
                 truth_of(PILLAR)),
        ]
    out += [
        Case("pz filtered edges over a 0 sky, no alpha", _write_exr(SKY, "pz-filtered", _filtered_pz), truth_of(SKY)),
        Case("float Z, pillar at the border", _write_exr(PILLAR, "pillar", lambda r: {"Z": r.zmin}),
             truth_of(PILLAR)),
        Case("blender mist pass", _write_exr(SKY, "mist", _mist), truth_of(SKY)),
        Case("distances in a lone Y channel", _write_exr(SKY, "lone-y", _lone_y), truth_of(SKY)),
        Case("b44 half Z, 0 sky", _write_exr(SKY, "b44", _half_zero_sky, "B44_COMPRESSION"), truth_of(SKY)),
        Case("b44a half Z, 0 sky", _write_exr(SKY, "b44a", _half_zero_sky, "B44A_COMPRESSION"), truth_of(SKY)),
        Case("alpha-masked 8-bit near-white", _write_alpha_png(SKY), truth_of(SKY)),
        Case("speckled half Z, 0 sky", _write_exr(SKY, "speckled", _speckled_half), truth_of(SKY)),
        Case("stereo parts without multiView", _write_stereo(SKY), truth_of(SKY, flip=True)),
        Case("float TIFF, LZW + predictor", _write_tiff(SKY, "lzw", 3), truth_of(SKY)),
        Case("float TIFF, deflate + predictor", _write_tiff(SKY, "zlib", 3), truth_of(SKY)),
        Case("anamorphic plate, pixelAspectRatio 2", _write_anamorphic(SKY), truth_of(SKY)),
        Case("render-target export, --channel R", _write_exr(SKY, "render-target", _render_target), truth_of(SKY),
             channel="R"),
        Case("near-black remap with no cue to its polarity (a tilted wall)", _write_tilted, _tilted_wall),
        Case("float Z, flat pillar at the border", _write_exr(SLAB, "slab", lambda r: {"Z": r.zmin}), truth_of(SLAB)),
        Case("float Z, flat pillar beside a sky", _write_exr(SLAB_SKY, "slab-sky",
                                                             lambda r: {"Z": np.nan_to_num(r.zmin, nan=0.0)}),
             truth_of(SLAB_SKY)),
    ]
    for bits in (8, 16):
        out += [
            Case(f"cops remap near-black, pillar at the border, {bits}-bit", _write_remap(SLAB, bits, False, 0.0),
                 truth_of(SLAB)),
            Case(f"cops remap inverted, pillar beside a white sky, {bits}-bit",
                 _write_remap(SLAB_SKY, bits, True, 1.0), truth_of(SLAB_SKY)),
            Case(f"cops remap near-black, sky clamped white, {bits}-bit", _write_remap(SKY, bits, False, 1.0),
                 truth_of(SKY)),
            Case(f"cops remap near-black, near floor clipped, sky 0, {bits}-bit",
                 _write_remap(SKY, bits, False, 0.0, near=4.0), truth_of(SKY)),
            Case(f"cops remap near-black, --polarity near-black, {bits}-bit", _write_remap(SKY, bits, False, 0.0),
                 truth_of(SKY), flags={"polarity": "near-black"}),
            Case(f"cops remap near-black, round 2's --invert on, {bits}-bit", _write_remap(SKY, bits, False, 0.0),
                 truth_of(SKY), flags={"invert": "on"}),
            Case(f"cops remap near-black room, round 2's --invert on, {bits}-bit",
                 _write_remap(ROOM, bits, False, 0.0), truth_of(ROOM), flags={"invert": "on"}),
            Case(f"cops remap near-black, --mode disparity --near 1 --far 40, {bits}-bit",
                 _write_remap(ROOM, bits, False, 0.0), truth_of(ROOM),
                 flags={"mode": "disparity", "near": 1.0, "far": 40.0, "polarity": "near-black"}),
            Case(f"cops remap near-black, --mode disparity --near 1 --far 40 (polarity auto), {bits}-bit",
                 _write_remap(ROOM, bits, False, 0.0), truth_of(ROOM),
                 flags={"mode": "disparity", "near": 1.0, "far": 40.0}),
        ]
    return out


@dataclass
class Outcome:
    case: str
    verdict: str  # right | warned | silently wrong | refused | false alarm | wrong advice
    rho: float
    background_ok: bool
    rims: int
    warnings: tuple[str, ...]


_ADVICE = re.compile(r"\(--(mode|polarity|invert) ([a-z-]+)\)")
_FALSE_ALARMS = ("looks like inverse depth",)


def _read(case: Case, path: str, flags: dict):
    from fluxdepth_ui.depth import DepthSettings, NormalizeSettings, prepare_depth

    return prepare_depth(path, DepthSettings(channel=case.channel, normalize=NormalizeSettings(**flags)))


def _judge(result, z, whole, sky) -> tuple[bool, float, bool, int]:
    cmap = result.control_map
    values = np.where(cmap.valid, cmap.values, 0.0)
    rho = -spearman(values[whole], z[whole]) if whole.any() else float("nan")
    background_ok = bool((values[sky] <= 0.02).mean() >= 0.98) if sky.any() else True
    if sky.any():  # nothing whole may share the background's black (but what the remaps clip at their far end)
        inside = whole & (z < 0.85 * REMAP_FAR)
        background_ok &= bool((values[inside] > 0).mean() >= 0.999)
    # Edge pixels (partial coverage) may not be brighter than the brightest whole surface next to them.
    edge = ~whole & ~sky
    rims = 0
    if edge.any():
        neighbour_max = np.zeros_like(values)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = np.roll(np.roll(np.where(whole, values, 0.0), dy, 0), dx, 1)
                neighbour_max = np.maximum(neighbour_max, shifted)
        rims = int(np.count_nonzero(edge & (values > neighbour_max + 0.03) & (neighbour_max > 0)))
    right = rho >= 0.99 and background_ok and rims <= 0.002 * values.size
    return right, rho, background_ok, rims


def evaluate(case: Case, folder: Path) -> Outcome:
    from fluxdepth_ui.depth import DepthInputError

    path = case.write(folder)
    z, whole, sky = case.truth()
    try:
        result = _read(case, path, case.flags)
    except DepthInputError as exc:
        return Outcome(case.name, "refused", float("nan"), False, 0, (str(exc),))
    right, rho, background_ok, rims = _judge(result, z, whole, sky)
    warnings = tuple(result.stats.warnings)
    if right:
        verdict = "false alarm" if any(a in w for w in warnings for a in _FALSE_ALARMS) else "right"
        return Outcome(case.name, verdict, rho, background_ok, rims, warnings)
    advice = [m.groups() for w in warnings for m in _ADVICE.finditer(w)]
    if not advice:
        return Outcome(case.name, "warned" if warnings else "silently wrong", rho, background_ok, rims, warnings)
    for key, value in advice:  # each suggested flag, followed, must give the right map
        try:
            followed = _read(case, path, {**case.flags, key: value})
        except DepthInputError:
            return Outcome(case.name, "wrong advice", rho, background_ok, rims, warnings)
        if not _judge(followed, z, whole, sky)[0]:
            return Outcome(case.name, "wrong advice", rho, background_ok, rims, warnings)
    return Outcome(case.name, "warned", rho, background_ok, rims, warnings)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for case in cases():
            o = evaluate(case, Path(tmp))
            print(f"{o.verdict:15s} rho {o.rho:+.3f} bg {'ok ' if o.background_ok else 'BAD'} rims {o.rims:5d}  "
                  f"{o.case}  {' | '.join(w[:90] for w in o.warnings)}")
