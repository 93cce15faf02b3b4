"""How a setting is described once: its label, help, bounds, choices and how the form writes "none" (docs/settings.md).

A settings dataclass declares each user-facing field with `setting(...)`; the field's default is the default, and the
`Spec` in its metadata is what the CLI, the app's controls, the API and presets are built from (settings.py: the
codec). `check_fields` is the one validation of bounds and choices, shared by every settings record. Plain Python:
the depth package imports this too.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields


@dataclass(frozen=True)
class Spec:
    label: str  # the app's control label
    help: str  # one line for --help, the API docs and the control's tooltip
    kind: type = float  # int, float, str, bool, tuple (a list of values: style LoRAs)
    bounds: tuple[float, float] | None = None
    step: float | None = None  # a slider's step; numbers without one are typed into a box
    choices: tuple[str, ...] | None = None
    unset: object = None  # what a form or API call sends for "none" (0 for near/far, -1 for the seed, "auto")
    low_open: bool = False  # the low bound itself is not allowed (strength 0 would change nothing)
    hint: str = ""  # said with an out-of-range value
    parts: tuple[str, ...] = ()  # a pair shown as two controls: clip -> clip_low, clip_high
    part_labels: tuple[str, ...] = ()
    flag: str | None = None  # the CLI option when not --<name>
    metavar: str | tuple[str, ...] | None = None
    widget: str | None = None  # "radio" for a few choices side by side; default from the kind
    preset: bool = True  # saved in presets (the seed and the channel of one file are not)

    @property
    def optional(self) -> bool:
        return self.unset is not None


def setting(default=MISSING, *, default_factory=MISSING, **spec) -> object:
    """A dataclass field that is a user-facing setting: `steps: int = setting(28, label="Steps", ...)`."""
    return field(default=default, default_factory=default_factory, metadata={"setting": Spec(**spec)})


def spec_of(f) -> Spec | None:
    return f.metadata.get("setting")


def check_number(name: str, value, low, high, *, whole: bool = False, optional: bool = False,
                 low_open: bool = False, hint: str = "", error: type[Exception] = ValueError):
    """One message for every way a number can be wrong: not a number, NaN, fractional, out of range.

    Returns the value as int (whole) or float; None when optional and missing.
    """
    if value is None and optional:
        return None
    if high == math.inf:
        span = f"a value above {low:g}" if low_open else f"a value of at least {low:g}"
    else:
        span = f"a value in ({low}, {high}]" if low_open else f"{low}..{high}"
    fix = f"use {span}" + (f" ({hint})" if hint else "")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, not {str(value)[:20]!r}; {fix}") from None
    if isinstance(value, bool) or not math.isfinite(number) or (whole and number != int(number)):
        raise error(f"{name} must be a {'whole ' if whole else ''}number; {fix}")
    if number < low or number > high or (low_open and number == low):
        raise error(f"{name} {value} is out of range; {fix}")
    return int(number) if whole else number


def part_name(spec: Spec, index: int) -> str:
    """How a message names one value of a pair: its control's label without the unit ("near clip")."""
    if spec.part_labels:
        return spec.part_labels[index].split(" (")[0].lower()
    return spec.parts[index].replace("_", " ")


def check_fields(record, error: type[Exception]) -> None:
    """Bounds, choices and kinds of every `setting` field of a frozen record, values normalized in place (28.0 ->
    28). Relations between fields (near < far) stay with the record's own __post_init__."""
    for f in fields(record):
        spec = spec_of(f)
        if spec is None:
            continue
        value = getattr(record, f.name)
        name = f.name.replace("_", " ")
        if value is None and spec.optional:
            continue
        if spec.choices is not None:
            if value not in spec.choices:
                raise error(f"unknown {name} {str(value)[:30]!r}; use one of: {', '.join(spec.choices)}")
        elif spec.kind is bool:
            if not isinstance(value, bool):
                raise error(f"{name} is on or off (true or false), not {str(value)[:20]!r}")
        elif spec.kind is str:
            if not isinstance(value, str):
                raise error(f"{name} must be text")
        elif spec.kind in (int, float) and spec.parts:
            if not isinstance(value, (tuple, list)) or len(value) != len(spec.parts):
                raise error(f"{name} is {len(spec.parts)} numbers ({', '.join(spec.parts)})")
            lo, hi = spec.bounds or (-math.inf, math.inf)
            object.__setattr__(record, f.name, tuple(
                check_number(part_name(spec, i), v, lo, hi, whole=spec.kind is int, hint=spec.hint, error=error)
                for i, v in enumerate(value)))
        elif spec.kind in (int, float):
            lo, hi = spec.bounds or (-math.inf, math.inf)
            object.__setattr__(record, f.name, check_number(
                name, value, lo, hi, whole=spec.kind is int, low_open=spec.low_open, hint=spec.hint, error=error))
