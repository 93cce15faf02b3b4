"""The settings schema: what a shot is made with, each value's default, bounds and check typed once.

- `GenerationSettings`: prompt, seed, steps, guidance, img2img strength.
- `ShotSettings`: the depth half (`depth.DepthSettings`) and the generation half of one shot.
- `PipelineSpec`: which model, tier and placement a pipeline manager loads.

Records are frozen; a bad value raises `SettingsError` (one line, the fix included) when the record is made, so a
record that exists is valid. `to_dict` / `from_dict` round-trip through JSON (presets, stats files, history, API).
No torch here: front ends import this before any model code.
"""

from __future__ import annotations

import math

import secrets
from dataclasses import asdict, dataclass, field, fields, replace

from . import limits
from .defaults import (
    DEFAULT_DEPTH_LORA_SCALE, DEFAULT_GUIDANCE, DEFAULT_MODEL, DEFAULT_STEPS, DEFAULT_STRENGTH, DEFAULT_VARIANT, PLACEMENTS,
    VARIANT_NAMES,
)
from .depth import DepthSettings, NormalizeSettings
from .errors import FluxDepthError

MAX_SEED = 2**32 - 1
MAX_STEPS = 100
MAX_GUIDANCE = 100.0
MAX_SEQUENCE_LENGTH = 512


class SettingsError(FluxDepthError, ValueError):
    """A setting out of its bounds; the message names the setting and its range."""


def check_number(name: str, value, low, high, *, whole: bool = False, optional: bool = False,
                 low_open: bool = False, hint: str = ""):
    """One message for every way a number can be wrong: not a number, NaN, fractional, out of range.

    Returns the value as int (whole) or float; None when optional and missing.
    """
    if value is None and optional:
        return None
    span = f"a value in ({low}, {high}]" if low_open else f"{low}..{high}"
    fix = f"use {span}" + (f" ({hint})" if hint else "")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a number, not {str(value)[:20]!r}; {fix}") from None
    if isinstance(value, bool) or not math.isfinite(number) or (whole and number != int(number)):
        raise SettingsError(f"{name} must be a {'whole ' if whole else ''}number; {fix}")
    if number < low or number > high or (low_open and number == low):
        raise SettingsError(f"{name} {value} is out of range; {fix}")
    return int(number) if whole else number


def parse_vram_budget(text) -> float | str | None:
    """A VRAM budget: 'auto', a size in GiB ('12', '12.5', '12GiB', '16gb'), or None (none; docs/vram.md)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    value = text
    if isinstance(text, str):
        value = text.strip().lower()
        if value == "auto":
            return "auto"
        for suffix in ("gib", "gb", "g"):
            if value.endswith(suffix):
                value = value[: -len(suffix)].strip()
                break
        try:
            float(value)
        except ValueError:
            raise SettingsError(f"VRAM budget {text[:20]!r} is not a size; give GiB (e.g. 12) or auto") from None
    return check_number("VRAM budget", value, 1.0, 4096.0, hint="GiB, or auto")


MAX_STYLE_LORAS = 4
VAE_TILING = ("auto", "on", "off")
DEFAULT_PLATE_STRENGTH = 0.35  # the second pass of a plate keeps the first pass's picture, adds the detail
LORA_SCALE_RANGE = (-4.0, 4.0)


@dataclass(frozen=True)
class StyleLora:
    """One style LoRA on a shot: its name (a file in the host's LoRA folder; on the command line also a path) and
    its scale (1.0 = as trained). docs/loras.md."""

    name: str
    scale: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 300:
            raise SettingsError("a style LoRA needs a file name (up to 300 characters); pick one from the LoRA "
                                "folder")
        object.__setattr__(self, "scale", check_number(f"scale of LoRA {self.name[:40]!r}", self.scale,
                                                       *LORA_SCALE_RANGE, hint="1.0 = as trained"))

    @classmethod
    def parse(cls, text: str) -> "StyleLora":
        """'NAME' or 'NAME:SCALE' (the last colon splits, so Windows paths keep theirs)."""
        head, sep, tail = str(text).rpartition(":")
        if sep and head and not head.endswith(("\\", "/")) and tail.replace(".", "", 1).lstrip("-").isdigit():
            return cls(head, float(tail))
        return cls(str(text))

    @classmethod
    def from_value(cls, value) -> "StyleLora":
        if isinstance(value, StyleLora):
            return value
        if isinstance(value, dict):
            return cls(**_known(cls, value))
        if isinstance(value, str):
            return cls.parse(value)
        raise SettingsError(f"a style LoRA is a name or {{'name', 'scale'}}, not {type(value).__name__}")


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class GenerationSettings:
    prompt: str
    seed: int | None = None  # None: drawn when the shot runs, and reported
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    strength: float = DEFAULT_STRENGTH  # img2img only
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    loras: tuple[StyleLora, ...] = ()  # style LoRAs, applied in this order (docs/loras.md)
    # 2K (docs/plates.md): the VAE decodes in tiles when a whole decode would not fit ("auto"), or always, or never;
    # a plate renders about 1 MP first, then refines at the full size from it (img2img, same control map).
    vae_tiling: str = "auto"
    plate: bool = False
    plate_strength: float = DEFAULT_PLATE_STRENGTH

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise SettingsError("prompt must be text")
        most = limits.current().prompt_chars
        if len(self.prompt) > most:
            raise SettingsError(f"the prompt is {len(self.prompt)} characters, above the limit of {most}; shorten "
                                "it (the text encoder reads at most 512 tokens)")
        set_ = object.__setattr__  # frozen: normalize the types once, here
        set_(self, "seed", check_number("seed", self.seed, 0, MAX_SEED, whole=True, optional=True))
        set_(self, "steps", check_number("steps", self.steps, 1, MAX_STEPS, whole=True,
                                         hint=f"{DEFAULT_STEPS} is the model's default"))
        set_(self, "guidance", check_number("guidance", self.guidance, 0.0, MAX_GUIDANCE,
                                            hint=f"{DEFAULT_GUIDANCE:g} suits FLUX.1-Depth-dev"))
        set_(self, "strength", check_number("strength", self.strength, 0.0, 1.0, low_open=True))
        set_(self, "max_sequence_length", check_number("max_sequence_length", self.max_sequence_length, 1,
                                                       MAX_SEQUENCE_LENGTH, whole=True))
        loras = self.loras or ()
        if isinstance(loras, (str, dict, StyleLora)):
            loras = (loras,)
        loras = tuple(StyleLora.from_value(v) for v in loras)
        if len(loras) > MAX_STYLE_LORAS:
            raise SettingsError(f"{len(loras)} style LoRAs given; use at most {MAX_STYLE_LORAS}")
        if len({lora.name for lora in loras}) != len(loras):
            raise SettingsError("the same style LoRA is listed twice; give it once with the sum of the scales")
        set_(self, "loras", loras)
        if self.vae_tiling not in VAE_TILING:
            raise SettingsError(f"VAE tiling {str(self.vae_tiling)[:20]!r} is not one of {', '.join(VAE_TILING)}")
        if not isinstance(self.plate, bool):
            raise SettingsError("plate is on or off (true or false)")
        set_(self, "plate_strength", check_number("plate strength", self.plate_strength, 0.0, 1.0, low_open=True,
                                                  hint=f"{DEFAULT_PLATE_STRENGTH} keeps the first pass's picture"))

    def with_seed(self, seed: int | None) -> "GenerationSettings":
        return replace(self, seed=seed)

    def settled(self) -> "GenerationSettings":
        """The one seed rule: the seed asked for, else a fresh draw (reported with the result)."""
        return self if self.seed is not None else replace(self, seed=draw_seed())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loras"] = [asdict(lora) for lora in self.loras]
        # Settings at their defaults that older versions did not have are left out: keys of shots that do not use
        # them stay what they were (a sequence resumes across an upgrade).
        for name, default in (("loras", []), ("vae_tiling", "auto"), ("plate", False),
                              ("plate_strength", DEFAULT_PLATE_STRENGTH)):
            if d[name] == default:
                d.pop(name)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationSettings":
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class ShotSettings:
    """Everything one image depends on besides the depth file and the model."""

    depth: DepthSettings = field(default_factory=DepthSettings)
    generation: GenerationSettings = field(default_factory=lambda: GenerationSettings(""))

    def to_dict(self) -> dict:
        d = self.depth
        return {"depth": {"channel": d.channel, "long_side": d.long_side, **asdict(d.normalize),
                          "fixed_range": d.fixed_range.to_dict() if d.fixed_range else None},
                "generation": self.generation.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "ShotSettings":
        from .depth import DepthRange

        depth = dict(data.get("depth") or {})
        fixed = depth.pop("fixed_range", None)
        channel, long_side = depth.pop("channel", None), depth.pop("long_side", DepthSettings().long_side)
        if "clip" in depth:
            depth["clip"] = tuple(depth["clip"])
        normalize = NormalizeSettings(**_known(NormalizeSettings, depth))
        return cls(DepthSettings(channel=channel, normalize=normalize, long_side=int(long_side),
                                 fixed_range=DepthRange.from_dict(fixed) if fixed else None),
                   GenerationSettings.from_dict(data.get("generation") or {"prompt": ""}))


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline manager loads: the model, the tier, where it runs."""

    model: str = DEFAULT_MODEL
    variant: str = DEFAULT_VARIANT
    placement: str = "auto"
    compile: bool = False
    device: str | None = None
    revision: str | None = None
    depth_lora: str | None = None  # the Depth LoRA fused into a FLUX.1-dev base (style LoRAs: GenerationSettings)
    depth_lora_scale: float = DEFAULT_DEPTH_LORA_SCALE
    vram_budget: str | None = None  # GiB ("12"), "auto", or None: pipeline/budget.py
    lora_dir: str | None = None  # the host's style LoRA folder (loras.py); None: FLUXDEPTH_LORA_DIR

    def __post_init__(self):
        if self.variant not in VARIANT_NAMES:
            raise SettingsError(f"unknown variant {self.variant!r}; choose one of: {', '.join(VARIANT_NAMES)}")
        if self.placement not in PLACEMENTS:
            raise SettingsError(f"unknown placement {self.placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        check_number("depth LoRA scale", self.depth_lora_scale, -10.0, 10.0)
        parse_vram_budget(self.vram_budget)

    def to_dict(self) -> dict:
        return asdict(self)


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in dict(data).items() if k in names}
