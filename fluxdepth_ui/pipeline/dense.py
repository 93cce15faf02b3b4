"""Weight-only quantized linears for big inputs: dequantize the weight to bf16 once per call, then a dense matmul.

A 1024x1024 FLUX step feeds every linear 4096+ rows, so the matmul is compute-bound and weight bytes barely matter;
quanto's own kernels (per-layer dequant/scale passes for int8, GEMV-oriented TinyGemm for int4) are slow there
(docs/benchmarks.md). These modules keep the memory win (int8, or int4 packed two per byte with a scale and shift per
group) in a plain layout that one kernel unpacks in a single pass (`dequant.py`), and that loads from the cache as a
plain state dict, without quanto's int4 re-layout. quanto stays the quantizer: weights are converted from its
tensors, with exactly its math (W = q * scale for int8, W = q * scale - shift per group for int4).

Rows are few only in tests and tiny models; every real call here (4096+ image tokens, 512 T5 tokens) is a big input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dequant import dequant_int4, dequant_int8


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """Quantized weights are parameters (never trained), not buffers: diffusers' group offloading moves a group's
    buffers to the GPU but puts back only its parameters, so buffers piled up on the card when a VRAM budget streams
    the transformer (docs/benchmarks.md, "VRAM budget")."""
    return nn.Parameter(tensor, requires_grad=False)


class DenseInt8Linear(nn.Module):
    """int8 weight with one scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype = torch.bfloat16,
                 device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.qweight = _frozen(torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.scale = _frozen(torch.empty(out_features, 1, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_quanto(cls, qlinear) -> "DenseInt8Linear":
        w = qlinear.weight
        data, scale = w._data, w._scale
        if data.dtype != torch.int8 or scale.shape != (w.shape[0], 1):
            raise ValueError(f"not a per-row int8 quanto weight: {type(w).__name__} {data.dtype} {tuple(scale.shape)}")
        module = cls(qlinear.in_features, qlinear.out_features, qlinear.bias is not None, scale.dtype, data.device)
        module.qweight.copy_(data)
        module.scale.copy_(scale)
        if qlinear.bias is not None:
            module.bias.data.copy_(qlinear.bias.data.to(scale.dtype))
        return module

    def weight(self) -> torch.Tensor:
        return dequant_int8(self.qweight, self.scale, self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequant_int8(self.qweight, self.scale, x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class DenseInt4Linear(nn.Module):
    """4-bit weight, two values per byte along in_features (low nibble first), scale and shift per input group."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        if in_features % group_size or group_size % 2:
            raise ValueError(f"group size {group_size} must be even and divide in_features {in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.packed = _frozen(torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.scale = _frozen(torch.empty(out_features, groups, dtype=dtype, device=device))
        self.shift = _frozen(torch.empty(out_features, groups, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_quanto(cls, qlinear) -> "DenseInt4Linear":
        from optimum.quanto.tensor.weights.qbits import WeightQBitsTensor

        w = qlinear.weight
        canonical = w if type(w) is WeightQBitsTensor else w.weight_qbits_tensor()
        if canonical.axis != 0 or not canonical._shift.dtype.is_floating_point:
            raise ValueError("expected a quanto qint4 weight grouped along input features with a float shift")
        q = canonical._data.unpack()  # (n_groups, group_size) uint8, groups run along each row
        out_features, in_features = w.shape
        group = (out_features * in_features) // canonical._scale.numel()  # _group_size is not always kept
        q = q.reshape(out_features, in_features)
        module = cls(in_features, out_features, qlinear.bias is not None, group, canonical._scale.dtype, q.device)
        module.packed.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
        module.scale.copy_(canonical._scale.reshape(out_features, in_features // group))
        module.shift.copy_(canonical._shift.reshape(out_features, in_features // group))
        if qlinear.bias is not None:
            module.bias.data.copy_(qlinear.bias.data.to(canonical._scale.dtype))
        return module

    def weight(self) -> torch.Tensor:
        return dequant_int4(self.packed, self.scale, self.shift, self.scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequant_int4(self.packed, self.scale, self.shift, x.dtype), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 group {self.group_size}"


def densify(model: nn.Module) -> int:
    """Replace every quanto QLinear in `model` by the dense-path module holding the same quantized weights.

    Returns how many were replaced.
    """
    from optimum.quanto import QLinear, qint4, qint8

    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, QLinear):
            continue
        if module.weight_qtype == qint8:
            dense = DenseInt8Linear.from_quanto(module)
        elif module.weight_qtype == qint4:
            dense = DenseInt4Linear.from_quanto(module)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, dense)
        replaced += 1
    return replaced


def dense_layout(model: nn.Module) -> dict[str, dict]:
    """Which modules are dense quantized linears, and their shapes: what a cache needs to rebuild the module tree."""
    layout = {}
    for name, module in model.named_modules():
        if isinstance(module, DenseInt8Linear):
            layout[name] = {"kind": "int8", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None}
        elif isinstance(module, DenseInt4Linear):
            layout[name] = {"kind": "int4", "in": module.in_features, "out": module.out_features,
                            "bias": module.bias is not None, "group_size": module.group_size}
    return layout


def apply_dense_layout(model: nn.Module, layout: dict[str, dict], dtype: torch.dtype) -> None:
    """Swap the named modules of an (empty, meta-device) model for dense linears, ready for a state dict."""
    for name, spec in layout.items():
        if spec["kind"] == "int8":
            module = DenseInt8Linear(spec["in"], spec["out"], spec["bias"], dtype, device="meta")
        elif spec["kind"] == "int4":
            module = DenseInt4Linear(spec["in"], spec["out"], spec["bias"], spec["group_size"], dtype,
                                     device="meta")
        else:
            raise ValueError(f"unknown dense layout kind {spec['kind']!r} for {name}")
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
