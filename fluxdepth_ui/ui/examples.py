"""The example depth files shown in the app, made by ray casting simple scenes (no third-party data).

`python -m fluxdepth_ui.ui.examples` rewrites them into `fluxdepth_ui/ui/example_depth/`; a test checks that the
committed files are what this code makes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parent / "example_depth"
W, H = 480, 272
FOCAL = 420.0

EXAMPLES = {
    "room_karma_depth.exr": "Karma depth AOV (EXR)",
    "sphere_export_near_dark_16bit.png": "16-bit PNG, near = dark",
    "room_near_white_8bit.png": "8-bit map, near = white",
}
# How each example is read when picked (mode, invert, near, far): the 16-bit export was remapped from 3-40 scene units
# (`make_examples` below), so it comes with them and reads as true inverse depth, with no warning.
EXAMPLE_SETTINGS = {
    "room_karma_depth.exr": ("auto", "auto", None, None),
    "sphere_export_near_dark_16bit.png": ("disparity", "auto", 3.0, 40.0),
    "room_near_white_8bit.png": ("auto", "auto", None, None),
}


def _rays(width: int = W, height: int = H) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel direction components with planar depth 1 (z = 1): x to the right, y up."""
    u = (np.arange(width) + 0.5 - width / 2) / FOCAL
    v = (height / 2 - np.arange(height) - 0.5) / FOCAL
    return np.meshgrid(u, v)


def _sphere(dx, dy, centre, radius):
    """Planar depth of a ray/sphere hit (the ray is o + t (dx, dy, 1), so t is the planar depth), inf on a miss."""
    cx, cy, cz = centre
    a = dx**2 + dy**2 + 1.0
    b = -2.0 * (dx * cx + dy * cy + cz)
    c = cx**2 + cy**2 + cz**2 - radius**2
    disc = b**2 - 4 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def room_depth() -> np.ndarray:
    """A 6 x 3 x 12 room seen from inside, with two spheres: planar depth in metres."""
    dx, dy = _rays()
    with np.errstate(divide="ignore"):
        tx = np.where(dx != 0, 3.0 / np.abs(dx), np.inf)
        ty = np.where(dy > 0, 1.4 / np.maximum(dy, 1e-9), 1.6 / np.maximum(-dy, 1e-9))
    z = np.minimum(np.minimum(tx, ty), 12.0)
    z = np.minimum(z, _sphere(dx, dy, (1.0, -0.9, 5.0), 0.7))
    z = np.minimum(z, _sphere(dx, dy, (-1.4, -1.1, 3.0), 0.5))
    return z.astype(np.float32)


def sphere_depth() -> np.ndarray:
    """A sphere on a ground plane under an empty sky: planar depth, inf where the ray escapes."""
    dx, dy = _rays()
    with np.errstate(divide="ignore"):
        ground = np.where(dy < 0, 1.2 / np.maximum(-dy, 1e-9), np.inf)
    ground = np.where(ground < 40.0, ground, np.inf)
    return np.minimum(ground, _sphere(dx, dy, (0.0, -0.2, 6.0), 1.0)).astype(np.float32)


def make_examples(folder: Path = FOLDER) -> dict[str, Path]:
    import OpenEXR
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    room = room_depth()
    alpha = np.ones_like(room)
    header = {"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION,
              "software": "FluxDepth Studio example generator"}
    path = folder / "room_karma_depth.exr"
    OpenEXR.File(header, {"depth": room.astype(np.float16), "A": alpha.astype(np.float16)}).write(str(path))
    out[path.name] = path

    sphere = sphere_depth()
    _, _, near, far = EXAMPLE_SETTINGS["sphere_export_near_dark_16bit.png"]
    remapped = np.where(np.isfinite(sphere), (sphere - near) / (far - near), 1.0)
    path = folder / "sphere_export_near_dark_16bit.png"
    Image.fromarray(np.round(np.clip(remapped, 0, 1) * 65535).astype(np.uint16)).save(path)
    out[path.name] = path

    d = 1.0 / room
    white = (d - d.min()) / (d.max() - d.min())
    path = folder / "room_near_white_8bit.png"
    Image.fromarray(np.round(white * 255).astype(np.uint8)).save(path)
    out[path.name] = path
    return out


def example_paths() -> list[str]:
    return [str(FOLDER / name) for name in EXAMPLES if (FOLDER / name).exists()]


if __name__ == "__main__":
    for name, path in make_examples().items():
        print(f"{path} ({os.path.getsize(path) // 1024} KB)")
