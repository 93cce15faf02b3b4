"""Triton kernels for `dequant.py` (imported only where Triton is installed). Same bits as the torch reference."""

import triton
import triton.language as tl


@triton.jit
def _round_bf16(x):
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def int8_kernel(q_ptr, scale_ptr, out_ptr, numel, in_features, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float32)
    s = tl.load(scale_ptr + offs // in_features, mask=mask, other=0).to(tl.float32)
    tl.store(out_ptr + offs, _round_bf16(q * s).to(tl.bfloat16), mask=mask)


@triton.jit
def int4_kernel(packed_ptr, scale_ptr, shift_ptr, out_ptr, n_groups, HALF_GROUP: tl.constexpr,
                GROUPS: tl.constexpr):
    # Groups run along rows and never straddle one, so flat group g owns packed bytes [g * HALF_GROUP, +HALF_GROUP)
    # and outputs [g * 2 * HALF_GROUP, +2 * HALF_GROUP): a program takes GROUPS whole groups, one scale and shift
    # each, with no per-element index arithmetic.
    group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)
    valid = group < n_groups
    s = tl.load(scale_ptr + group, mask=valid, other=0).to(tl.float32)[:, None]
    z = tl.load(shift_ptr + group, mask=valid, other=0).to(tl.float32)[:, None]
    byte = tl.load(packed_ptr + group[:, None] * HALF_GROUP + tl.arange(0, HALF_GROUP)[None, :],
                   mask=valid[:, None], other=0)
    low = _round_bf16(_round_bf16((byte & 0x0F).to(tl.float32) * s) - z)
    high = _round_bf16(_round_bf16((byte >> 4).to(tl.float32) * s) - z)
    # Byte i holds weights 2i and 2i+1: interleaving gives one contiguous, coalesced store.
    out = tl.interleave(low, high).to(tl.bfloat16)
    tl.store(out_ptr + group[:, None] * (2 * HALF_GROUP) + tl.arange(0, 2 * HALF_GROUP)[None, :], out,
             mask=valid[:, None])
