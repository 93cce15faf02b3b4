"""Camera moves: a depth frame sequence rendered with one normalization range, one seed and the same noise.

Pass 1 (`compute_stats`) pools robust percentiles over every frame into a stats JSON. Pass 2 (`render_sequence`)
renders each frame with that fixed range, so a back wall keeps its grey level while near objects move, and any
frame range rendered on any machine with the same stats file matches what one machine would have made.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from . import limits
from .atomic import remove_stale_parts, write_text
from .defaults import DEFAULT_FPS
from .depth import DepthInputError, DepthRange, DepthSettings, NormalizeSettings, compute_sequence_range, load_depth
from .depth.readers import DEPTH_SUFFIXES, check_regular_file, probe_size
from .errors import display_name
from .settings import ShotSettings

STATS_FORMAT = 1
# Pooled percentiles over at most ~20 M sampled pixels, whatever the frame count (memory stays bounded).
_POOLED_SAMPLES = 20_000_000


@dataclass(frozen=True)
class Frame:
    number: int
    path: str


@dataclass(frozen=True)
class SequenceStats:
    range: DepthRange
    channel: str | None
    settings: dict  # the normalization settings the range was computed with
    frames: tuple[int, int]
    count: int
    resolution: tuple[int, int]
    pattern: str
    seed: int | None = None  # fixed for the whole sequence, so split runs match
    warnings: tuple[str, ...] = ()  # what the frames' depth raised (a farm job shows no preview)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["range"] = self.range.to_dict()
        d["warnings"] = list(self.warnings)
        d["format"] = STATS_FORMAT
        return d


# --- finding frames ----------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> tuple[str, re.Pattern] | None:
    """Houdini `$F4`/`$F`, `####` and printf `%04d` patterns -> (glob, regex with one number group)."""
    base = os.path.basename(pattern)
    for token in (r"\$F(\d*)", r"#+", r"%0?(\d*)d"):
        m = re.search(token, base)
        if m:
            glob_base = base[: m.start()] + "*" + base[m.end():]
            regex = re.escape(base[: m.start()]) + r"(-?\d+)" + re.escape(base[m.end():]) + "$"
            return os.path.join(os.path.dirname(pattern), glob_base), re.compile(regex)
    return None


def find_frames(pattern: str) -> list[Frame]:
    """Frames of `pattern` (a `####` / `$F4` / `%04d` path, or a folder of numbered depth files), by number."""
    pattern = os.path.expanduser(pattern)
    if os.path.isdir(pattern):
        frames = []
        for path in sorted(os.listdir(pattern)):
            m = re.search(r"(\d+)(?=\.[^.]+$)", path)
            if m and path.lower().endswith(DEPTH_SUFFIXES):
                frames.append(Frame(int(m.group(1)), os.path.join(pattern, path)))
        stems = {re.sub(r"\d+(?=\.[^.]+$)", "#", os.path.basename(f.path)) for f in frames}
        if len(stems) > 1:
            raise DepthInputError(
                f"the frames hold more than one numbered sequence ({', '.join(sorted(stems)[:3])}); pass a pattern "
                "such as depth.####.exr instead of the folder, or send one sequence at a time"
            )
    else:
        parsed = _pattern_regex(pattern)
        if parsed is None:
            raise DepthInputError(
                f"{display_name(pattern)} has no frame number placeholder; write it as depth.####.exr, depth.$F4.exr or "
                "depth.%04d.exr, or pass the folder"
            )
        glob_pattern, regex = parsed
        frames = []
        for path in glob.glob(os.path.join(glob.escape(os.path.dirname(glob_pattern)),
                                           os.path.basename(glob_pattern))):
            m = regex.search(os.path.basename(path))
            if m:
                frames.append(Frame(int(m.group(1)), path))
    frames.sort(key=lambda f: f.number)
    if not frames:
        raise DepthInputError(f"no depth frames match {display_name(pattern)}")
    most = limits.current().frames
    if len(frames) > most:
        raise DepthInputError(f"{len(frames)} frames is above the limit of {most} frames a sequence; render it in "
                              "parts")
    return frames


def parse_frame_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    m = re.fullmatch(r"\s*(-?\d+)\s*(?:-|:|\.\.)\s*(-?\d+)\s*", text) or re.fullmatch(r"\s*(-?\d+)\s*", text)
    if not m:
        raise DepthInputError(f"frame range {text!r} is not like 1-40")
    a, b = int(m.group(1)), int(m.group(m.lastindex))
    if b < a:
        raise DepthInputError(f"frame range {text!r} ends before it starts")
    return a, b


def check_frames(frames: list[Frame], wanted: tuple[int, int] | None = None) -> list[Frame]:
    """The frames to use, after refusing gaps and mixed resolutions (both found before any rendering)."""
    if wanted:
        frames = [f for f in frames if wanted[0] <= f.number <= wanted[1]]
        if not frames:
            raise DepthInputError(f"no frames in {wanted[0]}-{wanted[1]}")
    numbers = [f.number for f in frames]
    expected = set(range(numbers[0], numbers[-1] + 1)) if not wanted else set(range(wanted[0], wanted[1] + 1))
    missing = sorted(expected - set(numbers))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DepthInputError(f"missing frames: {shown} ({len(missing)} of {len(expected)}); render them or pick "
                              "frames without gaps (the CLI's --frames A-B)")
    sizes: dict[tuple[int, int], list[int]] = {}
    for f in frames:
        sizes.setdefault(probe_size(f.path), []).append(f.number)
    if len(sizes) > 1:
        parts = [f"{w}x{h} (frames {v[0]}..{v[-1]}, {len(v)} frames)" for (w, h), v in sizes.items()]
        raise DepthInputError(f"mixed resolutions in the sequence: {'; '.join(parts)}; render every frame at one size")
    return frames


# --- pass 1: one range for all frames ----------------------------------------------------------------------------


def compute_stats(frames: list[Frame], settings: DepthSettings, pattern: str, seed: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> SequenceStats:
    warnings: dict[str, None] = {}

    def depths() -> Iterable:
        for i, frame in enumerate(frames):
            if progress:
                progress(i + 1, len(frames))
            depth = load_depth(frame.path, settings.channel)
            for note in depth.notes:
                if len(warnings) < 20:
                    warnings.setdefault(f"frame {frame.number}: {note}" if len(frames) > 1 else note)
            yield depth

    per_frame = max(100_000, _POOLED_SAMPLES // max(1, len(frames)))
    rng = compute_sequence_range(depths(), settings.normalize, samples_per_frame=per_frame)
    n = settings.normalize
    return SequenceStats(
        range=rng, channel=settings.channel,
        settings=normalize_dict(n),
        frames=(frames[0].number, frames[-1].number), count=len(frames),
        resolution=probe_size(frames[0].path), pattern=pattern_key(pattern), seed=seed,
        warnings=_dedupe_frames(list(warnings)),
    )


def normalize_dict(n: NormalizeSettings) -> dict:
    """The normalization settings a stats file records (and a resume compares)."""
    return {**asdict(n), "clip": list(n.clip)}


def _dedupe_frames(notes: list[str]) -> tuple[str, ...]:
    """The same note on every frame is said once, with the frame it was first seen on."""
    seen: dict[str, str] = {}
    for note in notes:
        seen.setdefault(note.split(": ", 1)[-1] if note.startswith("frame ") else note, note)
    return tuple(seen.values())


def settle_seed(stats: SequenceStats, requested: int | None = None) -> SequenceStats:
    """The seed the whole shot renders with: the one asked for, else the stats file's, else a fresh draw."""
    from dataclasses import replace

    from .settings import draw_seed

    seed = requested if requested is not None else stats.seed
    seed = draw_seed() if seed is None else seed
    return stats if seed == stats.seed else replace(stats, seed=seed)


def save_stats(stats: SequenceStats, path: str) -> None:
    write_text(path, json.dumps(stats.to_dict(), indent=2))


def load_stats(path: str) -> SequenceStats:
    name = display_name(path)
    check_regular_file(path)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DepthInputError(f"stats file {name} cannot be read ({type(exc).__name__}); compute it again") from None
    if not isinstance(data, dict) or data.get("format") != STATS_FORMAT or not isinstance(data.get("range"), dict):
        raise DepthInputError(f"{name} is not a FluxDepth sequence stats file; compute it with fluxdepth sequence")
    try:
        return SequenceStats(
            range=DepthRange.from_dict(data["range"]), channel=data.get("channel"),
            settings=dict(data.get("settings") or {}), frames=tuple(data.get("frames", (0, 0))),
            count=int(data.get("count", 0)), resolution=tuple(data.get("resolution", (0, 0))),
            pattern=str(data.get("pattern", "")), seed=data.get("seed"),
            warnings=tuple(str(w) for w in (data.get("warnings") or ())),
        )
    except (TypeError, ValueError, KeyError):
        raise DepthInputError(f"{name} is a damaged sequence stats file; compute it again") from None


def pattern_key(pattern: str) -> str:
    """How a stats file names its frames: the pattern's file name only, never a folder of the machine that made it
    (stats files travel to farms and visitors)."""
    return display_name(pattern, limit=200)


def stats_match(stats: SequenceStats, settings: DepthSettings, pattern: str) -> bool:
    """True when `stats` was computed for this pattern with these normalization settings (resume-safe)."""
    n = settings.normalize
    wanted = normalize_dict(n)
    return stats.pattern == pattern_key(pattern) and stats.channel == settings.channel and stats.settings == wanted


def settings_with_stats(settings: DepthSettings, stats: SequenceStats) -> DepthSettings:
    """Depth settings that reproduce the sequence's mapping for any single frame."""
    s = stats.settings
    normalize = NormalizeSettings(mode=s.get("mode", "auto"), invert=settings.normalize.invert,
                                  clip=tuple(s.get("clip", settings.normalize.clip)), near=s.get("near"),
                                  far=s.get("far"), polarity=s.get("polarity", "auto"),
                                  edges=s.get("edges", settings.normalize.edges))
    return DepthSettings(channel=settings.channel or stats.channel, normalize=normalize,
                         long_side=settings.long_side, fixed_range=stats.range)


# --- pass 2: render ----------------------------------------------------------------------------------------------


@dataclass
class SequenceReport:
    """What a sequence run did, here or on Ray workers (farm.py)."""

    rendered: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failed: dict[int, str] = field(default_factory=dict)  # frame -> last error, after farm.ATTEMPTS tries
    retried: list[int] = field(default_factory=list)
    workers: int = 1

    def failure_line(self) -> str:
        """'frame(s) 4, 9 failed twice (why)': the one message the CLI and the app give."""
        numbers = ", ".join(map(str, sorted(self.failed)))
        return f"frame(s) {numbers} failed twice ({next(iter(self.failed.values()))})"


@dataclass(frozen=True)
class FrameJob:
    frame: Frame
    png: str
    control_png: str
    key: str


def plan_frames(manager, frames: list[Frame], shot: ShotSettings, out_dir: str, formats: tuple[str, ...],
                report: SequenceReport) -> list[FrameJob]:
    """The resume rule, for every way a sequence renders: a frame whose files are whole and carry this shot's key
    is done (skipped); the others are returned, in order. Fills the report's outputs, controls and skipped."""
    from .shot import expected_key

    os.makedirs(os.path.join(out_dir, "control"), exist_ok=True)
    remove_stale_parts(out_dir)  # a killed run's half-written files
    jobs = []
    for frame in frames:
        png, sidecar, control_png = output_paths(out_dir, frame)
        key = expected_key(manager, frame.path, shot)
        report.outputs.append(png)
        report.controls.append(control_png)
        if frame_is_done(png, sidecar, control_png, key, formats):
            report.skipped.append(frame.number)
        else:
            jobs.append(FrameJob(frame, png, control_png, key))
    return jobs


def output_paths(out_dir: str, frame: Frame, stem: str = "frame") -> tuple[str, str, str]:
    png = os.path.join(out_dir, f"{stem}.{frame.number:04d}.png")
    return png, os.path.splitext(png)[0] + ".json", os.path.join(out_dir, "control", f"{stem}.{frame.number:04d}.png")


def render_sequence(manager, frames: list[Frame], stats: SequenceStats, depth: DepthSettings, generation,
                    out_dir: str, on_frame: Callable[[int, int, Frame, str], None] | None = None,
                    on_step=None, cancel=None, formats: tuple[str, ...] = (),
                    load_progress=None, workers: int = 0, address: str | None = None,
                    worker_options: dict | None = None) -> SequenceReport:
    """The sequence service: render `frames` with the sequence's fixed range and seed, here or, with `workers`, on
    that many Ray workers (farm.py; `address` joins a cluster). The CLI, the app and farm jobs all call this.

    1. Plan: frames already done with the same settings are kept (plan_frames).
    2. Render what is left: each frame is one shot (`shot.render_shot`), so a frame's files equal what
       `fluxdepth generate --stats` makes for it, wherever it renders.
    `generation` carries the sequence seed; `on_frame(i, n, frame, status)` reports progress ("rendered",
    "skipped", "failed").
    """
    from .pipeline import GenerationCancelled
    from .shot import render_shot

    shot = ShotSettings(settings_with_stats(depth, stats), generation)
    report = SequenceReport(workers=max(1, workers or 1))
    jobs = plan_frames(manager, frames, shot, out_dir, formats, report)
    by_number = {f.number: f for f in frames}
    done = 0
    if on_frame:
        for number in report.skipped:
            done += 1
            on_frame(done, len(frames), by_number[number], "skipped")
    t0 = time.perf_counter()
    if workers and jobs:
        from .farm import render_jobs_on_ray

        render_jobs_on_ray(manager.spec(), jobs, shot, formats, workers, address, report, worker_options,
                           lambda frame, status: on_frame and on_frame(done + len(report.rendered)
                                                                      + len(report.failed), len(frames), frame,
                                                                      status))
    else:
        for job in jobs:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled before frame {job.frame.number}")
            render_shot(manager, job.frame.path, shot, job.png, key=job.key, control_png=job.control_png,
                        on_step=on_step, cancel=cancel, formats=formats, load_progress=load_progress)
            report.rendered.append(job.frame.number)
            if on_frame:
                on_frame(done + len(report.rendered), len(frames), job.frame, "rendered")
    report.rendered.sort()
    report.seconds = time.perf_counter() - t0
    return report


def _sidecar_key(path: str) -> str | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data.get("shot_key") if isinstance(data, dict) else None


def _decodes(path: str) -> bool:
    """The whole file decodes (a truncated file fails here, not in the video writer)."""
    from PIL import Image

    try:
        if path.endswith(".exr"):
            from .image_files import read_extra

            read_extra(path)
            return True
        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure means: render this frame again
        return False


def frame_is_done(png: str, sidecar: str, control_png: str, key: str, formats: tuple[str, ...] = ()) -> bool:
    """A frame counts as finished only when its sidecar carries this key and all of its images decode (the 8-bit
    PNG, the control map and each of `formats`)."""
    from .image_files import extra_path

    files = [png, control_png, *(extra_path(png, f) for f in formats)]
    return _sidecar_key(sidecar) == key and all(_decodes(f) for f in files)


# --- video -------------------------------------------------------------------------------------------------------


def write_video(paths: list[str], out: str, fps: float = DEFAULT_FPS) -> str:
    """MP4 (H.264 through the ffmpeg that imageio-ffmpeg ships) or GIF, by the extension of `out`."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    if not paths:
        raise DepthInputError("no frames to put in a video")

    def rgb8(path):
        with Image.open(path) as img:
            if img.mode.startswith("I;16") or img.mode == "I":
                arr = (np.asarray(img, dtype=np.float32) / 257.0).round().astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.asarray(img.convert("RGB"))

    frames = np.stack([rgb8(p) for p in paths])
    ext = os.path.splitext(out)[1].lower()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if ext == ".gif":
        iio.imwrite(out, frames, duration=1000.0 / fps, loop=0)
    elif ext in (".mp4", ".mov", ".mkv"):
        iio.imwrite(out, frames, plugin="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=16)
    else:
        raise DepthInputError(f"video {out}: use .mp4, .mov, .mkv or .gif")
    return out
