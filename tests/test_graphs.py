"""CUDA graphs of the compiled transformer call (pipeline/graphs.py), on the CPU.

A real CUDA graph needs a GPU (benchmarks/gpu_smoke.py checks it there, pixels against the same load without
graphs). Here a stand-in capture gives a replay the same blindness: it runs a frozen copy of the transformer made at
capture time that shares the tensors (weights, LoRA weights and scales, read where they are, as a graph reads its
addresses) but not the Python (hooks and their lists of LoRAs). A graph the manager fails to drop when the LoRAs
change then gives the old image, as on the GPU."""

import copy

import numpy as np
import pytest
import torch

from conftest import DEPTH_SYN
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
from fluxdepth_ui.pipeline.graphs import GraphedForward, graphs_enabled, weight_addresses
from fluxdepth_ui.pipeline.tiny import build_tiny_components
from fluxdepth_ui.settings import StyleLora

from test_loras import kohya_lora, peft_lora

TINY = ModelSource("tiny-random")
STEPS = 3  # the first call compiles, the second captures, the third replays


def frozen_capture(transformer, shared_tensors):
    """A stand-in for capture_cuda_graph: (replay, output buffers) where the replay writes into the same buffers what
    a copy of the transformer frozen now computes from the static inputs."""

    def capture(run, static):
        graphed = transformer.__dict__["forward"]
        memo = {id(t): t for t in [*transformer.parameters(), *transformer.buffers(), *shared_tensors()]}
        memo[id(graphed)] = graphed
        frozen = copy.deepcopy(transformer, memo)
        del frozen.__dict__["forward"]
        out = run(static)

        def replay():
            with torch.no_grad():
                fresh = type(frozen).forward(frozen, **static)
            for buffer, value in zip(out, fresh):
                buffer.copy_(value)

        return replay, out

    return capture


def lora_tensors(manager):
    stack = manager._loras
    if stack is None:
        return []
    return [t for pair in stack._weights.values() for t in pair] + list(stack._scales.values())


@pytest.fixture(scope="module")
def depth():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256))


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    peft_lora(root / "ink.safetensors", 11)
    kohya_lora(root / "kohya.safetensors", 13)
    return root


def shot(*loras, seed=7):
    return GenerationSettings("a wooden chair", seed=seed, steps=STEPS, loras=loras)


def graphed_manager(tmp_path, lora_dir):
    manager = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    manager.load()
    manager._compiled = True  # what the compiled fp8 tier sets on a GPU; graphs follow only compiled code
    transformer = manager._pipe.transformer
    manager._graphed = GraphedForward(transformer, manager._graphs_wanted,
                                      capture=frozen_capture(transformer, lambda: lora_tensors(manager)))
    return manager


def test_replayed_images_equal_plain_ones_through_lora_and_scale_changes(tmp_path, depth, lora_dir):
    plain = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    graphed = graphed_manager(tmp_path, lora_dir)
    runs = [shot(), shot(seed=8), shot(StyleLora("ink.safetensors", 0.9)), shot(StyleLora("ink.safetensors", 0.3)),
            shot(StyleLora("ink.safetensors", 0.3), StyleLora("kohya.safetensors", 0.8)), shot()]
    wrapper = graphed._graphed
    for settings in runs:
        want = np.asarray(plain.generate(depth.control, settings).pixels)
        before = wrapper.replays
        got = np.asarray(graphed.generate(depth.control, settings).pixels)
        assert np.array_equal(got, want), settings.loras
        if settings.seed == 8:  # same size and LoRAs as the image before: every call replays
            assert wrapper.replays - before == STEPS
    assert wrapper.replays > STEPS and len(wrapper.graphs) == 1
    assert graphed.status()["cuda_graphs"].startswith("1 size(s) captured")


def test_a_size_is_captured_at_its_second_call_and_at_most_two_are_kept(tmp_path, depth, lora_dir):
    manager = graphed_manager(tmp_path, lora_dir)
    wrapper = manager._graphed
    sizes = [prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=side)).control for side in (256, 320, 384)]
    plain = PipelineManager(TINY, cache_root=str(tmp_path), lora_dir=str(lora_dir))
    for control in sizes:
        got = manager.generate(control, shot()).pixels
        assert np.array_equal(np.asarray(got), np.asarray(plain.generate(control, shot()).pixels))
    assert len(wrapper.graphs) == 2  # the oldest size's graph (and its memory) went
    tokens = [dict(key)["hidden_states"][1][1] for key in wrapper.graphs]  # (batch, tokens, channels)
    assert tokens == [c.width * c.height // 256 for c in sizes[1:]]  # the two newest sizes, in order


def test_moved_weights_are_captured_again_and_a_failed_capture_runs_plain(tmp_path, depth, lora_dir):
    manager = graphed_manager(tmp_path, lora_dir)
    wrapper = manager._graphed
    transformer = manager._pipe.transformer
    first = manager.generate(depth.control, shot()).pixels
    (key, (_, _, _, addresses)), = wrapper.graphs.items()
    assert addresses == weight_addresses(transformer)
    # Weights given new storage behind the manager's back (what a re-plan does): the graph is not replayed.
    for parameter in transformer.parameters():
        parameter.data = parameter.data.clone()
    assert weight_addresses(transformer) != addresses
    again = manager.generate(depth.control, shot()).pixels
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert wrapper.graphs[key][3] == weight_addresses(transformer)

    def broken(run, static):
        raise RuntimeError("operation not permitted when stream is capturing")

    wrapper.capture = broken
    wrapper.clear()
    third = manager.generate(depth.control, shot()).pixels
    assert np.array_equal(np.asarray(first), np.asarray(third))
    assert wrapper.failed and not wrapper.graphs
    status = manager.status()
    assert status["cuda_graphs"] == wrapper.failed
    assert wrapper.failed.startswith("CUDA graphs off for this load: capturing the transformer failed (RuntimeError)")
    assert wrapper.failed in status["notes"]
    assert "stream is capturing" not in " ".join(status["notes"])  # the library's text stays in the log


def test_graphs_follow_only_a_compiled_resident_transformer_and_go_with_unload(tmp_path, depth, lora_dir,
                                                                              monkeypatch):
    manager = graphed_manager(tmp_path, lora_dir)
    assert manager._graphs_wanted()
    manager._compiled = False
    assert not manager._graphs_wanted()
    manager.generate(depth.control, shot())
    assert manager._graphed.replays == 0 and not manager._graphed.graphs
    assert manager.status()["cuda_graphs"].startswith("off")
    manager._compiled = True
    transformer = manager._pipe.transformer
    manager.unload()
    assert manager._graphed is None and "forward" not in transformer.__dict__
    monkeypatch.delenv("FLUXDEPTH_CUDA_GRAPHS", raising=False)
    assert not graphs_enabled()  # opt-in until the GPU smoke's comparison passes (docs/benchmarks.md "Session 37")
    monkeypatch.setenv("FLUXDEPTH_CUDA_GRAPHS", "1")
    assert graphs_enabled()


def transformer_inputs(tokens: int = 16, text: int = 8) -> dict:
    """One call's arguments for the tiny transformer, as the pipeline passes them (by name)."""
    g = torch.Generator().manual_seed(0)
    return dict(hidden_states=torch.randn(1, tokens, 128, generator=g),
                encoder_hidden_states=torch.randn(1, text, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g), timestep=torch.tensor([0.5]),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3), guidance=torch.tensor([3.5]),
                return_dict=False)


def test_positional_calls_pass_through_and_remove_restores_the_forward():
    transformer = build_tiny_components(0)["transformer"]
    inputs = transformer_inputs()
    with torch.no_grad():
        want = transformer(**inputs)[0]
    calls = []
    wrapper = GraphedForward(transformer, lambda: True, capture=lambda run, static: calls.append(1))
    hidden = inputs.pop("hidden_states")
    for _ in range(3):  # positional: never captured (the key is made from names)
        with torch.no_grad():
            assert torch.equal(transformer(hidden, **inputs)[0], want)
    assert not calls and not wrapper.seen
    wrapper.remove()
    assert "forward" not in transformer.__dict__


def plain_capture(run, static):
    """A stand-in capture that replays by running the call again into the same output buffers."""
    out = run(static)

    def replay():
        fresh = run(static)
        for buffer, value in zip(out, fresh):
            buffer.copy_(value)

    return replay, out


@pytest.mark.parametrize("first_call_grad", [False, True])
def test_a_capture_that_would_compile_other_code_is_refused(first_call_grad):
    """The graph must record the compiled code the plain calls run. Here the first (plain) call compiles the blocks
    with gradients on, and the capture, under no_grad, would need other code (dynamo guards on grad mode): the capture
    is refused and the call runs plain; compiled alike, it is captured."""
    torch._dynamo.reset()
    transformer = build_tiny_components(0)["transformer"]
    transformer.compile_repeated_blocks(backend="eager", fullgraph=True)
    inputs = transformer_inputs()
    with torch.no_grad():
        want = transformer(**inputs)[0].clone()
    torch._dynamo.reset()
    wrapper = GraphedForward(transformer, lambda: True, capture=plain_capture)
    with torch.set_grad_enabled(first_call_grad):
        first = transformer(**inputs)[0]
    with torch.no_grad():
        second = transformer(**inputs)[0]
        third = transformer(**inputs)[0]
    for got in (first, second, third):
        assert torch.equal(got.detach(), want)
    if first_call_grad:
        assert wrapper.failed and "capturing the transformer failed" in wrapper.failed and not wrapper.graphs
        assert wrapper.replays == 0
    else:
        assert wrapper.failed is None and len(wrapper.graphs) == 1 and wrapper.replays == 1
