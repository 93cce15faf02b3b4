"""The fast tier: torch.compile of the transformer, and fp8 weights + activations on Hopper / Ada GPUs (torchao).

Compilation uses diffusers' regional compilation (`compile_repeated_blocks`): the 19 double and 38 single blocks
share two compiled graphs, so the first image compiles in seconds (16 s cold for fp8 on an H200, docs/benchmarks.md).
Compiled graphs go to a folder beside the quantized cache (torch's inductor caches), and torch's cache artifacts
(kernels and graphs in one portable file, compile_cache.py) are saved there too, so a later start, another farm
worker or a Space handed the cache folder compiles in seconds.

Both are off where they cannot pay: on the CPU / MPS (nothing to gain) and with sequential offload (hooks on every
layer). Ahead-of-time packages (aot.py) are opt-in (FLUXDEPTH_AOT=1): each is checked in a child process before the
app loads it, since AOTInductor loading crashed the process on the lent H200 (docs/fast-tier.md). On ZeroGPU Spaces,
where each request runs in a fresh GPU process, the whole transformer is compiled once at start-up with the `spaces`
AoT helpers (zerogpu.py).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from .errors import PipelineError


# Ada (8.9) and Hopper (9.0) have fp8 tensor cores; older GPUs would emulate it, slower than bf16.
FP8_MIN_CAPABILITY = (8, 9)
# Read at import, before any model is built: building one makes torch fill in its default (/tmp/torchinductor_USER,
# lost at reboot), and from then on the variable looks set. Only a folder the user chose is left alone.
USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


@dataclass(frozen=True)
class CompileDecision:
    enabled: bool
    reason: str


def on_zerogpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def decide_compile(requested: bool, device: torch.device, placement: str) -> CompileDecision:
    if not requested:
        return CompileDecision(False, "")
    if device.type != "cuda":
        return CompileDecision(False, f"torch.compile is off: it speeds up CUDA GPUs only (running on {device.type})")
    if placement == "sequential_offload":
        return CompileDecision(False, "torch.compile is off with sequential offload (a hook on every layer)")
    if on_zerogpu():
        return CompileDecision(True, "compiled ahead of time at start-up (ZeroGPU: every request starts a fresh GPU "
                                     "process, so the compiled transformer is made once and handed to each)")
    return CompileDecision(True, "torch.compile: the first image at each new size compiles (tens of seconds, "
                                 "seconds once cached); later images run faster")


# Tiers whose blocks export as they are: plain bf16 layers, and torchao's fp8 tensors (unwrapped first, aot.py). The
# qint8/qint4 dense layers call our own Triton kernels, which export cannot see into: those tiers use torch.compile.
AOT_TIERS = ("bf16", "fp8")


def use_aot(tier: str, transformer_moves: bool = False) -> bool:
    """Ahead-of-time packages (aot.py) for a compiled tier that exports, when asked for with FLUXDEPTH_AOT=1.

    Opt-in: full-size packages have not yet been measured on a GPU, and torch.compile with its saved cache artifacts
    already gives the first image in seconds (docs/fast-tier.md). Not when the transformer moves between host and GPU
    (model offload): a package holds its blocks' weights where they were when it was bound, and a move gives the
    parameters new storage under it."""
    return tier in AOT_TIERS and not transformer_moves and os.environ.get("FLUXDEPTH_AOT", "0") == "1"


def compile_cache_dir(cache_root: str) -> str:
    return os.path.join(cache_root, "torch-compile")


def compile_transformer(transformer: torch.nn.Module, cache_root: str, regional: bool = True) -> None:
    """Compile in place (the repeated blocks, or the whole model). Graphs are built at the first call."""
    # torch reads this at every cache lookup. (Triton's own kernel cache is already kept, in ~/.triton.)
    if USER_INDUCTOR_CACHE is None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache_dir(cache_root)
    # A new resolution should not recompile every block again and again: after the first size change, torch marks
    # the token count dynamic (its default), and the cache limit leaves room for that plus the img2img variants.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if regional:
        transformer.compile_repeated_blocks(fullgraph=True)
    else:
        transformer.compile(fullgraph=True)


def check_fp8(device: torch.device) -> None:
    """Raise a one-line PipelineError when this machine cannot run the fp8 tier."""
    if device.type != "cuda":
        raise PipelineError(f"the fp8 tier needs an NVIDIA GPU (Ada or Hopper); this machine runs on {device.type}: "
                            "choose bf16, qint8 or qint4")
    if not on_zerogpu():  # ZeroGPU's cards are H200s, and outside a GPU call the device is only emulated
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            raise PipelineError(f"the fp8 tier needs compute capability 8.9 or newer (Ada, Hopper); "
                                f"{torch.cuda.get_device_name(device)} is {major}.{minor}: choose qint8 instead")
    if importlib.util.find_spec("torchao") is None:
        raise PipelineError("the fp8 tier needs torchao: pip install torchao (or choose qint8)")


def compile_tuning() -> bool:
    """Whether the fp8 tier takes torchao's tuned inductor options (FLUXDEPTH_COMPILE_TUNING=1; off by default).

    Measured on the H200 (docs/benchmarks.md, issue 23): the tuning made the first fp8 image compile for 150-225 s
    instead of 16 s, for no faster steps (104.5 ms untuned against 103.8-112.8 ms tuned)."""
    return os.environ.get("FLUXDEPTH_COMPILE_TUNING", "0") == "1"


BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")


def outside_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer's layers that are not in its two block lists (embedders, norm_out, proj_out)."""
    return [module for name, module in transformer.named_children() if name not in BLOCK_LISTS]


def fp8_quantize_transformer(transformer: torch.nn.Module, device: torch.device,
                             exclude: tuple[str, ...], keep_on_gpu: bool = True,
                             per_tensor: bool = False) -> torch.nn.Module:
    """fp8 (e4m3) weights with a scale per output row, activations quantized per token at run time (torchao);
    `per_tensor`: one scale per weight and per activation instead (cuBLAS's fp8 kernels; benchmarks only so far,
    docs/benchmarks.md "Session 36").

    Block by block on the GPU, so the bf16 transformer is never whole on the card: the peak is the fp8 weights plus
    one bf16 block. With `keep_on_gpu=False` (a VRAM budget streams the transformer) each quantized block goes back
    to host memory, and the peak is one block.
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    if per_tensor:
        from torchao.quantization import PerTensor

    # torchao's recommended inductor options (coordinate-descent tuning, TF32 for float32 matmuls, for the whole
    # process) only with FLUXDEPTH_COMPILE_TUNING=1: they cost minutes of cold compile and bought no step time here
    # (compile_tuning); compiled packages are keyed by them (aot.py).
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor() if per_tensor else PerRow(),
                                                       set_inductor_config=compile_tuning())

    def wanted(module: torch.nn.Module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and name not in exclude

    for blocks in BLOCK_LISTS:
        for number, block in enumerate(getattr(transformer, blocks)):
            block.to(device)
            quantize_(block, config, filter_fn=lambda m, n, p=f"{blocks}.{number}.": wanted(m, p + n))
            if not keep_on_gpu:
                block.to("cpu")
    # The layers outside the blocks (embedders, norm_out, proj_out): only they go to the GPU for this, never the
    # quantized blocks again (measured on a 12 GiB card: moving the whole transformer there ran out of memory).
    rest = outside_blocks(transformer)
    for module in rest:
        module.to(device)
    quantize_(transformer, config, filter_fn=lambda m, n: wanted(m, n) and "transformer_blocks" not in n)
    if not keep_on_gpu:
        for module in rest:
            module.to("cpu")
    return transformer
