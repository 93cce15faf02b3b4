"""What the app's events do: thin calls into `fluxdepth_ui.depth` and `fluxdepth_ui.pipeline`.

No layout here. Every function takes plain values and returns plain values (paths, dicts, DataFrames), so the UI,
the `/preview` and `/generate` API endpoints and the tests share one code path with the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..depth import (
    DEFAULT_CLIP,
    DepthMap,
    DepthPreview,
    DepthSettings,
    NormalizeSettings,
    load_depth,
    prepare_loaded,
    write_preview_png,
)

log = logging.getLogger(__name__)

AUTO_CHANNEL = "auto"


@dataclass
class Studio:
    """App-wide services: the one pipeline manager, the photo-depth estimator, where results go."""

    manager: object  # PipelineManager (imported lazily: the page must be served before torch is loaded)
    outputs: Path
    estimator: object | None = None  # DepthEstimator, built on first use when None
    cancels: dict = field(default_factory=dict)
    _depth_cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session_dir(self, session: str | None) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_-]", "", session or "") or "local"
        path = self.outputs / safe[:32]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cancel_event(self, session: str | None) -> threading.Event:
        with self._lock:
            return self.cancels.setdefault(session or "local", threading.Event())

    def load_depth(self, path: str, channel: str | None) -> DepthMap:
        """Reading the file is the slow part of a preview: keep the last few maps for slider changes."""
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, channel)
        with self._lock:
            if key in self._depth_cache:
                self._depth_cache.move_to_end(key)
                return self._depth_cache[key]
        depth = load_depth(path, channel)
        with self._lock:
            self._depth_cache[key] = depth
            while len(self._depth_cache) > 4:
                self._depth_cache.popitem(last=False)
        return depth


def depth_settings(channel: str | None = None, mode: str = "auto", invert: str = "auto",
                   clip_low: float = DEFAULT_CLIP[0], clip_high: float = DEFAULT_CLIP[1], near: float | None = None,
                   far: float | None = None, long_side: int = 1024) -> DepthSettings:
    def opt(value):
        return None if value in (None, "", 0, 0.0) else float(value)

    return DepthSettings(
        channel=None if channel in (None, "", AUTO_CHANNEL) else channel,
        normalize=NormalizeSettings(mode=mode or "auto", invert=invert or "auto",
                                    clip=(float(clip_low), float(clip_high)), near=opt(near), far=opt(far)),
        long_side=int(long_side),
    )


def require_file(path) -> str:
    from ..depth import DepthInputError

    if isinstance(path, dict):  # gradio FileData from the API
        path = path.get("path")
    if not path:
        raise DepthInputError("no depth file yet: drop an EXR, PNG, TIFF, PFM, NPY or JPEG depth map")
    return str(path)


def run_preview(studio: Studio, path: str, settings: DepthSettings, log_histogram: bool = False) -> DepthPreview:
    depth = studio.load_depth(require_file(path), settings.channel)
    return prepare_loaded(depth, settings, log_histogram)


def write_control_png(studio: Studio, session: str | None, result: DepthPreview, keep: int = 4) -> str:
    """16-bit PNG of the control map in the session's folder; older previews are pruned."""
    folder = studio.session_dir(session) / "previews"
    folder.mkdir(exist_ok=True)
    path = folder / f"control-{time.time_ns()}.png"
    write_preview_png(result.control, str(path), compress_level=1)  # a throwaway preview: speed over size
    for old in sorted(folder.glob("control-*.png"))[:-keep]:
        old.unlink(missing_ok=True)
    return str(path)


def histogram_frames(result: DepthPreview):
    import pandas as pd

    raw = result.raw_histogram
    centers = raw.centers()
    if raw.markers:
        lo, hi = min(raw.markers), max(raw.markers)
        zone = np.where((centers < lo) | (centers > hi), "clipped", "used")
    else:
        zone = np.full(centers.shape, "used")
    unit = "log10(value)" if raw.log else "value"
    raw_df = pd.DataFrame({unit: centers.round(6), "pixels": raw.counts, "range": zone})
    ctl = result.control_histogram
    control_df = pd.DataFrame({"level": ctl.centers().round(4), "pixels": ctl.counts})
    return raw_df, control_df


def stats_markdown(result: DepthPreview) -> str:
    s = result.stats
    lines = [f"**{s.summary()}**"]
    if s.raw_clip:
        far, near = s.raw_clip
        lines.append(f"Far end ↔ near end in file units: {far:.4g} ↔ {near:.4g}")
    lines += [f"- ⚠ {w}" for w in s.warnings]
    return "\n\n".join(lines[:2]) + ("\n\n" + "\n".join(lines[2:]) if len(lines) > 2 else "")


def channel_choices(result: DepthPreview) -> list[str]:
    return [AUTO_CHANNEL, *result.depth.channels]


# --- photo -> depth ----------------------------------------------------------------------------------------------


def estimate_photo_depth(studio: Studio, session: str | None, photo) -> str:
    """Estimate depth from a photo and save it as a float NPY the preview reads like any depth file."""
    from ..pipeline.depth_estimation import DepthEstimator

    if photo is None:
        from ..depth import DepthInputError

        raise DepthInputError("add a photo first")
    if studio.estimator is None:
        studio.estimator = DepthEstimator()
    depth = studio.estimator.estimate(photo)
    values = depth.values
    span = float(values.max() - values.min()) or 1.0
    # Min-max to [0, 1] (Depth Anything's convention, near = white); NPY keeps the float precision.
    path = studio.session_dir(session) / f"photo-depth-{time.time_ns()}.npy"
    np.save(path, ((values - values.min()) / span).astype(np.float32))
    return str(path)


# --- generation --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOutcome:
    png: str
    sidecar: str
    control_png: str
    metadata: dict
    message: str


def run_generate(studio: Studio, session: str | None, path: str, settings: DepthSettings, prompt: str,
                 variant: str, steps: int, guidance: float, seed: int | None, init_image=None,
                 init_image_name: str | None = None, strength: float = 0.6, on_step=None,
                 load_progress=None) -> GenerationOutcome:
    from PIL import Image

    from ..pipeline import GenerationSettings, save_result

    manager = studio.manager
    gen = GenerationSettings(prompt=prompt or "", seed=None if seed is None else int(seed), steps=int(steps),
                             guidance=float(guidance), strength=float(strength))
    gen.validate()
    preview = run_preview(studio, path, settings)
    manager.configure(variant=variant)
    cancel = studio.cancel_event(session)
    cancel.clear()
    if isinstance(init_image, str):
        init_image = Image.open(init_image).convert("RGB")
    result = manager.generate(preview.control, gen, init_image=init_image, init_image_name=init_image_name,
                              depth=preview.stats, on_step=on_step, cancel=cancel, load_progress=load_progress)
    folder = studio.session_dir(session)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-seed{result.metadata.seed}"
    png, sidecar = save_result(result.image, result.metadata, str(folder / f"{stem}.png"))
    control_png = str(folder / f"{stem}-control.png")
    Image.fromarray(preview.control.to_uint8()).convert("RGB").save(control_png)
    meta = result.metadata.to_dict()
    message = (f"seed **{meta['seed']}** · {meta['width']}×{meta['height']} · {meta['steps']} steps · "
               f"guidance {meta['guidance']:g} · {meta['variant']} · {meta['seconds']:.1f} s")
    if meta["notes"]:
        message += "\n\n⚠ " + " · ".join(meta["notes"])
    return GenerationOutcome(png, sidecar, control_png, meta, message)


def history_entry(outcome: GenerationOutcome, ui_settings: dict) -> dict:
    return {"png": outcome.png, "sidecar": outcome.sidecar, "control": outcome.control_png,
            "caption": f"seed {outcome.metadata['seed']} · {outcome.metadata['prompt'][:40]}",
            "settings": ui_settings}


def read_sidecar(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


# --- sequences ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSetup:
    folder: str
    frames: list
    stats: object  # SequenceStats
    previews: list[str]  # control PNGs of the first, middle and last frame under the shared range
    summary: str


def gather_sequence(studio: Studio, session: str | None, files: list, settings: DepthSettings,
                    seed: int | None) -> SequenceSetup:
    """Uploaded frames (several files, or one zip) -> one folder, checked, with the shared range computed."""
    import shutil
    import zipfile

    from ..depth import DepthInputError, prepare_depth
    from ..sequence import check_frames, compute_stats, find_frames

    paths = [str(f["path"] if isinstance(f, dict) else f) for f in (files or [])]
    if not paths:
        raise DepthInputError("add the frames of the sequence (several depth files, or one zip)")
    folder = studio.session_dir(session) / f"sequence-{time.time_ns()}"
    folder.mkdir()
    for path in paths:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for member in zf.infolist():
                    name = os.path.basename(member.filename)  # never a path from inside the zip
                    if member.is_dir() or not name or name.startswith("."):
                        continue
                    with zf.open(member) as src, open(folder / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        else:
            shutil.copy(path, folder / os.path.basename(path))
    frames = check_frames(find_frames(str(folder)))
    stats = compute_stats(frames, settings, str(folder), seed=seed)
    shared = DepthSettings(channel=settings.channel, normalize=settings.normalize, long_side=settings.long_side,
                           fixed_range=stats.range)
    previews = []
    for frame in (frames[0], frames[len(frames) // 2], frames[-1]):
        result = prepare_depth(frame.path, shared)
        out = folder / f"preview-{frame.number:04d}.png"
        write_preview_png(result.control, str(out), compress_level=1)
        previews.append(str(out))
    r = stats.range
    summary = (f"**{len(frames)} frames** ({frames[0].number}–{frames[-1].number}), "
               f"{stats.resolution[0]}×{stats.resolution[1]} · one range for all: mode {r.mode}, "
               f"{r.low:.4g} … {r.high:.4g}{', inverted' if r.inverted else ''}")
    return SequenceSetup(str(folder), frames, stats, previews, summary)


def run_sequence(studio: Studio, session: str | None, setup: SequenceSetup, settings: DepthSettings, prompt: str,
                 variant: str, steps: int, guidance: float, fps: float, on_frame=None, on_step=None):
    """Render every frame with the shared range and seed, then the result and control-map videos."""
    from ..pipeline import GenerationSettings
    from ..sequence import render_sequence, settle_seed, write_video

    stats = settle_seed(setup.stats)
    generation = GenerationSettings(prompt=prompt or "", seed=stats.seed, steps=int(steps), guidance=float(guidance))
    generation.validate()
    studio.manager.configure(variant=variant)
    cancel = studio.cancel_event(session)
    cancel.clear()
    out_dir = os.path.join(setup.folder, "render")
    report = render_sequence(studio.manager, setup.frames, stats, settings, generation, out_dir,
                             on_frame=on_frame, on_step=on_step, cancel=cancel)
    video = write_video(report.outputs, os.path.join(out_dir, "sequence.mp4"), fps)
    control_video = write_video(report.controls, os.path.join(out_dir, "sequence_control.mp4"), fps)
    return report, video, control_video, stats.seed
