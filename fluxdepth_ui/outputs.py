"""A shot's files, written in one place (torch-free): the image with what produced it in its text chunks, the JSON
sidecar, the control map and the extra copies (16-bit PNG, EXR). docs/outputs.md."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from PIL import Image, PngImagePlugin

from . import __version__
from .atomic import atomic_path, write_text

PNG_KEY = "fluxdepth"


@dataclass(frozen=True)
class GenerationMetadata:
    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    variant: str
    model: str
    revision: str
    strength: float | None = None  # img2img only
    init_image: str | None = None
    depth_file: str | None = None
    depth_channel: str | None = None
    depth_mode: str | None = None
    depth_inverted: bool | None = None
    depth_range: dict | None = None
    placement: str | None = None
    compiled: bool = False  # torch.compile'd transformer: same seed, pixels differ slightly from an eager run
    device: str | None = None
    seconds: float | None = None
    app_version: str = __version__
    notes: tuple[str, ...] = field(default=())
    depth_crop: tuple[int, int, int, int] | None = None  # px cut from the control map to keep the aspect
    depth_edges: str | None = None
    shot_key: str | None = None  # the depth file's bytes + every setting + model + tier (shot.shot_key)
    memory_plan: str | None = None  # under a VRAM budget: what was resident, what streamed (pipeline/budget.py)
    loras: tuple[dict, ...] = ()  # style LoRAs: name, scale, sha256 of the file (pipeline/loras.py)
    vae_tiling: bool = False  # the decode ran in tiles (2K under a small budget; docs/plates.md)
    passes: tuple[dict, ...] = ()  # a plate's two passes: size, steps, strength (shot.py)
    inpaint_mask: str | None = None  # the mask of a fixed region (white = regenerated), with init_image

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        d["loras"] = [dict(lora) for lora in self.loras]
        d["passes"] = [dict(p) for p in self.passes]
        for name, default in (("loras", []), ("passes", []), ("vae_tiling", False), ("inpaint_mask", None)):
            if d[name] == default:  # files that do not use them keep the bytes they had before these existed
                d.pop(name)
        return d

    def file_dict(self) -> dict:
        """What goes into the PNG and the sidecar: no wall-clock time, so the same shot gives the same bytes on
        any run (split sequence renders, farm workers, resumes compare files)."""
        d = self.to_dict()
        d.pop("seconds", None)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationMetadata":
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}
        data["notes"] = tuple(data.get("notes", ()))
        data["loras"] = tuple(dict(lora) for lora in data.get("loras", ()))
        data["passes"] = tuple(dict(p) for p in data.get("passes", ()))
        return cls(**data)

    def parameters_line(self) -> str:
        """A one-line summary, as other image tools put in their "parameters" chunk."""
        parts = [f"Steps: {self.steps}", f"Guidance: {self.guidance:g}", f"Seed: {self.seed}",
                 f"Size: {self.width}x{self.height}", f"Model: {self.model}", f"Variant: {self.variant}"]
        if self.strength is not None:
            parts.append(f"Strength: {self.strength:g}")
        if self.depth_file:
            parts.append(f"Depth: {self.depth_file} [{self.depth_channel}, {self.depth_mode}]")
        if self.loras:
            parts.append("LoRAs: " + ", ".join(f"{lora['name']}:{lora['scale']:g}" for lora in self.loras))
        return f"{self.prompt}\n" + ", ".join(parts)


def png_info(meta: GenerationMetadata) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(meta.file_dict()))
    info.add_itxt("parameters", meta.parameters_line())
    info.add_text("Software", f"FluxDepth Studio {meta.app_version}")
    return info


def save_result(image: Image.Image, meta: GenerationMetadata, path: str, extra: dict | None = None) -> tuple[str, str]:
    """Write the lossless PNG with metadata inside, then PATH.json beside it (with `extra` keys), each atomically.

    The sidecar is written last: a sidecar on disk means its PNG is whole (sequence resume relies on it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_info(meta))
    sidecar = os.path.splitext(path)[0] + ".json"
    write_text(sidecar, json.dumps({**meta.file_dict(), **(extra or {})}, indent=2))
    return path, sidecar


def read_metadata(path: str) -> GenerationMetadata | None:
    with Image.open(path) as img:
        raw = img.info.get(PNG_KEY)
    return GenerationMetadata.from_dict(json.loads(raw)) if raw else None


def write_shot(result, metadata: GenerationMetadata, control, png: str, control_png: str,
               formats: tuple[str, ...], settings=None) -> tuple[str, str, dict]:
    """Every file of one shot: the control map it was fed (16-bit PNG), the extra copies from the float decode, then
    the PNG and, last, its sidecar (which names the copies, so a resume knows which files a finished shot has, and
    holds the shot's settings, `settings.ShotSettings`, so the app's history restores them). Returns (png, sidecar,
    {format: path})."""
    from .depth import write_preview_png
    from .image_files import write_extras

    os.makedirs(os.path.dirname(os.path.abspath(control_png)), exist_ok=True)
    write_preview_png(control, control_png)
    extras = write_extras(result.pixels, png, formats, metadata.file_dict())
    named = {"extra_files": {f: os.path.basename(p) for f, p in extras.items()}} if extras else {}
    if settings is not None:  # style LoRAs by file name, as in the metadata: no folder of this machine is written
        shot = settings.to_dict()
        for lora in shot["generation"].get("loras", []):
            lora["name"] = os.path.basename(lora["name"])
        named["shot"] = shot
    png, sidecar = save_result(result.image, metadata, png, extra=named or None)
    return png, sidecar, extras


def readable_stem(prompt: str, seed: int, when: float | None = None) -> str:
    """A result's file name an artist can read in a folder: date and time, the prompt's first words, the seed
    ("20261207-143015-lighthouse-on-a-cliff-seed42")."""
    import re
    import time

    words = re.findall(r"[a-z0-9]+", prompt.lower())[:5]
    slug = "-".join(words)[:40].strip("-") or "image"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}-{slug}-seed{seed}"
