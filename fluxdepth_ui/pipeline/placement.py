"""Device choice and how the pipeline sits on it: fully on the GPU, model CPU offload, or sequential offload."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..defaults import PLACEMENTS  # noqa: F401 - re-exported
from .errors import PipelineError


GIB = 2**30
# Working memory on top of the weights at 1024x1024 (activations, VAE decode), scaled with the pixel count: measured
# 2.4 GiB over the weights at the peak of a 1 MP image in every tier (docs/benchmarks.md "VRAM budget").
ACTIVATION_BYTES_PER_MEGAPIXEL = int(2.5 * GIB)


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise PipelineError(f"unknown device {requested!r}; use cuda, cuda:N, mps or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PipelineError("device cuda was asked for but no CUDA GPU is visible; install a CUDA build of torch")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes actually stored: quanto's tensor subclasses (packed int4 included) are flattened to their storage."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def module_bytes(module) -> int:
    if not isinstance(module, torch.nn.Module):
        return 0
    return sum(tensor_bytes(t) for t in list(module.parameters()) + list(module.buffers()))


@dataclass(frozen=True)
class PlacementChoice:
    placement: str  # gpu | model_offload | sequential_offload | cpu
    reason: str


def choose_placement(requested: str, device: torch.device, component_bytes: dict[str, int], megapixels: float,
                     free_bytes: int | None, quantized: bool) -> PlacementChoice:
    if requested not in PLACEMENTS:
        raise PipelineError(f"unknown placement {requested!r}; choose one of: {', '.join(PLACEMENTS)}")
    if device.type == "cpu":
        return PlacementChoice("cpu", "no GPU found: running on the CPU (many minutes per image with the real model)")
    if requested == "sequential_offload" and quantized:
        return PlacementChoice("model_offload", "sequential offload does not work with quantized weights: using "
                                                "model offload")
    if requested != "auto":
        return PlacementChoice(requested, "chosen by the user")
    work = int(ACTIVATION_BYTES_PER_MEGAPIXEL * max(megapixels, 0.25))
    total = sum(component_bytes.values())
    largest = max(component_bytes.values(), default=0)
    if free_bytes is None:
        return PlacementChoice("gpu", "free memory unknown on this device: placing everything on it")
    if total + work <= free_bytes:
        return PlacementChoice("gpu", f"{total / GIB:.1f} GiB of weights fit in {free_bytes / GIB:.1f} GiB free")
    if largest + work <= free_bytes:
        return PlacementChoice("model_offload", f"{total / GIB:.1f} GiB of weights do not fit in "
                                                f"{free_bytes / GIB:.1f} GiB free: one component at a time")
    if quantized:
        return PlacementChoice("model_offload", f"the largest component ({largest / GIB:.1f} GiB) barely fits "
                                                f"{free_bytes / GIB:.1f} GiB free: model offload, expect OOM at big sizes")
    return PlacementChoice("sequential_offload", f"even the largest component ({largest / GIB:.1f} GiB) does not "
                                                 f"fit {free_bytes / GIB:.1f} GiB free: layer by layer (slow)")


def free_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def apply_placement(pipe, choice: PlacementChoice, device: torch.device) -> None:
    if choice.placement in ("gpu", "cpu"):
        pipe.to(device)
    elif choice.placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif choice.placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)


def release_device_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()
