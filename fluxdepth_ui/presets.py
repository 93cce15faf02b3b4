"""Presets: plain JSON files an artist can read, copy and edit.

Built-in presets live in the repository's `presets/` folder; presets the user saves go to a user folder
(`FLUXDEPTH_PRESETS`, default ~/.config/fluxdepth/presets), never into the install.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import write_text
from .defaults import VARIANT_NAMES
from .errors import FluxDepthError

MAX_NAME = 80


class PresetError(FluxDepthError, ValueError):
    """A preset file that cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    depth: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    path: str = ""
    builtin: bool = False

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "depth": self.depth,
                "generation": self.generation}


def builtin_dir() -> Path:
    """The repository's presets/ in a checkout; the copy packaged as fluxdepth_ui.builtin_presets in a wheel."""
    return packaged_folder("presets", "builtin_presets")


def packaged_folder(repo_name: str, package_name: str) -> Path:
    """A top-level folder of the repository in a checkout, or its copy inside the installed package."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / repo_name
    return checkout if checkout.is_dir() else here / package_name


def user_dir() -> Path:
    env = os.environ.get("FLUXDEPTH_PRESETS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME", os.path.join(os.path.expanduser("~"), ".config"))
    return Path(base) / "fluxdepth" / "presets"


def load_preset(path: str | Path, builtin: bool = False) -> Preset:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PresetError(f"preset {path.name} cannot be read ({type(exc).__name__}); fix or delete the file") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"].strip():
        raise PresetError(f"preset {path.name} needs a \"name\"")
    depth = data.get("depth", {}) or {}
    generation = data.get("generation", {}) or {}
    try:
        check_sections(depth, generation)
    except (FluxDepthError, TypeError, ValueError) as exc:
        raise PresetError(f"preset {path.name}: {exc}") from None
    return Preset(data["name"].strip(), str(data.get("description", "")), depth, generation, str(path), builtin)


def check_sections(depth: dict, generation: dict) -> None:
    """A preset's settings are the schema's (settings.preset_sections: the names of the settings records, a pair as
    a list, style LoRAs as [{"name", "scale"}]) plus the tier; each value is checked as a shot would check it."""
    from .settings import form_from_sections, shot_from_form

    if not isinstance(depth, dict) or not isinstance(generation, dict):
        raise PresetError("\"depth\" and \"generation\" must be objects")
    generation = dict(generation)
    variant = generation.pop("variant", None)
    if variant is not None and variant not in VARIANT_NAMES:
        raise PresetError(f"unknown variant {str(variant)[:20]!r}; use one of: {', '.join(VARIANT_NAMES)}")
    shot_from_form(form_from_sections({"depth": depth, "generation": generation}))


def list_presets() -> list[Preset]:
    """Built-in presets first, then the user's; a broken user file is skipped (and named in its error)."""
    presets: list[Preset] = []
    for folder, builtin in ((builtin_dir(), True), (user_dir(), False)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                presets.append(load_preset(path, builtin))
            except PresetError:
                if builtin:
                    raise
    return presets


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "preset"


def save_preset(name: str, depth: dict, generation: dict, description: str = "", folder: Path | None = None,
                overwrite: bool = False) -> Path:
    """Write a user preset. A preset of the same name is replaced only with `overwrite` (the app asks first); a
    built-in one never is."""
    if not isinstance(name, str) or not name.strip():
        raise PresetError("give the preset a name")
    if len(name.strip()) > MAX_NAME:
        raise PresetError(f"a preset name is at most {MAX_NAME} characters; shorten it")
    folder = Path(folder) if folder else user_dir()
    if folder.resolve() == builtin_dir().resolve():
        raise PresetError("user presets are not written into the install; set FLUXDEPTH_PRESETS to another folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PresetError(f"cannot create the presets folder ({exc.strerror}); set FLUXDEPTH_PRESETS to a "
                          "writable folder") from None
    check_sections(depth, generation)
    preset = Preset(name.strip(), description, dict(depth), dict(generation))
    same = next((p for p in list_presets() if p.name.lower() == preset.name.lower()), None)
    if same is not None and same.builtin:
        raise PresetError(f"{preset.name!r} is a built-in preset; save yours under another name")
    if same is not None and not overwrite:
        raise PresetError(f"a preset named {preset.name!r} exists; tick Overwrite to replace it, or choose another "
                          "name")
    path = Path(same.path) if same is not None and Path(same.path).parent == folder else folder / f"{slugify(name)}.json"
    n = 2
    while same is None and path.exists():  # another name with the same slug: keep both files
        path = folder / f"{slugify(name)}-{n}.json"
        n += 1
    try:
        write_text(str(path), json.dumps(preset.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise PresetError(f"cannot save the preset ({exc.strerror}); set FLUXDEPTH_PRESETS to a writable "
                          "folder") from None
    load_preset(path)  # what we wrote must load back
    return path


def delete_preset(name: str) -> None:
    """Remove a user preset (built-in ones stay)."""
    preset = next((p for p in list_presets() if p.name == name), None)
    if preset is None:
        raise PresetError("choose a preset to delete first")
    if preset.builtin:
        raise PresetError(f"{name!r} is a built-in preset and cannot be deleted")
    try:
        Path(preset.path).unlink()
    except OSError as exc:
        raise PresetError(f"cannot delete the preset ({exc.strerror})") from None
