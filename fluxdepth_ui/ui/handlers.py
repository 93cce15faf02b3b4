"""What the app's events do: thin calls into `fluxdepth_ui.depth` and `fluxdepth_ui.pipeline`.

No layout here. Every function takes plain values and returns plain values (paths, dicts, DataFrames), so the UI,
the `/preview` and `/generate` API endpoints and the tests share one code path with the CLI.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import limits
from ..archive import safe_member_name
from ..depth.readers import check_regular_file
from ..errors import FluxDepthError
from ..outputs import readable_stem
from ..settings import MAX_SEED, check_number
from .sharing import HostPolicy, Workspace

from ..depth import (
    DepthMap,
    DepthPreview,
    DepthSettings,
    load_depth,
    prepare_loaded,
    write_preview_png,
)

log = logging.getLogger(__name__)

AUTO_CHANNEL = "auto"


@dataclass
class Studio:
    """App-wide services: the one pipeline manager, the photo-depth estimator, where results go, what visitors may
    do (docs/sharing.md)."""

    manager: object  # PipelineManager (imported lazily: the page must be served before torch is loaded)
    outputs: Path
    estimator: object | None = None  # DepthEstimator, built on first use when None
    policy: HostPolicy = field(default_factory=HostPolicy)
    workspace: Workspace = field(default_factory=Workspace)
    cancels: dict = field(default_factory=dict)
    # Sequences on Ray (docs/farm.md): {"address": "ray://head:10001" or None, "workers": N}; None renders here.
    farm: dict | None = None
    # FLUX.1 Depth [pro] through BFL's API (bfl.BflBackend), offered when the host started with --bfl; None: off.
    bfl: object | None = None
    # The live preview: the image forming, every N denoising steps (--live-preview; 0 = off; docs/live-preview.md).
    live_preview_every: int = 0
    queues: dict = field(default_factory=dict)  # session -> ShotQueue: shots waiting to render one after another
    # session -> (path, settings, DepthPreview) last shown, and the last maps read: bounded in bytes over all
    # sessions (limits.cache_mb), least recently used first, whether or not a session ever ends (docs/sharing.md).
    previews: object = field(default_factory=lambda: _byte_bounded_cache())  # a cachetools.LRUCache
    made_depths: dict = field(default_factory=dict)  # real path -> DepthMap estimated here (keeps its polarity)
    _depth_cache: object = field(default_factory=lambda: _byte_bounded_cache())
    _stems: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def session_dir(self, session: str | None) -> Path:
        """The session's results folder, made when the first result is written (not on every page load)."""
        safe = re.sub(r"[^A-Za-z0-9_-]", "", session or "") or "local"
        path = self.outputs / safe[:32]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FluxDepthError(f"the results folder cannot be written ({exc.strerror}); tell the host") from None
        return path

    def unique_stem(self, stem: str) -> str:
        """A result name no other result of this server has or is about to get (two images with one seed in one
        second once overwrote each other): `stem`, else `stem-2`, `stem-3`, ..."""
        with self._lock:
            taken = self._stems
            name, n = stem, 1
            while name in taken:
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
            if len(taken) > 10_000:
                taken.clear()  # names carry the second: a clash needs the same second anyway
                taken.add(name)
            return name

    def arm_cancel(self, session: str | None) -> None:
        """A new job of this session starts counting cancels: called when Generate (or Render) is clicked, so a
        Cancel pressed while the job still waits in the queue or loads the model is honoured, not cleared."""
        self.cancel_event(session).clear()

    def cancel_event(self, session: str | None) -> threading.Event:
        with self._lock:
            return self.cancels.setdefault(session or "local", threading.Event())

    def queue_of(self, session: str | None) -> "ShotQueue":
        with self._lock:
            return self.queues.setdefault(session or "local", ShotQueue())

    def end_session(self, session: str | None) -> None:
        """The browser tab closed: its scratch files go, its results stay (retention removes them later)."""
        self.workspace.end(session)
        with self._lock:
            self.queues.pop(session or "local", None)
            self.cancels.pop(session or "local", None)
            self.previews.pop(session, None)

    def remember_made(self, path: str, depth: DepthMap, alias_of: str | None = None) -> None:
        """A depth map this server made (from a photo), read in place of the file that shows it."""
        with self._lock:
            if alias_of is not None:
                depth = self.made_depths[os.path.realpath(alias_of)]
            self.made_depths[os.path.realpath(path)] = depth
            while len(self.made_depths) > 16:
                self.made_depths.pop(next(iter(self.made_depths)))

    def load_depth(self, path: str, channel: str | None) -> DepthMap:
        """Reading the file is the slow part of a preview: keep the last few maps for slider changes."""
        with self._lock:
            made = self.made_depths.get(os.path.realpath(path))
        if made is not None:
            return made
        check_regular_file(path)
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, channel)
        with self._lock:
            kept = self._depth_cache.get(key)
        if kept is not None:
            return kept
        depth = load_depth(path, channel)
        keep(self._depth_cache, key, depth, self._lock)
        return depth


# Each kept entry counts at least this much, so the count is bounded too (cache_mb / 8 entries at most).
_ENTRY_FLOOR = 8 * 2**20


def _byte_bounded_cache():
    import cachetools

    return cachetools.LRUCache(maxsize=limits.current().cache_mb * 2**20 // 2,
                               getsizeof=lambda value: max(_ENTRY_FLOOR, held_bytes(value)))


def keep(cache, key, value, lock) -> None:
    """Store in a byte-bounded cache; a value larger than the whole cache is simply not kept."""
    with lock:
        try:
            cache[key] = value
        except ValueError:  # cachetools: larger than maxsize
            cache.pop(key, None)


def held_bytes(value, _seen: set | None = None) -> int:
    """Bytes of the numpy arrays a record holds (fields, nested records, tuples, dicts), each array once."""
    seen = set() if _seen is None else _seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(held_bytes(v, seen) for v in value)
    if isinstance(value, dict):
        return sum(held_bytes(v, seen) for v in value.values())
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sum(held_bytes(v, seen) for v in vars(value).values())
    return 0


def check_outputs_writable(outputs: Path) -> Path:
    """At start: the results folder exists (or is made) and takes a file, else one line and no server."""
    outputs = Path(outputs).expanduser().resolve()
    try:
        outputs.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=outputs, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise FluxDepthError(f"the outputs folder {outputs} is not writable ({exc.strerror}); pick another with "
                             "--outputs") from None
    return outputs


def check_free_space(studio: Studio) -> None:
    folder = studio.outputs  # or the nearest folder above it that exists (it is made with the first result)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < studio.policy.min_free_mb * 1024 * 1024:
        raise FluxDepthError(f"the server's disk is almost full ({free / 2**20:.0f} MB free); nothing was generated, "
                             "tell the host")


def shot_from_form(form: dict):
    """The shot of a settings record (the page's form, an API call, a history entry): the app's own keys first (Random
    seed, the style LoRA slots), then the one codec (settings.shot_from_form) for everything else."""
    from ..settings import shot_from_form as decode

    values = dict(form)
    if values.get("randomize"):
        values["seed"] = None
    values["loras"] = loras_from_form(form)
    return decode(values)


def depth_from_form(form: dict) -> DepthSettings:
    """The depth half of a settings record (the single-frame form, a preset, an API call)."""
    from ..settings import shot_from_form as decode

    return decode(form).depth


def run_preview(studio: Studio, path: str, settings: DepthSettings, log_histogram: bool = False,
                session: str | None = None) -> DepthPreview:
    """The control map for these settings. The session's last one is kept: Generate feeds the model exactly the map
    the artist saw, without normalizing again."""
    depth = studio.load_depth(path, settings.channel)
    preview = prepare_loaded(depth, settings, log_histogram)
    if session is not None:
        keep(studio.previews, session, (path, settings, preview), studio._lock)
    return preview


def recall_preview(studio: Studio, session: str | None, path: str, settings: DepthSettings) -> DepthPreview | None:
    with studio._lock:
        kept = studio.previews.get(session)
    if kept and kept[0] == path and kept[1] == settings:
        return kept[2]
    return None


def write_control_png(studio: Studio, session: str | None, result: DepthPreview, keep: int = 4,
                      folder: Path | None = None) -> str:
    """16-bit PNG of the control map in the session's scratch folder (or `folder`); older previews are pruned."""
    folder = folder or studio.workspace.folder(session, "previews")
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
    # One column name whatever the scale (the plot keeps its x field); the axis title says which.
    raw_df = pd.DataFrame({"value": centers.round(6), "pixels": raw.counts, "range": zone})
    raw_df.attrs["unit"] = "log10(value)" if raw.log else "value"
    ctl = result.control_histogram
    control_df = pd.DataFrame({"level": ctl.centers().round(4), "pixels": ctl.counts})
    return raw_df, control_df


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~&])")


def md_text(text: str) -> str:
    """Text from a file or a visitor (channel names, file names, preset names) shown literally in a Markdown
    component: every character Markdown or HTML would act on is escaped, so no markup or remote image is rendered."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))


def stats_markdown(result: DepthPreview) -> str:
    s = result.stats
    lines = [f"**{md_text(s.summary())}**"]
    if s.raw_clip:
        far, near = s.raw_clip
        lines.append(f"Far end ↔ near end in file units: {far:.4g} ↔ {near:.4g}")
    lines += [f"- ⚠ {md_text(w)}" for w in s.warnings]
    return "\n\n".join(lines[:2]) + ("\n\n" + "\n".join(lines[2:]) if len(lines) > 2 else "")


def channel_choices(result: DepthPreview) -> list[str]:
    return [AUTO_CHANNEL, *result.depth.channels]


def file_channels(path: str) -> list[str]:
    """Every channel of every part, for the Channel menu when no depth channel was found by name (the rescue)."""
    from ..depth import read_raster

    try:
        return [AUTO_CHANNEL, *read_raster(path).names()]
    except FluxDepthError:
        return [AUTO_CHANNEL]


# --- photo -> depth ----------------------------------------------------------------------------------------------


def estimate_photo_depth(studio: Studio, session: str | None, photo) -> str:
    """Estimate depth from a photo and save it as a float NPY the preview reads like any depth file."""
    from ..pipeline.depth_estimation import DepthEstimator

    if photo is None:
        from ..depth import DepthInputError

        raise DepthInputError("add a photo first")
    if studio.estimator is None:
        if studio.manager.source.kind == "tiny":  # the tiny-random studio: a tiny estimator, nothing fetched
            from ..pipeline.tiny import build_tiny_depth_estimator

            studio.estimator = build_tiny_depth_estimator()
        else:
            studio.estimator = DepthEstimator()
    depth = studio.estimator.estimate(photo)
    values = depth.values
    span = float(values.max() - values.min()) or 1.0
    # A float NPY so the depth input shows a file the artist can download (min-max, near = white); the preview and
    # Generate read the estimate itself, which keeps its polarity (near_is_bright), not this file.
    path = studio.workspace.folder(session, "photos") / f"photo-depth-{time.time_ns()}.npy"
    np.save(path, ((values - values.min()) / span).astype(np.float32))
    studio.remember_made(str(path), depth)
    return str(path)


# --- generation --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationOutcome:
    png: str
    sidecar: str
    control_png: str
    metadata: dict
    message: str
    extras: dict = field(default_factory=dict)  # format -> path: 16-bit PNG / EXR copies


def run_generate(studio: Studio, session: str | None, path: str, shot, variant: str | None = None, *,
                 init_image=None, init_image_name: str | None = None, on_step=None, load_progress=None, formats=(),
                 backend: str = "local", owner: str | None = None, mask=None, on_preview=None) -> GenerationOutcome:
    """One image of `shot` (settings.ShotSettings) on the studio's model (or BFL's API), saved in the session's
    results folder; its seed settled here when the shot leaves it to chance."""
    from ..depth.readers import read_rgb_image
    from ..image_files import check_formats
    from ..shot import render_shot

    manager = studio.manager
    formats = check_formats(formats)
    generation = shot.generation.settled()
    settings = shot.depth
    manager.lora_files(generation.loras)  # names from the studio's LoRA folder only, checked before any work
    if backend not in ("local", "bfl") or (backend == "bfl" and studio.bfl is None):
        raise FluxDepthError("this studio renders on its own model only; choose the local backend")
    if backend == "bfl":
        from ..bfl import check_settings

        check_settings(generation, init_image)  # before any work: BFL's own bounds
    variant = variant or manager.variant
    studio.policy.check_tier(variant)
    # Kept for the session too, so the next image of a batch (or a second Generate) reuses it.
    preview = recall_preview(studio, session, path, settings) or run_preview(studio, path, settings, session=session)
    if isinstance(init_image, str):
        init_image = read_rgb_image(init_image)
    mask, mask_name = read_mask(mask, init_image, backend)
    check_free_space(studio)
    switched = backend == "local" and manager.variant != variant
    if backend == "local":
        manager.configure(variant=variant)  # serialized: generations share one GPU slot
    cancel = studio.cancel_event(session)  # armed when the job was asked for (Studio.arm_cancel)
    stem = studio.unique_stem(readable_stem(generation.prompt, generation.seed))
    # When the results folder fails, the image goes to the session's scratch folder: it is never lost.
    fallback = studio.workspace.folder(session, "unsaved")
    try:
        folder = studio.session_dir(results_owner(owner, session))
    except FluxDepthError:
        log.exception("could not make a results folder under %s", studio.outputs)
        folder = fallback
    made = render_shot(studio.bfl if backend == "bfl" else manager, path, replace(shot, generation=generation),
                       str(folder / f"{stem}.png"),
                       preview=preview, init_image=init_image, init_image_name=init_image_name,
                       fallback_dir=str(fallback), on_step=on_step, cancel=cancel, load_progress=load_progress,
                       formats=formats, mask=mask, mask_name=mask_name,
                       **live_preview(studio, on_preview if backend == "local" else None))
    meta = made.metadata.to_dict()
    unsaved = not made.saved or folder == fallback
    if unsaved:  # API callers see it in the metadata they get back
        meta["notes"] = [*meta["notes"], "the results folder could not be written: this image is not kept on "
                                          "the server, save it now"]
    message = (f"seed **{meta['seed']}** · {meta['width']}×{meta['height']} · {meta['steps']} steps · "
               f"guidance {meta['guidance']:g} · {meta['variant']} · {meta['seconds']:.1f} s")
    if switched:
        message += f"\n\nThe model was switched to **{variant}** (for every visitor of this server)."
    if unsaved:
        message += "\n\n⚠ The results folder could not be written: **download this image now**, it is not kept."
    notes = [n for n in meta["notes"] if not n.startswith("the results folder could not be written")]
    if notes:
        message += "\n\n⚠ " + " · ".join(md_text(n) for n in notes)
    return GenerationOutcome(made.png, made.sidecar, made.control_png, meta, message, dict(made.extras))


def set_vram_budget(studio: Studio, value) -> str:
    """The app's VRAM budget box: GiB, "auto" or empty (none). Applies from the next Generate (the model reloads)."""
    from ..pipeline.budget import parse_budget

    if studio.policy.shared:
        raise FluxDepthError("the VRAM budget is the host's setting on a shared server")
    budget = parse_budget(value)
    changed = studio.manager.configure(vram_budget=budget)
    shown = "none" if budget is None else (budget if isinstance(budget, str) else f"{budget:g} GiB")
    return (f"VRAM budget: **{shown}**" + (" · the model reloads with it on the next Generate" if changed else ""))


def set_vram_headroom(studio: Studio, value) -> str:
    """The app's headroom box: GiB left to other programs (Houdini). No reload: the next image re-plans to it."""
    from ..settings import parse_vram_headroom

    if studio.policy.shared:
        raise FluxDepthError("the VRAM headroom is the host's setting on a shared server")
    headroom = parse_vram_headroom(value)
    studio.manager.configure(vram_headroom=headroom)
    return f"VRAM headroom: **{headroom:g} GiB** kept free for other programs · applies from the next image"


def read_mask(mask, init_image, backend: str) -> tuple:
    """(the mask as a greyscale image, its name) for fixing one region, or (None, None) without one: white in the
    mask is regenerated (docs/inpaint.md)."""
    from ..depth.readers import read_rgb_image

    if mask is None:
        return None, None
    if init_image is None:
        raise FluxDepthError("a mask marks a region of an image: send the image (init_image) with it")
    if backend != "local":
        raise FluxDepthError("fixing one region runs on this studio's model only; choose the local backend")
    name = "mask"
    if isinstance(mask, str):
        name = os.path.basename(mask)
        mask = read_rgb_image(mask, "mask")
    return mask.convert("L"), name


def live_preview(studio: Studio, on_preview) -> dict:
    """The shot service's live-preview arguments: none when the studio's preview is off or nobody shows it."""
    if on_preview is None or not studio.live_preview_every:
        return {}
    return {"on_preview": on_preview, "preview_every": studio.live_preview_every}


def generate_from_form(studio: Studio, session: str | None, form: dict, on_step=None,
                       load_progress=None, on_preview=None) -> GenerationOutcome:
    """Generate from one settings record. `depth_file` and `init_image` must already be files this client may open
    (sharing.UploadGate)."""
    init = form.get("init_image")
    return run_generate(studio, session, form["depth_file"], shot_from_form(form), form.get("variant"),
                        init_image=init, init_image_name=os.path.basename(init) if init else None, on_step=on_step,
                        load_progress=load_progress, formats=form.get("also_save") or (),
                        backend=form.get("backend") or "local", owner=form.get("owner"), mask=form.get("mask"),
                        on_preview=on_preview)


def loras_from_form(form: dict) -> tuple:
    """Style LoRAs of a settings record: the app's slots (lora_1 + lora_1_scale, ...) or an API list of
    'NAME[:SCALE]' strings or {"name", "scale"} records. Empty slots are skipped."""
    from ..settings import StyleLora

    if form.get("loras"):
        items = form["loras"]
        if isinstance(items, (str, dict)):
            items = [items]
        if not isinstance(items, (list, tuple)):
            raise FluxDepthError("loras must be a list of \"NAME\" or \"NAME:SCALE\" strings")
        return tuple(StyleLora.from_value(item) for item in items)
    chosen = []
    index = 1
    while f"lora_{index}" in form:  # as many slots as the form has (defaults.STYLE_LORA_SLOTS in the app)
        name = form[f"lora_{index}"]
        if name:
            chosen.append(StyleLora(name, form.get(f"lora_{index}_scale", 1.0)))
        index += 1
    return tuple(chosen)


MAX_BATCH = 8


def batch_seeds(form: dict) -> list[int | None]:
    """The seeds of a batch ("Images" > 1): from a fixed seed, that seed and the next ones (reproducible);
    with "Random seed", a fresh draw for each image."""
    count = int(check_number("images", form.get("batch") or 1, 1, MAX_BATCH, whole=True))
    seed = shot_from_form({"seed": form.get("seed"), "randomize": form.get("randomize")}).generation.seed
    if seed is None:
        return [None] * count
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]  # past the last seed, on from 0


def generate_batch_from_form(studio: Studio, session: str | None, form: dict, on_step=None,
                             load_progress=None, on_preview=None) -> list[GenerationOutcome]:
    """One image per seed of `batch_seeds`; the model loads once and the depth map is normalized once."""
    outcomes = []
    for seed in batch_seeds(form):
        outcomes.append(generate_from_form(studio, session, {**form, "seed": seed, "randomize": seed is None},
                                           on_step, load_progress, on_preview))
    return outcomes


# --- the queue: shots that render one after another (docs/queue.md) -------------------------------------------------

MAX_QUEUED = 8  # shots one browser may have waiting (a shared studio: per visitor, beside gradio's own queue bound)


@dataclass
class QueuedShot:
    ident: int
    form: dict  # the settings record as it was when queued (depth file already resolved to this client's upload)
    label: str


@dataclass
class ShotQueue:
    """One browser's shots: the one rendering, then the waiting ones in order. Thread-safe."""

    waiting: list = field(default_factory=list)
    running: QueuedShot | None = None
    next_ident: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, form: dict) -> QueuedShot:
        shot = shot_from_form(form)  # every value checked now: a typo is refused here, not when its turn comes
        batch_seeds(form)
        seed = "random seed" if shot.generation.seed is None else f"seed {shot.generation.seed}"
        prompt = " ".join(shot.generation.prompt.split())
        label = (prompt[:48] + "…" if len(prompt) > 48 else prompt) or "(no prompt)"
        with self.lock:
            if len(self.waiting) >= MAX_QUEUED:
                raise FluxDepthError(f"{MAX_QUEUED} shots are already waiting: let one finish or remove one from "
                                     "the queue")
            queued = QueuedShot(self.next_ident, dict(form), f"{label} · {seed}")
            self.next_ident += 1
            self.waiting.append(queued)
            return queued

    def remove(self, ident: int) -> bool:
        """Take a waiting shot out (the one rendering is stopped with Cancel instead)."""
        with self.lock:
            kept = [q for q in self.waiting if q.ident != ident]
            removed = len(kept) != len(self.waiting)
            self.waiting = kept
            return removed

    def clear(self) -> int:
        with self.lock:
            count, self.waiting = len(self.waiting), []
            return count

    def start_next(self) -> QueuedShot | None:
        """The next shot, now rendering; None when nothing waits (or another runner is on it)."""
        with self.lock:
            if self.running is not None or not self.waiting:
                return None
            self.running = self.waiting.pop(0)
            return self.running

    def done(self) -> None:
        with self.lock:
            self.running = None

    def rows(self) -> list[list]:
        """The queue as the page lists it: place, shot, state."""
        with self.lock:
            rows = [] if self.running is None else [["▶", self.running.label, "rendering"]]
            rows += [[str(place), q.label, "next" if place == 1 else "waiting"]
                     for place, q in enumerate(self.waiting, start=1)]
            return rows

    def choices(self) -> list[tuple[str, int]]:
        with self.lock:
            return [(f"{place}. {q.label}", q.ident) for place, q in enumerate(self.waiting, start=1)]


# --- history: the results on disk, across reloads and restarts (docs/outputs.md) -------------------------------------

# A browser's own key (gr.BrowserState): its results folder on a shared studio, so its history is its own.
OWNER_KEY = re.compile(r"^[A-Za-z0-9_-]{22,43}$")
HISTORY_PAGE = 12
HISTORY_SCAN = 2000  # results looked at for one page, newest first (the rest are older than anyone pages to)


def new_owner_key(current=None) -> str:
    """The browser's key, made once: secrets' 128 random bits, kept in the browser, sent with each Generate."""
    import secrets

    return current if isinstance(current, str) and OWNER_KEY.match(current) else secrets.token_urlsafe(16)


def browser_secret(outputs: Path) -> str:
    """The key gradio encrypts what a browser keeps (its settings, its results key) with: kept in the outputs folder
    (readable by this user only), so a restarted server still reads what browsers stored. Random per start when the
    folder cannot hold it (then History and remembered settings last until the restart)."""
    import secrets

    path = Path(outputs) / ".fluxdepth-browser-secret"
    for _ in range(2):
        try:
            text = path.read_text().strip()
            if len(text) >= 32:
                return text
            path.unlink()  # damaged: made again
        except FileNotFoundError:
            pass
        except OSError:
            break
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        except FileExistsError:
            continue  # another process made it first: read theirs
        except OSError:
            break
    log.warning("cannot keep the browser secret in the outputs folder; browsers forget their keys on restart")
    return secrets.token_urlsafe(32)


def results_owner(owner, session: str | None) -> str | None:
    """Whose results folder an image goes to: the browser's key when it sent a valid one, else its session."""
    return owner if isinstance(owner, str) and OWNER_KEY.match(owner) else session


def list_history(studio: Studio, owner, page: int = 0) -> tuple[list[dict], int, int]:
    """One page of results on disk, newest first: (entries, page, pages). A local studio shows every result in its
    outputs folder (the artist's own machine); a shared one only this browser's (its key's folder). Each entry has
    the settings record that restores it (the shot's settings from its sidecar)."""
    import json

    if studio.policy.shared:
        key = results_owner(owner, None)
        folders = [studio.outputs / key] if key else []
    else:
        folders = [studio.outputs, *(p for p in _subfolders(studio.outputs))]
    found = []
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
                        found.append((entry.stat().st_mtime, entry.path))
        except OSError:
            continue
    found.sort(reverse=True)
    found = found[:HISTORY_SCAN]
    pages = max(1, -(-len(found) // HISTORY_PAGE))
    page = min(max(0, int(page)), pages - 1)
    entries = []
    for _, sidecar in found[page * HISTORY_PAGE:(page + 1) * HISTORY_PAGE]:
        png = sidecar[:-5] + ".png"
        try:
            with open(sidecar) as fh:
                data = json.load(fh)
            record = history_record(data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError, FluxDepthError):
            continue  # not a result of this app, or damaged: not listed
        if os.path.isfile(png):
            entries.append({"png": png, "sidecar": sidecar, "caption": f"seed {data.get('seed')} · "
                                                                        f"{str(data.get('prompt', ''))[:40]}",
                            "settings": record})
    return entries, page, pages


def _subfolders(root: Path):
    try:
        with os.scandir(root) as entries:
            return [Path(e.path) for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def history_record(sidecar: dict) -> dict:
    """The app's settings record of a result, from its sidecar: the shot's settings through the codec, its tier and
    style LoRAs in the app's slots. Only what the sidecar says: the depth file and init image stay as they are."""
    from ..defaults import LORA_SLOTS
    from ..settings import ShotSettings, form_from_shot

    shot = ShotSettings.from_dict(sidecar["shot"])
    record = {k: v for k, v in form_from_shot(shot).items() if k != "loras"}
    record.update(variant=sidecar.get("variant"), randomize=False, batch=1,
                  also_save=sorted((sidecar.get("extra_files") or {}).keys()))
    loras = list(shot.generation.loras)
    for index, (name, scale) in enumerate(LORA_SLOTS):
        lora = loras[index] if index < len(loras) else None
        record[name], record[scale] = (lora.name, lora.scale) if lora else (None, 1.0)
    return {k: v for k, v in record.items() if v is not None or k.startswith("lora_")}


def region_to_fix(studio: Studio, session: str | None, editor) -> tuple[str, str]:
    """The app's "Fix a region" editor (gradio ImageEditor, numpy) -> (image file, mask file) in the session's
    scratch: the result it shows, and white wherever the artist painted (any layer)."""
    from PIL import Image

    editor = editor or {}
    background = editor.get("background")
    if background is None or getattr(background, "size", 0) == 0:
        raise FluxDepthError("no image to fix yet: generate one, then click \"Fix a region of this result\"")
    painted = np.zeros(background.shape[:2], dtype=bool)
    for layer in editor.get("layers") or []:
        if layer is not None and layer.ndim == 3 and layer.shape[:2] == painted.shape:
            painted |= layer[..., 3] > 0 if layer.shape[2] == 4 else layer.max(axis=2) > 0
    if not painted.any():
        raise FluxDepthError("paint over the region to regenerate first (the brush), then Regenerate region")
    folder = studio.workspace.folder(session, "fix")
    image, mask = folder / "image.png", folder / "mask.png"
    Image.fromarray(np.ascontiguousarray(background[..., :3]).astype(np.uint8)).save(image)
    Image.fromarray(painted.astype(np.uint8) * 255).save(mask)
    return str(image), str(mask)


# --- sequences ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSetup:
    folder: str
    frames: list
    stats: object  # SequenceStats
    previews: list[str]  # control PNGs of the first, middle and last frame under the shared range
    summary: str
    channels: tuple[str, ...] = (AUTO_CHANNEL,)  # the Channel menu: "auto" and every channel of the first frame


def stage_sequence(studio: Studio, session: str | None, files: list) -> tuple[str, tuple[str, ...]]:
    """Uploaded frames (several files, or one zip) -> one scratch folder, made once per upload.

    Returns the folder and the names of files that were left out because they are not depth files.
    """
    from ..archive import extract_depth_members, is_zip
    from ..depth import DepthInputError
    from ..depth.readers import sniff_format
    from ..errors import display_name

    paths = [str(f["path"] if isinstance(f, dict) else f) for f in (files or [])]
    if not paths:
        raise DepthInputError("add the frames of the sequence (several depth files, or one zip)")
    most = limits.current().frames
    if len(paths) > most:
        raise DepthInputError(f"{len(paths)} files is above the limit of {most} frames a sequence; send fewer")

    def unpack(folder: Path):
        skipped: list[str] = []
        for path in paths:
            check_regular_file(path)
            if is_zip(path):
                skipped += extract_depth_members(path, str(folder)).skipped
                continue
            try:
                sniff_format(path)
            except DepthInputError:
                skipped.append(display_name(path))
                continue
            shutil.copy(path, folder / safe_member_name(os.path.basename(path)))
        return str(folder), tuple(skipped)

    key = tuple((p, os.stat(p).st_size) for p in paths)
    return studio.workspace.staged(session, key, unpack)


def gather_sequence(studio: Studio, session: str | None, files: list, settings: DepthSettings,
                    seed: int | None) -> SequenceSetup:
    """Stage the upload (once), check the frames and compute the shared range and the three previews."""
    from ..depth import prepare_depth
    from ..sequence import check_frames, compute_stats, find_frames

    folder, skipped = stage_sequence(studio, session, files)
    try:
        frames = check_frames(find_frames(folder))
        stats = compute_stats(frames, settings, folder, seed=seed)
    except FluxDepthError:
        studio.workspace.discard(session, folder)  # a refused upload leaves no files behind (issue 24)
        raise
    shared = DepthSettings(channel=settings.channel, normalize=settings.normalize, long_side=settings.long_side,
                           fixed_range=stats.range)
    previews = []
    preview_dir = studio.workspace.folder(session, "sequence-previews")
    for frame in (frames[0], frames[len(frames) // 2], frames[-1]):
        result = prepare_depth(frame.path, shared)
        out = preview_dir / f"preview-{time.time_ns()}-{frame.number:04d}.png"
        write_preview_png(result.control, str(out), compress_level=1)
        previews.append(str(out))
    r = stats.range
    summary = (f"**{len(frames)} frames** ({frames[0].number}–{frames[-1].number}), "
               f"{stats.resolution[0]}×{stats.resolution[1]} · one range for all: mode {r.mode}, "
               f"{r.low:.4g} … {r.high:.4g}{', inverted' if r.inverted else ''}")
    if skipped:
        shown = ", ".join(skipped[:5]) + (" …" if len(skipped) > 5 else "")
        summary += f"\n\n⚠ left out {len(skipped)} file(s) that are not depth maps: {md_text(shown)}"
    return SequenceSetup(folder, frames, stats, previews, summary, tuple(file_channels(frames[0].path)))


def sequence_channels(studio: Studio, session: str | None, files: list) -> list[str]:
    """Every channel of the upload's first frame, for the Channel menu when the sequence cannot be read as is."""
    from ..sequence import find_frames

    try:
        folder, _ = stage_sequence(studio, session, files)
    except FluxDepthError:
        return [AUTO_CHANNEL]
    try:
        frames = find_frames(folder)
        return file_channels(frames[0].path) if frames else [AUTO_CHANNEL]
    except FluxDepthError:
        return [AUTO_CHANNEL]
    finally:
        studio.workspace.discard(session, folder)  # only called after a refusal: nothing of it is kept


@dataclass(frozen=True)
class SequenceDone:
    report: object  # sequence.SequenceReport
    video: str
    control_video: str
    seed: int
    stats_file: str
    archive: str  # one zip of the whole output folder: "download all"


def run_sequence(studio: Studio, session: str | None, setup: SequenceSetup, shot, variant: str, fps: float,
                 on_frame=None, on_step=None, formats=(), load_progress=None) -> SequenceDone:
    """Render every frame of `shot` (settings.ShotSettings) with the shared range and seed, then the result and
    control-map videos and one zip of everything (frames, sidecars, control maps, the formats asked for, videos,
    stats)."""
    from ..image_files import check_formats
    from ..sequence import render_sequence, save_stats, settle_seed, write_video

    formats = check_formats(formats)
    fps = check_number("fps", fps, 1, 120)  # checked before any frame renders, not when the video is written
    stats = settle_seed(setup.stats)
    generation = replace(shot.generation, seed=stats.seed)
    settings = shot.depth
    studio.manager.lora_files(generation.loras)  # the studio's folder only, checked before any frame renders
    studio.policy.check_tier(variant)
    studio.manager.configure(variant=variant)
    check_free_space(studio)
    cancel = studio.cancel_event(session)  # armed when the job was asked for (Studio.arm_cancel)
    out_dir = str(studio.session_dir(session) / f"sequence-{time.strftime('%Y%m%d-%H%M%S')}")
    farm = studio.farm or {}
    report = render_sequence(studio.manager, setup.frames, stats, settings, generation, out_dir,
                             on_frame=on_frame, on_step=on_step, cancel=cancel, formats=formats,
                             load_progress=load_progress, workers=farm.get("workers", 0),
                             address=farm.get("address"))
    if report.failed:
        raise FluxDepthError(f"{report.failure_line()} on the cluster; the other frames are saved: render again to "
                             "retry only those")
    video = write_video(report.outputs, os.path.join(out_dir, "sequence.mp4"), fps)
    control_video = write_video(report.controls, os.path.join(out_dir, "sequence_control.mp4"), fps)
    stats_file = os.path.join(out_dir, "sequence_stats.json")
    save_stats(stats, stats_file)
    archive = shutil.make_archive(out_dir, "zip", root_dir=os.path.dirname(out_dir),
                                  base_dir=os.path.basename(out_dir))
    return SequenceDone(report, video, control_video, stats.seed, stats_file, archive)
