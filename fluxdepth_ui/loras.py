"""Style LoRAs: which files a studio offers, and how a name on a shot becomes a file (docs/loras.md). No torch here.

A shot names its LoRAs (`GenerationSettings.loras`); the host decides where they come from: the LoRA folder
(`--lora-dir`, env FLUXDEPTH_LORA_DIR), and on the command line also any file path. A shared studio (share link,
Space) takes names from the folder only, so a visitor can never make the server read a path of their choosing.
Only .safetensors: a pickle file could run code when it loads.
"""

from __future__ import annotations

import hashlib
import os

from .settings import SettingsError

LORA_DIR_ENV = "FLUXDEPTH_LORA_DIR"
SUFFIX = ".safetensors"
_digests: dict[tuple, str] = {}


def lora_folder(folder: str | None = None) -> str | None:
    """The host's LoRA folder: the one given, else FLUXDEPTH_LORA_DIR, else none."""
    folder = folder or os.environ.get(LORA_DIR_ENV) or None
    return os.path.abspath(os.path.expanduser(folder)) if folder else None


def available_loras(folder: str | None) -> list[str]:
    """File names of the LoRAs in the folder (not its subfolders), sorted; empty without a folder."""
    if not folder or not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(SUFFIX) and not name.startswith(".")
                  and os.path.isfile(os.path.join(folder, name)))


def resolve_lora(name: str, folder: str | None, allow_paths: bool) -> str:
    """The file a LoRA name means, or a one-line SettingsError naming the fix."""
    if allow_paths:
        path = os.path.abspath(os.path.expanduser(name))
        if os.path.isfile(path):
            if not path.lower().endswith(SUFFIX):
                raise SettingsError(f"style LoRA {os.path.basename(path)!r} is not a .safetensors file; convert it "
                                    "or download the .safetensors version")
            return path
    if folder and name in available_loras(folder):
        return os.path.join(folder, name)
    where = "the LoRA folder" if folder else "any LoRA folder (none is set: --lora-dir or FLUXDEPTH_LORA_DIR)"
    shown = os.path.basename(name)[:60]
    if allow_paths:
        raise SettingsError(f"style LoRA {shown!r} is neither a file nor in {where}; give a .safetensors path or a "
                            "name from the folder")
    raise SettingsError(f"style LoRA {shown!r} is not in {where}; pick one of the studio's LoRAs")


def file_digest(path: str) -> str:
    """sha256 of the file (remembered per path, size and modification time): metadata records what was used."""
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                sha.update(chunk)
        _digests[key] = sha.hexdigest()
    return _digests[key]
