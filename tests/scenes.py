"""Houdini-like depth renders with known geometry, ray-cast in numpy (a pinhole camera at the origin, looking +z).

The scene: a ground plane, a back wall (optional), spheres, and sky (no hit) above the horizon. Each pixel is
sampled `ss` x `ss` times, which gives what renderers write: the nearest sample (Karma's `zmin` filter), the
coverage (alpha) and the coverage-weighted average (premultiplied Z), or the plain average over hits (an
anti-aliased Z, a "ghost" level between two surfaces at object-over-object edges).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Scene:
    width: int = 256
    height: int = 192
    fov_deg: float = 50.0
    ground_y: float = -1.5
    wall_z: float | None = 30.0
    spheres: tuple = ((0.0, -0.3, 6.0, 1.2), (-2.2, -0.8, 9.0, 0.7), (2.0, 0.2, 14.0, 1.5))
    ss: int = 4


@dataclass
class Render:
    zmin: np.ndarray  # nearest planar Z per pixel (NaN = sky)
    z_avg: np.ndarray  # average Z over the samples that hit (anti-aliased edges between surfaces)
    z_premult: np.ndarray  # sum of hit Z / samples: coverage-weighted (premultiplied by alpha)
    alpha: np.ndarray  # coverage in [0, 1]
    z_center: np.ndarray  # planar Z through the pixel centre (the true depth to compare against)
    extras: dict = field(default_factory=dict)


def _hit(scene: Scene, dx, dy, dz) -> np.ndarray:
    """Planar Z of the first hit along rays (dx, dy, dz) from the origin; inf where nothing is hit."""
    t = np.full(dx.shape, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        tg = scene.ground_y / dy
        t = np.where((dy < 0) & (tg > 0), np.minimum(t, tg), t)
        if scene.wall_z is not None:
            tw = scene.wall_z / dz
            t = np.where(tw > 0, np.minimum(t, tw), t)
    for cx, cy, cz, r in scene.spheres:
        b = dx * cx + dy * cy + dz * cz
        c = cx * cx + cy * cy + cz * cz - r * r
        a = dx * dx + dy * dy + dz * dz
        disc = b * b - a * c
        ts = (b - np.sqrt(np.maximum(disc, 0))) / a
        t = np.where((disc > 0) & (ts > 0), np.minimum(t, ts), t)
    return t * dz  # planar depth (camera-space z)


def render(scene: Scene = Scene()) -> Render:
    w, h, s = scene.width, scene.height, scene.ss
    focal = 0.5 * w / np.tan(np.radians(scene.fov_deg) / 2)
    offsets = (np.arange(s) + 0.5) / s
    xs = (np.arange(w)[:, None] + offsets[None, :]).reshape(-1)  # (w*s,)
    ys = (np.arange(h)[:, None] + offsets[None, :]).reshape(-1)
    px, py = np.meshgrid(xs, ys)  # (h*s, w*s)
    dx = (px - w / 2) / focal
    dy = -(py - h / 2) / focal
    z = _hit(scene, dx, dy, np.ones_like(dx)).reshape(h, s, w, s).transpose(0, 2, 1, 3).reshape(h, w, s * s)
    hit = np.isfinite(z)
    count = hit.sum(axis=2)
    alpha = count / (s * s)
    with np.errstate(invalid="ignore", divide="ignore"):
        zmin = np.where(count > 0, np.where(hit, z, np.inf).min(axis=2), np.nan)
        zsum = np.where(hit, z, 0).sum(axis=2)
        z_avg = np.where(count > 0, zsum / np.maximum(count, 1), np.nan)
        z_premult = zsum / (s * s)
    cx, cy = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    zc = _hit(scene, (cx - w / 2) / focal, -(cy - h / 2) / focal, np.ones((h, w)))
    zc = np.where(np.isfinite(zc), zc, np.nan)
    return Render(zmin.astype(np.float32), z_avg.astype(np.float32), z_premult.astype(np.float32),
                  alpha.astype(np.float32), zc.astype(np.float32))


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's rho needs on maps with flat walls."""
    values, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - (counts - 1) / 2.0)[inverse]).astype(np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays."""
    return float(np.corrcoef(_ranks(np.ravel(a)), _ranks(np.ravel(b)))[0, 1])
