"""torch.compile's work kept in the cache folder as portable files, so a later start does not compile again.

torch's inductor and Triton caches live in folders of this machine; torch can also hand out everything a process
compiled (graphs, kernels, autotuning results) as one blob (`torch.compiler.save_cache_artifacts`) and put such a blob
back into the caches of another process (`load_cache_artifacts`), on this machine or another one with the same GPU,
torch and Triton (a farm worker given the studio's cache folder, a Space with a persistent disk). Measured on the
H200 (docs/benchmarks.md, issue 23): the first fp8 call compiles for 16.4 s in empty caches and for 6.7 s after the
13 MB blob was loaded (4.0 s to load it).

One file per tier and image size, written after the first compiled image of that size (the blob holds everything the
process compiled so far, so the newest file of a tier is a superset of the older ones); at load, every file of the
tier is handed to torch. A damaged or foreign file is skipped with a log line: torch then compiles, as without one.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os

import torch

from ..atomic import write_bytes

log = logging.getLogger(__name__)


def artifacts_folder(cache_root: str) -> str:
    return os.path.join(cache_root, "torch-compile", "artifacts")


def _prefix(tier: str, device: torch.device) -> str:
    """What the compiled code depends on: torch (and Triton) and the GPU model; the tier names its graphs."""
    from .aot import device_label

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    env = f"{torch.__version__}|{triton_version}|{device_label(device)}"
    return f"{tier}-{hashlib.sha256(env.encode()).hexdigest()[:16]}"


def artifacts_files(cache_root: str, tier: str, device: torch.device) -> list[str]:
    return sorted(glob.glob(os.path.join(artifacts_folder(cache_root), _prefix(tier, device) + "-*.bin")))


def load_compile_artifacts(cache_root: str, tier: str, device: torch.device) -> int:
    """Hand this tier's saved artifacts to torch; returns how many files were loaded."""
    loaded = 0
    for path in artifacts_files(cache_root, tier, device):
        try:
            with open(path, "rb") as fh:
                info = torch.compiler.load_cache_artifacts(fh.read())
        except Exception:  # noqa: BLE001 - a bad file costs a compile, never the image
            log.warning("compile artifacts %s could not be loaded; torch compiles instead", path, exc_info=True)
            continue
        if info is not None:
            loaded += 1
    return loaded


def save_compile_artifacts(cache_root: str, tier: str, device: torch.device, width: int, height: int,
                           img2img: bool) -> str | None:
    """Write what this process compiled so far, for this tier and size; returns the file, or None when torch has
    nothing to hand out (or the folder cannot be written: the image is unaffected)."""
    try:
        data = torch.compiler.save_cache_artifacts()
    except Exception:  # noqa: BLE001
        log.warning("torch could not hand out its compile artifacts", exc_info=True)
        return None
    if data is None:
        return None
    name = f"{_prefix(tier, device)}-{width}x{height}{'-img2img' if img2img else ''}.bin"
    path = os.path.join(artifacts_folder(cache_root), name)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_bytes(path, data[0])
    except OSError as exc:
        log.warning("compile artifacts not saved (%s)", exc)
        return None
    return path
