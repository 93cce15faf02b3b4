"""The one shot service: a depth file + shot settings -> control map, image and its files on disk.

The CLI, the app, both API endpoints and every sequence frame call `render_shot`, so a shot gives the same files
whichever way it was asked for: the 16-bit control PNG, the image PNG with its settings inside, and the JSON sidecar,
each written atomically, the sidecar last (a sidecar on disk means the shot is whole; docs/sharing.md).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace

from .depth import DepthPreview, prepare_depth
from .errors import FluxDepthError
from .settings import ShotSettings, refine_steps

# A plate's first pass: about the pixel count FLUX.1 was trained at (docs/plates.md).
PLATE_FIRST_MEGAPIXELS = 1.0


@dataclass(frozen=True)
class ShotResult:
    image: object  # PIL.Image.Image
    metadata: object  # pipeline.GenerationMetadata
    preview: DepthPreview
    png: str
    sidecar: str
    control_png: str
    saved: bool = True  # False: the outputs folder failed; the files are in the fallback folder instead
    extras: dict = field(default_factory=dict)  # format -> path of the 16-bit PNG / EXR copies (image_files.py)


def file_digest(path: str) -> str:
    """The depth file's bytes, hashed: the same pass gives the same shot key wherever it was copied or uploaded."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shot_key(depth_digest: str, settings: ShotSettings, model: str, variant: str,
             lora_digests: tuple[str, ...] = ()) -> str:
    """What a finished shot depends on. A sequence frame whose sidecar carries this key is not rendered again.
    A style LoRA counts by its file's bytes, not only its name."""
    payload = {"depth": depth_digest, "settings": settings.to_dict(), "model": model, "variant": variant}
    if lora_digests:
        payload["lora_files"] = list(lora_digests)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def default_control_path(png: str) -> str:
    return os.path.splitext(png)[0] + "-control.png"


def expected_key(manager, depth_path: str, settings: ShotSettings) -> str:
    """The key `render_shot` will record for these inputs (the seed must be settled already)."""
    return shot_key(file_digest(depth_path), settings, manager.source.key, manager.variant,
                    manager.lora_digests(settings.generation.loras))


def render_shot(manager, depth_path: str, settings: ShotSettings, out_png: str, *,
                preview: DepthPreview | None = None, key: str | None = None, control_png: str | None = None,
                init_image=None,
                init_image_name: str | None = None, fallback_dir: str | None = None, on_step=None, cancel=None,
                load_progress=None, formats: tuple[str, ...] = (), mask=None,
                mask_name: str | None = None, on_preview=None, preview_every: int = 0) -> ShotResult:
    """Render one shot and write its files.

    1. The control map: `preview` when the caller already made it with these settings (the artist saw it),
       else read and normalized here.
    2. The seed is settled (drawn when unset) before anything is keyed on it; `key` is the `expected_key` when the
       caller computed it already (a sequence checks it to skip finished frames), so the depth file is hashed once.
    3. Generate: text-to-image, img2img from `init_image`, or only the region `mask` marks (white) on it;
       `on_preview(step, total, image)` every `preview_every` steps (the live preview, pipeline/preview.py).
    4. Write the control PNG, the image PNG, the `formats` copies from the float decode (png16, exr), then the
       sidecar. When the outputs folder fails after the image exists, the files go to `fallback_dir` (if given)
       and `saved` is False: the image is never lost.
    """
    from .image_files import check_formats

    formats = check_formats(formats)
    if preview is None:
        preview = prepare_depth(depth_path, settings.depth)
    settings = replace(settings, generation=settings.generation.settled())
    key = key or expected_key(manager, depth_path, settings)
    first_side = plate_first_side(preview.control.width, preview.control.height)
    if settings.generation.plate and init_image is None and first_side is not None:
        result = _render_plate(manager, depth_path, settings, preview, first_side, on_step, cancel, load_progress,
                               (on_preview, preview_every))
    else:
        masked = {"mask": mask, "mask_name": mask_name} if mask is not None else {}  # fix one region (inpaint)
        if on_preview is not None:  # the local model's live preview (BFL's API has none)
            masked.update(on_preview=on_preview, preview_every=preview_every)
        result = manager.generate(preview.control, settings.generation, init_image=init_image,
                                  init_image_name=init_image_name, depth=preview.stats, on_step=on_step,
                                  cancel=cancel, load_progress=load_progress, **masked)
    metadata = replace(result.metadata, shot_key=key, depth_crop=tuple(preview.control.crop),
                       depth_edges=preview.stats.edges)
    if settings.generation.plate and not metadata.passes:
        why = "an init image was given" if init_image is not None else "the image is about 1 MP already"
        metadata = replace(metadata, notes=(*metadata.notes, f"plate: one pass ({why})"))
    control_png = control_png or default_control_path(out_png)
    try:
        png, sidecar, extras = _write(result, metadata, preview, out_png, control_png, formats, settings)
        return ShotResult(result.image, metadata, preview, png, sidecar, control_png, extras=extras)
    except OSError as exc:
        if fallback_dir is None:
            raise FluxDepthError(f"cannot write {os.path.basename(out_png)} ({exc.strerror or 'write failed'}); "
                                 "free disk space or choose another output folder") from None
    png = os.path.join(fallback_dir, os.path.basename(out_png))
    control_png = os.path.join(fallback_dir, os.path.basename(control_png))
    png, sidecar, extras = _write(result, metadata, preview, png, control_png, formats, settings)
    return ShotResult(result.image, metadata, preview, png, sidecar, control_png, saved=False, extras=extras)


def plate_first_side(width: int, height: int) -> int | None:
    """The first pass's long side for a plate of this size: about PLATE_FIRST_MEGAPIXELS at the same aspect, in
    multiples of 16; None when the plate is that size already (one pass is the whole job)."""
    import math

    long_side, short_side = max(width, height), min(width, height)
    side = int(round(math.sqrt(PLATE_FIRST_MEGAPIXELS * 2**20 * long_side / short_side) / 16)) * 16
    return side if side < long_side * 0.9 else None


def _render_plate(manager, depth_path: str, settings: ShotSettings, preview: DepthPreview, first_side: int,
                  on_step, cancel, load_progress, live: tuple = (None, 0)):
    """A plate in one call: 1. the control map at about 1 MP from the same file and settings (the same reader and
    normalization, only the size differs) and a first image from it; 2. that image, upscaled, refined at the full
    size with the full-size control map (img2img at plate_strength). Both passes are in the metadata."""
    generation = settings.generation
    small = prepare_depth(depth_path, replace(settings.depth, long_side=first_side))
    second = replace(generation, strength=generation.plate_strength)
    first_steps, second_steps = generation.steps, refine_steps(generation.steps, generation.plate_strength)
    total = first_steps + second_steps

    on_preview, every = live

    def progress(offset):
        return None if on_step is None else (lambda step, _n: on_step(offset + step, total))

    def previews(offset):  # the local model's live preview (BFL's API has none)
        if on_preview is None:
            return {}
        return {"on_preview": lambda step, _n, image: on_preview(offset + step, total, image), "preview_every": every}

    first = manager.generate(small.control, generation, depth=small.stats, on_step=progress(0), cancel=cancel,
                             load_progress=load_progress, **previews(0))
    result = manager.generate(preview.control, second, init_image=first.image, init_image_name="plate first pass",
                              depth=preview.stats, on_step=progress(first_steps), cancel=cancel,
                              load_progress=load_progress, **previews(first_steps))
    passes = ({"pass": 1, "width": first.metadata.width, "height": first.metadata.height, "steps": first_steps,
               "vae_tiling": first.metadata.vae_tiling},
              {"pass": 2, "width": result.metadata.width, "height": result.metadata.height, "steps": second_steps,
               "strength": generation.plate_strength, "vae_tiling": result.metadata.vae_tiling})
    seconds = round(first.metadata.seconds + result.metadata.seconds, 3)
    return replace(result, metadata=replace(result.metadata, passes=passes, seconds=seconds))


def _write(result, metadata, preview: DepthPreview, png: str, control_png: str,
           formats: tuple[str, ...], settings: ShotSettings) -> tuple[str, str, dict]:
    from .outputs import write_shot

    return write_shot(result, metadata, preview.control, png, control_png, formats, settings)
