"""The settings schema: what a shot is made with, each value's default, bounds and check typed once.

- `GenerationSettings`: prompt, seed, steps, guidance, img2img strength.
- `ShotSettings`: the depth half (`depth.DepthSettings`) and the generation half of one shot.
- `PipelineSpec`: which model, tier and placement a pipeline manager loads.

Records are frozen; a bad value raises `SettingsError` (one line, the fix included) when the record is made, so a
record that exists is valid. `to_dict` / `from_dict` round-trip through JSON (presets, stats files, history, API).
No torch here: front ends import this before any model code.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace

from . import limits, schema
from .defaults import (
    DEFAULT_DEPTH_LORA_SCALE, DEFAULT_GUIDANCE, DEFAULT_MODEL, DEFAULT_STEPS, DEFAULT_STRENGTH, DEFAULT_VARIANT,
    DEFAULT_LIVE_PREVIEW_EVERY, DEFAULT_VRAM_HEADROOM_GIB, PLACEMENTS, VARIANT_NAMES,
)
from .depth import DepthSettings, NormalizeSettings
from .errors import FluxDepthError
from .schema import check_fields, setting, spec_of

MAX_SEED = 2**32 - 1
MAX_STEPS = 100
MAX_GUIDANCE = 100.0
MAX_SEQUENCE_LENGTH = 512


class SettingsError(FluxDepthError, ValueError):
    """A setting out of its bounds; the message names the setting and its range."""


def check_number(name: str, value, low, high, *, whole: bool = False, optional: bool = False,
                 low_open: bool = False, hint: str = ""):
    """schema.check_number raising SettingsError: one message for every way a number can be wrong."""
    return schema.check_number(name, value, low, high, whole=whole, optional=optional, low_open=low_open, hint=hint,
                               error=SettingsError)


def parse_vram_headroom(text) -> float:
    """GiB of the card left to other programs ('1.5', '2GiB'); empty is the default."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return DEFAULT_VRAM_HEADROOM_GIB
    if isinstance(text, str):
        text = text.strip().lower().removesuffix("gib").removesuffix("gb").strip()
    return check_number("VRAM headroom", text, 0.0, 64.0, hint="GiB kept free for other programs, e.g. 1.5")


def parse_live_preview(text) -> int:
    """The app's live preview: every N denoising steps ('4', 'every 4'), 'off' / '0' (0); empty is the default."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return DEFAULT_LIVE_PREVIEW_EVERY
    if isinstance(text, str) and text.strip().lower() in ("off", "no", "none", "0"):
        return 0
    if isinstance(text, str):
        text = text.strip().lower().removeprefix("every").removesuffix("steps").strip()
    return int(check_number("live preview", text, 1, 100, whole=True, hint="every N steps (e.g. 4), or off"))


def parse_vram_budget(text) -> float | str | None:
    """A VRAM budget: 'auto' (free memory at load), 'follow' (free memory before every image, less the headroom), a
    size in GiB ('12', '12.5', '12GiB', '16gb'), or None (the default rule; docs/vram.md)."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    value = text
    if isinstance(text, str):
        value = text.strip().lower()
        if value in ("auto", "follow"):
            return value
        for suffix in ("gib", "gb", "g"):
            if value.endswith(suffix):
                value = value[: -len(suffix)].strip()
                break
        try:
            float(value)
        except ValueError:
            raise SettingsError(f"VRAM budget {text[:20]!r} is not a size; give GiB (e.g. 12), auto or follow") from None
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


def refine_steps(steps: int, strength: float) -> int:
    """The denoising steps an img2img or inpainting pass at `strength` runs: diffusers starts at step
    int(steps - steps * strength) of the schedule (its get_timesteps), so 28 steps at 0.6 run 17, not int(16.8)."""
    steps = int(steps)
    return steps - int(max(steps - min(steps * float(strength), steps), 0))  # its float expression, to the bit


@dataclass(frozen=True)
class GenerationSettings:
    """The generation half of a shot. The `setting` fields are the user's controls (schema.py): the CLI options, the
    app's controls, the API parameters and preset keys are made from them (the codec below)."""

    prompt: str = setting(label="Prompt", kind=str, help="what the image shows")
    # None: drawn when the shot runs, and reported
    seed: int | None = setting(None, label="Seed", kind=int, bounds=(0, MAX_SEED), unset=-1, preset=False,
                               hint="-1 draws one", help="random seed; -1 draws one (the one used is reported)")
    steps: int = setting(DEFAULT_STEPS, label="Steps", kind=int, bounds=(1, MAX_STEPS), step=1,
                         hint=f"{DEFAULT_STEPS} is the model's default", help="denoising steps")
    guidance: float = setting(DEFAULT_GUIDANCE, label="Guidance", bounds=(0.0, MAX_GUIDANCE), step=0.5,
                              hint=f"{DEFAULT_GUIDANCE:g} suits FLUX.1-Depth-dev", help="guidance scale")
    strength: float = setting(DEFAULT_STRENGTH, label="Strength", bounds=(0.0, 1.0), step=0.05, low_open=True,
                              help="img2img strength: how far from the init image (0-1)")
    max_sequence_length: int = MAX_SEQUENCE_LENGTH
    # style LoRAs, applied in this order (docs/loras.md)
    loras: tuple[StyleLora, ...] = setting((), label="Style LoRAs", kind=tuple, flag="--lora",
                                           metavar="PATH[:SCALE]",
                                           help=f"style LoRAs, each NAME or NAME:SCALE (scale 1.0 = as trained), "
                                                f"applied in order; at most {MAX_STYLE_LORAS} (docs/loras.md)")
    # 2K (docs/plates.md): the VAE decodes in tiles when a whole decode would not fit ("auto"), or always, or never;
    # a plate renders about 1 MP first, then refines at the full size from it (img2img, same control map).
    vae_tiling: str = setting("auto", label="VAE tiling", kind=str, choices=VAE_TILING, widget="radio",
                              help="decode in tiles: auto = when a whole decode would not fit the GPU memory left")
    plate: bool = setting(False, label="Plate: two passes", kind=bool,
                          help="two passes for big images (2K): about 1 MP first, then refined at the full size "
                               "with the same control map (docs/plates.md)")
    plate_strength: float = setting(DEFAULT_PLATE_STRENGTH, label="Plate strength", bounds=(0.0, 1.0), step=0.05,
                                    low_open=True, hint=f"{DEFAULT_PLATE_STRENGTH} keeps the first pass's picture",
                                    help="how much the plate's second pass changes (0-1)")

    def __post_init__(self):
        check_fields(self, SettingsError)
        most = limits.current().prompt_chars
        if len(self.prompt) > most:
            raise SettingsError(f"the prompt is {len(self.prompt)} characters, above the limit of {most}; shorten "
                                "it (the text encoder reads at most 512 tokens)")
        object.__setattr__(self, "max_sequence_length", check_number(
            "max_sequence_length", self.max_sequence_length, 1, MAX_SEQUENCE_LENGTH, whole=True))
        loras = self.loras or ()
        if isinstance(loras, (str, dict, StyleLora)):
            loras = (loras,)
        if not isinstance(loras, (tuple, list)):
            raise SettingsError("loras must be a list of \"NAME\" or \"NAME:SCALE\" strings")
        loras = tuple(StyleLora.from_value(v) for v in loras)
        if len(loras) > MAX_STYLE_LORAS:
            raise SettingsError(f"{len(loras)} style LoRAs given; use at most {MAX_STYLE_LORAS}")
        if len({lora.name for lora in loras}) != len(loras):
            raise SettingsError("the same style LoRA is listed twice; give it once with the sum of the scales")
        object.__setattr__(self, "loras", loras)

    def with_seed(self, seed: int | None) -> "GenerationSettings":
        return replace(self, seed=seed)

    def settled(self) -> "GenerationSettings":
        """The one seed rule: the seed asked for, else a fresh draw (reported with the result)."""
        return self if self.seed is not None else replace(self, seed=draw_seed())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loras"] = [asdict(lora) for lora in self.loras]
        return _without_new_defaults(self, d, _GENERATION_KEYS_V1)

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
        normalize = _without_new_defaults(d.normalize, asdict(d.normalize), _NORMALIZE_KEYS_V1)
        return {"depth": {"channel": d.channel, "long_side": d.long_side, **normalize,
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
    vram_headroom: float = DEFAULT_VRAM_HEADROOM_GIB  # GiB left to other programs when placement auto plans

    def __post_init__(self):
        if self.variant not in VARIANT_NAMES:
            raise SettingsError(f"unknown variant {self.variant!r}; choose one of: {', '.join(VARIANT_NAMES)}")
        if self.placement not in PLACEMENTS:
            raise SettingsError(f"unknown placement {self.placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        check_number("depth LoRA scale", self.depth_lora_scale, -10.0, 10.0)
        parse_vram_budget(self.vram_budget)
        object.__setattr__(self, "vram_headroom", parse_vram_headroom(self.vram_headroom))

    def to_dict(self) -> dict:
        return asdict(self)


# A record's dict is part of every shot key (sequence.py: an unchanged frame is not rendered again). Settings added
# after these keep a shot's key when left at their default, so a sequence resumes across an upgrade.
_GENERATION_KEYS_V1 = ("prompt", "seed", "steps", "guidance", "strength", "max_sequence_length")
_NORMALIZE_KEYS_V1 = ("mode", "invert", "clip", "near", "far", "gap_max", "polarity", "edges")


def _without_new_defaults(record, d: dict, always: tuple[str, ...]) -> dict:
    for f in fields(record):
        if f.name not in always and f.name in d and getattr(record, f.name) == _field_default(f):
            d.pop(f.name)
    return d


def _field_default(f):
    """A dataclass field's default (its factory's value), MISSING when it has none."""
    return f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else MISSING)


def _known(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in dict(data).items() if k in names}


# --- The codec: one flat form of a shot --------------------------------------------------------------------------
# The app's controls, the API's parameters, the CLI's options and the presets' keys are all made from the `setting`
# fields of ShotSettings (schema.py); nothing below names a setting. docs/settings.md.


@dataclass(frozen=True)
class FormField:
    """One value of the flat form: `name` is the form key, the API parameter and (dashed) the CLI option."""

    name: str
    path: tuple[str, ...]  # where the value sits in ShotSettings: ("depth", "normalize", "clip")
    spec: schema.Spec
    default: object  # MISSING when the value is required (the prompt)
    part: int | None = None  # the index in a pair (clip_low, clip_high)

    @property
    def section(self) -> str:
        return self.path[0]  # "depth" or "generation"

    @property
    def label(self) -> str:
        return self.spec.part_labels[self.part] if self.part is not None else self.spec.label

    @property
    def required(self) -> bool:
        return self.default is MISSING


@functools.lru_cache(maxsize=None)
def shot_fields(root: type | None = None) -> tuple[FormField, ...]:
    """Every user-facing setting of a shot, in the order the dataclasses declare them (depth first). Made once per
    record type: every control, API parameter and form conversion asks for it."""
    out = []

    def walk(cls, path):
        import typing

        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            spec = spec_of(f)
            kind = hints.get(f.name)
            if spec is None:
                if isinstance(kind, type) and is_dataclass(kind):
                    walk(kind, path + (f.name,))
                continue
            default = _field_default(f)
            if spec.parts:
                out.extend(FormField(part, path + (f.name,), spec, default[i], i) for i, part in enumerate(spec.parts))
            else:
                out.append(FormField(f.name, path + (f.name,), spec, default))

    walk(root or ShotSettings, ())
    names = [f.name for f in out]
    assert len(set(names)) == len(names), f"two settings share a form name: {names}"
    return tuple(out)


def form_field(name: str) -> FormField:
    return _fields_by_name()[name]


@functools.lru_cache(maxsize=None)
def _fields_by_name() -> dict[str, FormField]:
    return {f.name: f for f in shot_fields()}


def _plain(value):
    """A record's value as JSON holds it: style LoRAs as {"name", "scale"} records, a pair as a list."""
    if isinstance(value, tuple):
        return [asdict(v) if is_dataclass(v) else v for v in value]
    return value


def _is_unset(value, unset) -> bool:
    if unset is None:
        return False
    if isinstance(unset, (int, float)) and not isinstance(value, (bool, str)):
        try:
            return float(value) == float(unset)
        except (TypeError, ValueError):
            return False
    return value == unset


def _form_value(f: FormField, value):
    """A value as a form or an API call sends it -> the record's value (checked by the record itself)."""
    spec = f.spec
    if spec.kind is tuple:
        return () if value in (None, "") else value
    if value is None or (value == "" and (spec.kind is not str or spec.choices)):
        return None if spec.optional else f.default
    if spec.optional and _is_unset(value, spec.unset):
        return None
    return value


def shot_from_form(form, base: "ShotSettings | None" = None) -> "ShotSettings":
    """A ShotSettings from a flat form; keys it lacks keep `base`'s values (the defaults when none). Every value is
    checked by its record: a bad one raises one line naming the setting and the fix."""
    base = base if base is not None else ShotSettings()
    values: dict[tuple[str, ...], object] = {}
    for f in shot_fields(type(base)):
        if f.name not in form:
            continue
        value = _form_value(f, form[f.name])
        if f.part is not None:
            pair = list(values.get(f.path) or _get(base, f.path))
            pair[f.part] = value if value is not None else f.default
            value = tuple(pair)
        values[f.path] = value
    return _rebuilt(base, (), values)


def _get(record, path):
    for name in path:
        record = getattr(record, name)
    return record


def _rebuilt(record, prefix, values):
    changes = {}
    for f in fields(record):
        path = prefix + (f.name,)
        if path in values:
            changes[f.name] = values[path]
        elif any(key[:len(path)] == path for key in values):
            changes[f.name] = _rebuilt(getattr(record, f.name), path, values)
    return replace(record, **changes) if changes else record


def form_from_shot(shot: "ShotSettings") -> dict:
    """The flat form of a shot (None where a value is unset; style LoRAs as {"name", "scale"} records)."""
    form = {}
    for f in shot_fields(type(shot)):
        value = _get(shot, f.path)
        form[f.name] = value[f.part] if f.part is not None else _plain(value)
    return form


def form_defaults(root: type | None = None) -> dict:
    return {f.name: f.default for f in shot_fields(root) if not f.required}


def preset_sections(shot: "ShotSettings") -> dict:
    """What a preset keeps of a shot: {"depth": {...}, "generation": {...}} by the records' field names (a pair as a
    list), every setting but the ones marked preset=False (the seed, one file's channel)."""
    sections: dict[str, dict] = {}
    for f in shot_fields(type(shot)):
        if not f.spec.preset or f.part not in (None, 0):
            continue
        sections.setdefault(f.section, {})[f.path[-1]] = _plain(_get(shot, f.path))
    return sections


def form_from_sections(sections) -> dict:
    """A preset's sections -> the flat form keys it sets. Unknown keys are refused by name."""
    form, unknown = {}, []
    by_key = {}
    for f in shot_fields():
        if f.spec.preset:
            by_key.setdefault((f.section, f.path[-1]), []).append(f)
    for section, values in (sections or {}).items():
        for key, value in (values or {}).items():
            found = by_key.get((section, key))
            if not found:
                unknown.append(key)
            elif found[0].part is not None:
                if not isinstance(value, (list, tuple)) or len(value) != len(found):
                    raise SettingsError(f"{key} must be {len(found)} numbers")
                form.update({f.name: value[f.part] for f in found})
            else:
                form[found[0].name] = value
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
    return form


def add_shot_arguments(group, section: str) -> None:
    """The CLI options of one section ("depth" or "generation"), made from the fields (`--long-side`, `--clip LOW
    HIGH`, `--lora` repeated, `--plate` as a switch)."""
    for f in shot_fields():
        if f.section != section or f.part not in (None, 0):
            continue
        spec, key = f.spec, f.path[-1]
        flag = spec.flag or "--" + key.replace("_", "-")
        text = spec.help
        kw: dict = {"dest": key}
        if spec.kind is bool:
            kw["action"] = "store_true"
        elif spec.kind is tuple:
            kw.update(action="append", default=[], metavar=spec.metavar)
            text += "; repeat for more"
        elif spec.parts:
            kw.update(nargs=len(spec.parts), type=spec.kind, default=tuple(_get(ShotSettings(), f.path)),
                      metavar=spec.metavar)
            text += f" (default {' '.join(f'{v:g}' for v in kw['default'])})"
        else:
            kw["type"] = spec.kind if spec.kind in (int, float) else str
            if spec.choices:
                kw["choices"] = spec.choices
            if f.required:
                kw["required"] = True
            else:
                kw["default"] = f.default
                if f.default is not None:
                    text += f" (default {f.default:g})" if isinstance(f.default, float) else f" (default {f.default})"
            if spec.metavar:
                kw["metavar"] = spec.metavar
        group.add_argument(flag, help=text.replace("%", "%%"), **kw)


def form_from_args(args, section: str | None = None) -> dict:
    """The flat form of the options add_shot_arguments made (a section's, or both)."""
    form = {}
    for f in shot_fields():
        if section not in (None, f.section) or not hasattr(args, f.path[-1]):
            continue
        value = getattr(args, f.path[-1])
        form[f.name] = value[f.part] if f.part is not None else value
    return form
