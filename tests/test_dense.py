"""Dense-path quantized linears (issue 6): same math as quanto's own dequantization, same outputs."""

import numpy as np
import pytest
import torch
from optimum.quanto import QLinear

from fluxdepth_ui.pipeline.dense import DenseInt4Linear, DenseInt8Linear, densify
from fluxdepth_ui.pipeline.tiny import build_tiny_components
from fluxdepth_ui.pipeline.variants import exclude_for, quantize_module


@pytest.mark.parametrize("weights,cls", [("qint8", DenseInt8Linear), ("qint4", DenseInt4Linear)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dense_linear_matches_quanto_dequantized_weight(weights, cls, dtype):
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(256, 96)).to(dtype)
    quantize_module(lin, weights)
    q = lin[0]
    assert isinstance(q, QLinear)
    dense = cls.from_quanto(q)
    # The weight itself: exactly quanto's dequantization.
    assert torch.equal(dense.weight(), q.weight.dequantize().to(dtype))
    # The output: a dense matmul with that weight, within bf16 rounding of quanto's own forward.
    x = torch.randn(512, 256, dtype=dtype)
    ref = torch.nn.functional.linear(x, q.weight.dequantize().to(dtype), q.bias)
    assert torch.equal(dense(x), ref)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(dense(x), q(x).to(dtype), atol=tol * float(ref.abs().max()), rtol=0)


def test_int4_packs_two_per_byte_and_groups_along_inputs():
    torch.manual_seed(1)
    lin = torch.nn.Sequential(torch.nn.Linear(256, 64)).to(torch.bfloat16)
    quantize_module(lin, "qint4")
    dense = DenseInt4Linear.from_quanto(lin[0])
    assert dense.packed.dtype == torch.uint8 and dense.packed.shape == (64, 128)
    assert dense.scale.shape == (64, 256 // dense.group_size) and dense.scale.dtype == torch.bfloat16
    bytes_dense = sum(b.numel() * b.element_size() for b in dense.buffers())
    assert bytes_dense < 64 * 256 * 2 / 3.5  # ~4.3 bits per weight incl. scales, vs 16 in bf16


def test_densified_tiny_transformer_gives_the_same_images_as_quanto(tmp_path):
    """The whole tiny transformer, quanto forward vs dense forward: same latents within bf16/fp32 rounding."""
    for weights in ("qint8", "qint4"):
        comps = build_tiny_components(0)
        t = comps["transformer"]
        quantize_module(t, weights, exclude_for("transformer"))
        n_q = sum(isinstance(m, QLinear) for m in t.modules())
        kw = dict(hidden_states=torch.randn(1, 64, 128), encoder_hidden_states=torch.randn(1, 16, 32),
                  pooled_projections=torch.randn(1, 32), timestep=torch.tensor([0.5]),
                  guidance=torch.tensor([10.0]), img_ids=torch.zeros(64, 3), txt_ids=torch.zeros(16, 3),
                  return_dict=False)
        with torch.no_grad():
            ref = t(**kw)[0]
            assert densify(t) == n_q > 0
            assert not any(isinstance(m, QLinear) for m in t.modules())
            out = t(**kw)[0]
        np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-4 * float(ref.abs().max()))


TRITON_CHECK = r"""
import torch
from optimum.quanto import QLinear
from fluxdepth_ui.pipeline import dequant
from fluxdepth_ui.pipeline.dense import DenseInt4Linear, DenseInt8Linear
from fluxdepth_ui.pipeline.variants import quantize_module

assert dequant.triton_available(), "triton is not installed: pip install -e '.[test]'"
torch.manual_seed(0)
# Real quanto weights (its bf16 int4 layout needs rows in 16s), FLUX's group size, sizes off the block size.
for out_f, in_f in ((48, 256), (32, 3072), (16, 640)):
    lin = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).to(torch.bfloat16)
    lin8 = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).to(torch.bfloat16)
    quantize_module(lin, "qint4")
    quantize_module(lin8, "qint8")
    d4, d8 = DenseInt4Linear.from_quanto(lin[0]), DenseInt8Linear.from_quanto(lin8[0])
    w4 = dequant.dequant_int4_triton(d4.packed, d4.scale, d4.shift)
    w8 = dequant.dequant_int8_triton(d8.qweight, d8.scale)
    assert torch.equal(w4, dequant.dequant_int4_reference(d4.packed, d4.scale, d4.shift, torch.bfloat16))
    assert torch.equal(w4, lin[0].weight.dequantize()), "int4 differs from quanto's own dequantization"
    assert torch.equal(w8, dequant.dequant_int8_reference(d8.qweight, d8.scale, torch.bfloat16))
    assert torch.equal(w8, lin8[0].weight.dequantize()), "int8 differs from quanto's own dequantization"
# Random bytes and scales over the whole range, including negative shifts and rounding ties.
packed = torch.randint(0, 256, (29, 192), dtype=torch.uint8)
scale = (torch.rand(29, 3) * 4).to(torch.bfloat16)
shift = (torch.randn(29, 3) * 8).to(torch.bfloat16)
assert torch.equal(dequant.dequant_int4_triton(packed, scale, shift),
                   dequant.dequant_int4_reference(packed, scale, shift, torch.bfloat16))
q = torch.randint(-128, 128, (29, 333), dtype=torch.int8)
s = (torch.rand(29, 1) * 0.1).to(torch.bfloat16)
assert torch.equal(dequant.dequant_int8_triton(q, s), dequant.dequant_int8_reference(q, s, torch.bfloat16))
print("ok")
"""


def test_triton_kernels_give_quantos_bits(tmp_path):
    """The GPU kernels, run by Triton's interpreter on the CPU: bit-identical to the reference and to quanto."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("weights,cls", [("qint8", DenseInt8Linear), ("qint4", DenseInt4Linear)])
def test_dense_linears_trace_whole_under_torch_compile(weights, cls):
    """The dequant ops are registered custom ops with shape functions: torch.compile(fullgraph=True), as the compiled
    tiers use on the GPU, traces through them without a graph break and computes the same thing."""
    torch.manual_seed(2)
    lin = torch.nn.Sequential(torch.nn.Linear(256, 64)).to(torch.bfloat16)
    quantize_module(lin, weights)
    dense = cls.from_quanto(lin[0])
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    torch._dynamo.reset()
    compiled = torch.compile(dense, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), dense(x))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("component,weights", [("transformer", "qint8"), ("transformer", "qint4"),
                                               ("text_encoder_2", "qint8")])  # the tiers' pairs (variants.VARIANTS)
def test_quantizing_block_by_block_gives_the_whole_modules_weights(component, weights):
    """On a GPU the first start quantizes one block at a time on the card; on the CPU here, the same path must give
    exactly the tensors of quantizing the whole component at once."""
    from fluxdepth_ui.pipeline.variants import QUANTIZED_BLOCK_LISTS, quantize_component

    whole = quantize_component(build_tiny_components(3, torch.bfloat16)[component], weights, component)
    told = []
    by_block = quantize_component(build_tiny_components(3, torch.bfloat16)[component], weights, component,
                                  device=torch.device("cpu"), on_block=lambda done, total: told.append((done, total)))
    expected, got = _state(whole), _state(by_block)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    blocks = [b for path in QUANTIZED_BLOCK_LISTS[component] for b in by_block.get_submodule(path)]
    assert told == [(i + 1, len(blocks)) for i in range(len(blocks))]  # the load's progress line counts blocks
    assert blocks and all(not isinstance(m, torch.nn.Linear) or isinstance(m, (DenseInt8Linear, DenseInt4Linear))
                          for b in blocks for m in b.modules())


def test_a_card_that_runs_out_mid_quantization_finishes_on_the_cpu(monkeypatch, caplog):
    """Another program holds the card: the block that did not fit and every later one are quantized on the CPU, with
    one warning, and the weights are those of an all-CPU quantization."""
    from fluxdepth_ui.pipeline import variants

    component, weights = "transformer", "qint4"
    expected = _state(variants.quantize_component(build_tiny_components(5, torch.bfloat16)[component], weights,
                                                  component))
    real = variants.quantize_module
    calls = []

    def quantize_until_full(module, weights, exclude=()):
        calls.append(module)
        if len(calls) == 2:  # the second block: half quantized when the card runs out
            from optimum.quanto import qint4, quantize

            first = next(name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear))
            quantize(module, weights=qint4, include=[first])  # wrapped, not yet frozen
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(module, weights, exclude)

    monkeypatch.setattr(variants, "quantize_module", quantize_until_full)
    with caplog.at_level("WARNING", logger="fluxdepth_ui.pipeline.variants"):
        got = _state(variants.quantize_component(build_tiny_components(5, torch.bfloat16)[component], weights,
                                                 component, device=torch.device("cpu")))
    assert len(calls) == 3  # block one, block two (ran out), then the whole module's rest on the CPU
    assert [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
