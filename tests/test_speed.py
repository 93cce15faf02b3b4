"""The fast tier's decisions (issue 6): where torch.compile runs, where fp8 is refused, where compiled code is kept."""

import os

import pytest
import torch

from fluxdepth_ui.pipeline import PipelineError, speed
from fluxdepth_ui.pipeline.speed import check_fp8, compile_cache_dir, compile_transformer, decide_compile
from fluxdepth_ui.pipeline.tiny import build_tiny_components

CUDA = torch.device("cuda")


def test_compile_runs_on_cuda_only_and_not_where_it_cannot_pay(monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    assert not decide_compile(False, CUDA, "gpu").enabled and decide_compile(False, CUDA, "gpu").reason == ""
    on = decide_compile(True, CUDA, "gpu")
    assert on.enabled and "first image at each new size compiles" in on.reason
    assert decide_compile(True, CUDA, "model_offload").enabled
    seq = decide_compile(True, CUDA, "sequential_offload")
    assert not seq.enabled and "sequential offload" in seq.reason
    for device in ("cpu", "mps"):
        off = decide_compile(True, torch.device(device), "cpu")
        assert not off.enabled and device in off.reason
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")  # compiled once at start-up there (tests/test_zerogpu.py)
    zero = decide_compile(True, CUDA, "gpu")
    assert zero.enabled and "ahead of time at start-up" in zero.reason


def test_fp8_refusals_are_one_line_and_name_the_way_out(monkeypatch):
    with pytest.raises(PipelineError, match=r"needs an NVIDIA GPU .* runs on cpu: choose bf16, qint8 or qint4"):
        check_fp8(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(PipelineError, match=r"RTX 3090 is 8.6: choose qint8 instead"):
        check_fp8(CUDA)
    # ZeroGPU's cards are H200s; outside a GPU call the device is emulated, so its capability is not asked.
    import importlib.util

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))  # never asked there
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else real(name, *a))
    check_fp8(CUDA)


def test_compile_wraps_the_repeated_blocks_and_keeps_code_beside_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(speed, "USER_INDUCTOR_CACHE", None)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    transformer = build_tiny_components(0)["transformer"]  # makes torch fill in its /tmp default
    compile_transformer(transformer, str(tmp_path))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == compile_cache_dir(str(tmp_path))
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    assert blocks and all(b._compiled_call_impl is not None for b in blocks)
    assert transformer._compiled_call_impl is None  # regional: the top level stays eager
    # A folder the user chose before starting the app wins.
    monkeypatch.setattr(speed, "USER_INDUCTOR_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compile_transformer(build_tiny_components(0)["transformer"], str(tmp_path))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_fp8_without_torchao_says_how_to_get_it(monkeypatch):
    import importlib.util

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(PipelineError, match=r"needs torchao: pip install torchao"):
        check_fp8(CUDA)



def test_fp8_takes_torchaos_tuned_compile_options_unless_turned_off(monkeypatch):
    """torchao is not on the CPU test machines: a stand-in records the config the tier builds."""
    import sys
    import types

    configs = []
    quantization = types.ModuleType("torchao.quantization")
    quantization.PerRow = lambda: "per-row"
    quantization.PerTensor = lambda: "per-tensor"
    quantization.Float8DynamicActivationFloat8WeightConfig = lambda **kw: configs.append(kw) or kw
    quantization.quantize_ = lambda module, config, filter_fn=None: None
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    transformer = build_tiny_components(0)["transformer"]
    monkeypatch.delenv("FLUXDEPTH_COMPILE_TUNING", raising=False)
    speed.fp8_quantize_transformer(transformer, torch.device("cpu"), ())
    monkeypatch.setenv("FLUXDEPTH_COMPILE_TUNING", "1")
    speed.fp8_quantize_transformer(transformer, torch.device("cpu"), ())
    # Off unless asked for: the tuning cost minutes of cold compile for no faster steps (docs/benchmarks.md).
    assert [c["set_inductor_config"] for c in configs] == [False, True]
    assert all(c["granularity"] == "per-row" for c in configs)
    speed.fp8_quantize_transformer(transformer, torch.device("cpu"), (), per_tensor=True)  # the benchmarks' option
    assert configs[-1]["granularity"] == "per-tensor"


def test_fp8_quantizes_a_streamed_transformer_one_block_on_the_card_at_a_time(monkeypatch):
    """Under a budget that streams the transformer, fp8's quantization never brings the whole transformer to the GPU
    (it did: a 12 GiB card ran out of memory at load, docs/benchmarks.md "Session 33"). Module moves are recorded,
    not made, so this runs without a GPU; torchao is a stand-in, as above."""
    import sys
    import types

    quantization = types.ModuleType("torchao.quantization")
    quantization.PerRow = lambda: "per-row"
    quantization.Float8DynamicActivationFloat8WeightConfig = lambda **kw: kw
    transformer = build_tiny_components(0)["transformer"]
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    where = {id(m): "cpu" for m in transformer.children()} | {id(b): "cpu" for b in blocks}
    most_blocks_on_card = []

    def quantize_(module, config, filter_fn=None):
        most_blocks_on_card.append(sum(where[id(b)] == "cuda" for b in blocks))

    quantization.quantize_ = quantize_
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)

    def record_moves(module):
        def to(device, *args, **kwargs):
            where[id(module)] = torch.device(device).type
            for inner in module.modules():  # a module moves all it holds
                if id(inner) in where:
                    where[id(inner)] = torch.device(device).type
            return module
        monkeypatch.setattr(module, "to", to)

    for module in [transformer, *transformer.children(), *blocks]:
        record_moves(module)

    speed.fp8_quantize_transformer(transformer, CUDA, (), keep_on_gpu=False)
    assert max(most_blocks_on_card) == 1
    assert all(where[id(b)] == "cpu" for b in blocks)
    assert {where[id(m)] for m in speed.outside_blocks(transformer)} == {"cpu"}

    most_blocks_on_card.clear()
    speed.fp8_quantize_transformer(transformer, CUDA, (), keep_on_gpu=True)
    assert all(where[id(b)] == "cuda" for b in blocks)
    assert {where[id(m)] for m in speed.outside_blocks(transformer)} == {"cuda"}
    # the layers outside the blocks are all of the transformer's other children
    assert {id(m) for m in speed.outside_blocks(transformer)} == {
        id(m) for name, m in transformer.named_children() if name not in speed.BLOCK_LISTS}
    assert len(speed.outside_blocks(transformer)) >= 4
