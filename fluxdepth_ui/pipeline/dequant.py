"""Weight dequantization for the dense-path linears: one pass over the packed weight, exactly quanto's math.

Two implementations that give the same bits:
- the reference, plain torch ops (any device, any dtype);
- a Triton kernel per layout (CUDA, bf16). It reads the packed bytes once and writes the bf16 weight once, which is
  what keeps a qint4 step near bf16 speed: separate elementwise passes (mask, shift, stack, scale, shift) or a
  torch.compile'd unpack cost 5-10x more memory traffic on FLUX's 500 linears per step (docs/benchmarks.md).

Both are reached through the torch custom ops `fluxdepth::dequant_int8` / `fluxdepth::dequant_int4`, so the dense
linears also work inside torch.compile (the op is opaque to it; no graph break).

Rounding: torch rounds every bf16 op's float result to nearest-even bf16. The kernels compute in fp32 and round with
the same rule after each op (`_round_bf16`, done on the bits so that Triton's interpreter, which truncates on casts,
gives the same bits as the GPU: that is how the kernels are tested on a CPU-only machine).
"""

from __future__ import annotations

import functools

import torch

# --- reference (torch ops) -------------------------------------------------------------------------------------


def dequant_int8_reference(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W = q * scale, one scale per output row."""
    return qweight.to(dtype) * scale.to(dtype)


def dequant_int4_reference(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                           dtype: torch.dtype) -> torch.Tensor:
    """W = q * scale - shift per group of inputs; q is two 4-bit values per byte along a row, low nibble first."""
    out_features, half = packed.shape
    groups = scale.shape[1]
    q = torch.stack((packed & 0x0F, packed >> 4), dim=-1).reshape(out_features, groups, (2 * half) // groups)
    return (q.to(dtype) * scale.to(dtype)[..., None] - shift.to(dtype)[..., None]).reshape(out_features, 2 * half)


# --- Triton kernels ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    """The kernels module, or None where Triton is missing. Imported on first use (TRITON_INTERPRET is read then)."""
    try:
        from . import dequant_triton
    except ImportError:
        return None
    return dequant_triton


def triton_available() -> bool:
    return _triton_kernels() is not None


def dequant_int8_triton(qweight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    kernels = _triton_kernels()
    out = torch.empty(qweight.shape, dtype=torch.bfloat16, device=qweight.device)
    block = 4096
    kernels.int8_kernel[(-(-qweight.numel() // block),)](qweight, scale, out, qweight.numel(), qweight.shape[1],
                                                         BLOCK=block)
    return out


def dequant_int4_triton(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    kernels = _triton_kernels()
    out_features, half_in = packed.shape
    n_groups = scale.numel()
    out = torch.empty(out_features, 2 * half_in, dtype=torch.bfloat16, device=packed.device)
    groups_per_program = 32
    kernels.int4_kernel[(-(-n_groups // groups_per_program),)](packed, scale, shift, out, n_groups,
                                                               HALF_GROUP=half_in // scale.shape[1],
                                                               GROUPS=groups_per_program)
    return out


def _use_triton(dtype: torch.dtype, *tensors: torch.Tensor) -> bool:
    """The kernels take contiguous bf16 tensors on a CUDA GPU; anything else goes through the reference."""
    return (tensors[0].is_cuda and dtype == torch.bfloat16 and all(t.dtype == torch.bfloat16 for t in tensors[1:])
            and all(t.is_contiguous() for t in tensors) and triton_available())


# --- the custom ops ------------------------------------------------------------------------------------------------


@torch.library.custom_op("fluxdepth::dequant_int8", mutates_args=())
def dequant_int8(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _use_triton(dtype, qweight, scale):
        return dequant_int8_triton(qweight, scale)
    return dequant_int8_reference(qweight, scale, dtype)


@dequant_int8.register_fake
def _(qweight, scale, dtype):
    return qweight.new_empty(qweight.shape, dtype=dtype)


@torch.library.custom_op("fluxdepth::dequant_int4", mutates_args=())
def dequant_int4(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    half_group = packed.shape[1] // max(scale.shape[1], 1)
    power_of_two = half_group > 0 and half_group & (half_group - 1) == 0  # Triton tiles are powers of two
    if power_of_two and _use_triton(dtype, packed, scale, shift):
        return dequant_int4_triton(packed, scale, shift)
    return dequant_int4_reference(packed, scale, shift, dtype)


@dequant_int4.register_fake
def _(packed, scale, shift, dtype):
    return packed.new_empty((packed.shape[0], 2 * packed.shape[1]), dtype=dtype)
