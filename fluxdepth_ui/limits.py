"""Bounds on what one request may make the server decode, store or compute.

One frozen record with each limit's default, its command-line flag and its environment variable; the app sets it
once at start (`configure`), the readers, the zip extractor, the prompt check and the server middleware read it
(`current`). The CLI keeps the defaults: a local file is the artist's own. docs/sharing.md lists them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

from .errors import FluxDepthError


def _limit(default: int, help_text: str, low: int = 1):
    return field(default=default, metadata={"help": help_text, "min": low})


@dataclass(frozen=True)
class Limits:
    upload_mb: int = _limit(300, "largest upload in MB")
    megapixels: int = _limit(64, "largest image decoded, in megapixels (display window, every EXR data window, "
                                 "init images)")
    decoded_mb: int = _limit(2048, "most bytes decoded from one depth file, all EXR parts and channels together")
    zip_members: int = _limit(2000, "most entries in one uploaded zip")
    zip_mb: int = _limit(4096, "most bytes one uploaded zip may expand to")
    frames: int = _limit(1000, "most frames in one sequence")
    prompt_chars: int = _limit(2000, "longest prompt in characters (T5 reads at most 512 tokens)")
    body_kb: int = _limit(1024, "largest API request body in KB (file uploads have their own limit)")
    cache_mb: int = _limit(768, "memory kept for read depth maps and the previews shown, all sessions together, in MB "
                                "(the least recently used goes first)")
    decode_s: int = _limit(30, "longest decode of a deep EXR, in seconds (deep files decode in a child process)")

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < f.metadata["min"]:
                raise FluxDepthError(f"limit {flag(f.name)} must be a whole number >= {f.metadata['min']}, "
                                     f"not {value!r}")

    @property
    def max_pixels(self) -> int:
        return self.megapixels * 1_000_000

    @property
    def max_decoded_bytes(self) -> int:
        return self.decoded_mb * 1024 * 1024


def flag(name: str) -> str:
    return "--max-" + name.replace("_", "-")


def env_name(name: str) -> str:
    return "FLUXDEPTH_MAX_" + name.upper()


def from_env(base: Limits | None = None, environ=os.environ) -> Limits:
    """The defaults, overridden by FLUXDEPTH_MAX_<NAME> variables (for Spaces, where there are no flags)."""
    values = {}
    for f in fields(Limits):
        raw = environ.get(env_name(f.name))
        if raw not in (None, ""):
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise FluxDepthError(f"{env_name(f.name)}={raw!r} is not a whole number") from None
    return replace(base or Limits(), **values)


def add_arguments(parser) -> None:
    """One flag per limit; the default shown is the environment's or the built-in one."""
    defaults = from_env()
    group = parser.add_argument_group("limits (each also FLUXDEPTH_MAX_<NAME>)")
    for f in fields(Limits):
        group.add_argument(flag(f.name), dest=f"limit_{f.name}", type=int, default=getattr(defaults, f.name),
                           metavar="N", help=f"{f.metadata['help']} (default {getattr(defaults, f.name)})")


def from_arguments(args) -> Limits:
    return Limits(**{f.name: getattr(args, f"limit_{f.name}") for f in fields(Limits)})


_current = Limits()


def current() -> Limits:
    return _current


def configure(limits: Limits) -> None:
    global _current
    _current = limits
