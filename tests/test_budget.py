"""VRAM budget: parsing, the residency plan on FLUX.1-Depth-dev sizes, streaming applied on tiny-random (CPU, same
pixels as resident), and the prompt-embedding cache. GPU peaks and times: benchmarks/vram_budget.py."""

import numpy as np
import pytest
import torch
from diffusers import FluxControlPipeline

from conftest import DEPTH_SYN
from fluxdepth_ui.cli import main
from fluxdepth_ui.depth import DepthSettings, prepare_depth
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineError, PipelineManager, control_tensor
from fluxdepth_ui.pipeline.budget import (
    DENOISER_SHARE, GIB, HEADROOM, STREAM_GROUPS, MemoryPlan, apply_memory_plan, faster_tier_hint,
    parse_budget, plan_memory, tensor_homes, transformer_block_sizes,
)
from fluxdepth_ui.pipeline.placement import module_bytes
from fluxdepth_ui.pipeline.tiny import build_tiny_components
from fluxdepth_ui.settings import PipelineSpec, SettingsError

# FLUX.1-Depth-dev component sizes (bytes held), measured on the lent GPU (docs/benchmarks.md): 19 double blocks of
# 0.6 GiB and 38 single blocks of 0.28 GiB in bf16; qint4 holds about a quarter of it.
DOUBLE, SINGLE = int(0.6 * GIB), int(0.28 * GIB)
BF16_BLOCKS = [DOUBLE] * 19 + [SINGLE] * 38
BF16 = {"transformer": sum(BF16_BLOCKS) + int(0.2 * GIB), "text_encoder_2": int(9.5 * GIB),
        "text_encoder": int(0.25 * GIB), "vae": int(0.16 * GIB)}
QINT4_BLOCKS = [b // 4 for b in BF16_BLOCKS]
QINT4 = {**BF16, "transformer": sum(QINT4_BLOCKS) + int(0.2 * GIB), "text_encoder_2": int(4.8 * GIB)}
WORK = int(2.5 * GIB)


def usable(budget_gib: float, layout: str = "even") -> int:
    """The budget less the allocator's headroom: a share of it, at least a floor on a card of 8 GiB or more (both by
    layout: budget.HEADROOM)."""
    budget = int(budget_gib * GIB)
    share, floor = HEADROOM[layout]
    return budget - max(int(budget * share), min(floor, budget // 4))


@pytest.mark.parametrize("text, value", [("12", 12.0), (" 7.5GiB", 7.5), ("16gb", 16.0), ("12g", 12.0), ("auto", "auto"),
                                         ("AUTO", "auto"), (None, None), ("", None), (24, 24.0)])
def test_parse_budget(text, value):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text, fragment", [("lots", "is not a size"), ("0.5", "out of range"),
                                            ("-3", "out of range"), ("nan", "must be a number")])
def test_bad_budgets_are_one_line(text, fragment):
    with pytest.raises(SettingsError, match=fragment):
        parse_budget(text)


def test_bad_budget_on_the_command_line_is_exit_2(tmp_path, capsys):
    rc = main(["generate", str(DEPTH_SYN), "--prompt", "x", "--model", "tiny-random", "--vram-budget", "lots",
               "--out", str(tmp_path / "a.png")])
    assert rc == 2 and "VRAM budget 'lots' is not a size" in capsys.readouterr().err
    with pytest.raises(SettingsError):
        PipelineSpec(vram_budget="0.2")


def test_everything_resident_when_it_fits():
    plan = plan_memory(80 * GIB, BF16, WORK, BF16_BLOCKS, "bf16")
    assert plan.resident == ("text_encoder_2", "text_encoder", "vae", "transformer") and plan.streamed == ()
    assert plan.summary() == "bf16 transformer resident, 80.0 GiB budget"


def test_t5_gives_way_first_and_the_denoiser_stays(monkeypatch):
    monkeypatch.delenv("FLUXDEPTH_STREAM_LAYOUT", raising=False)
    plan = plan_memory(12 * GIB, QINT4, WORK, QINT4_BLOCKS, "qint4")
    assert "transformer" in plan.resident and plan.streamed[0] == "text_encoder_2"
    assert plan.summary().startswith("qint4 transformer resident, T5 on demand")
    needed = sum(QINT4[c] for c in plan.resident) + WORK
    assert needed <= usable(12)
    # The allocator's headroom has a floor (measured reserved over live), not only a share of a small budget: 1 GiB
    # and 6% with the even layout (the default), 2 GiB and 12% with the count layout.
    from fluxdepth_ui.pipeline.budget import allocator_headroom

    assert allocator_headroom(8 * GIB) == GIB and allocator_headroom(24 * GIB) == int(24 * GIB * 0.06)
    assert allocator_headroom(2 * GIB) == GIB // 2  # a quarter of a tiny budget at most
    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", "count")
    assert allocator_headroom(8 * GIB) == 2 * GIB and allocator_headroom(24 * GIB) == int(24 * GIB * 0.12)


@pytest.mark.parametrize("budget", [24, 16, 12])
def test_the_denoiser_streams_only_what_does_not_fit(budget, monkeypatch):
    """FLUXDEPTH_STREAM_LAYOUT=count (the default in sessions 5-39): the most blocks by count, spread by count."""
    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", "count")
    plan = plan_memory(budget * GIB, BF16, WORK, BF16_BLOCKS, "bf16")
    assert "transformer" in plan.streamed and plan.total_blocks == 57
    kept = sum(BF16_BLOCKS[i] for i in plan.resident_blocks)
    streamed = sum(BF16_BLOCKS) - kept
    assert plan.streamed == ("text_encoder_2", "transformer")  # CLIP and the VAE (0.4 GiB) always stay
    # Streamed blocks sit beside the denoiser's activations (a share of the decode's peak), T5's beside nothing.
    work = max(WORK, int(WORK * DENOISER_SHARE) + STREAM_GROUPS * DOUBLE,
               STREAM_GROUPS * (BF16["text_encoder_2"] // 20))
    fixed = sum(BF16[c] for c in plan.resident) + work + 0.2 * GIB
    room = usable(budget, "count") - fixed
    assert kept <= room < kept + DOUBLE
    assert plan.streamed_bytes_per_step == streamed  # the embedders and norms (0.2 GiB) stay
    # Spread over the whole run of blocks, not bunched at one end, so copies overlap resident compute.
    if len(plan.resident_blocks) > 4:
        gaps = np.diff(plan.resident_blocks)
        assert gaps.max() <= 3 * max(1, 57 // len(plan.resident_blocks))
    if budget < 24:  # smaller budgets stream more
        bigger = plan_memory((budget + 4) * GIB, BF16, WORK, BF16_BLOCKS, "bf16")
        assert bigger.streamed_bytes_per_step < plan.streamed_bytes_per_step


@pytest.mark.parametrize("budget", [24, 16, 12])
def test_the_even_layout_spreads_the_streamed_bytes(budget, monkeypatch):
    """The default layout since session 40, "even" (measured on the H100, docs/vram.md "Which blocks stay")."""
    monkeypatch.delenv("FLUXDEPTH_STREAM_LAYOUT", raising=False)
    plan = plan_memory(budget * GIB, BF16, WORK, BF16_BLOCKS, "bf16")
    assert "transformer" in plan.streamed and plan.total_blocks == 57
    kept = sum(BF16_BLOCKS[i] for i in plan.resident_blocks)
    streamed = sum(BF16_BLOCKS) - kept
    # Every byte the budget can hold beyond the fixed part holds blocks: less than one more block of room is left.
    assert plan.streamed == ("text_encoder_2", "transformer")  # CLIP and the VAE (0.4 GiB) always stay
    # Streamed blocks sit beside the denoiser's activations (a share of the decode's peak), T5's beside nothing: at
    # most STREAM_GROUPS of this plan's streamed blocks in a row (across the step's end) are on the card at once.
    streamed_in_order = [b for i, b in enumerate(BF16_BLOCKS) if i not in plan.resident_blocks]
    in_flight = max(sum(streamed_in_order[(i + k) % len(streamed_in_order)] for k in range(STREAM_GROUPS))
                    for i in range(len(streamed_in_order)))
    work = max(WORK, int(WORK * DENOISER_SHARE) + in_flight, STREAM_GROUPS * (BF16["text_encoder_2"] // 20))
    fixed = sum(BF16[c] for c in plan.resident) + work + 0.2 * GIB
    room = usable(budget) - fixed
    assert kept <= room < kept + DOUBLE
    assert plan.streamed_bytes_per_step == streamed  # the embedders and norms (0.2 GiB) stay
    # The streamed bytes spread over the execution order (every block costs about the same compute), not bunched:
    # the double blocks (2.4x the bytes) are not all streamed in a row at the start while the singles stay.
    streamed_by_position = np.cumsum([0 if i in plan.resident_blocks else b for i, b in enumerate(BF16_BLOCKS)])
    even = streamed * np.arange(1, 58) / 57
    assert np.abs(streamed_by_position - even).max() <= 3 * DOUBLE
    runs = "".join("r" if i in plan.resident_blocks else "s" for i in range(57))
    # No stretch much longer than the average between two streamed blocks without a copy to overlap.
    assert max(len(stretch) for stretch in runs.split("s")) <= 2 * 57 / runs.count("s")
    # Smaller budgets stream more.
    if budget < 24:
        bigger = plan_memory((budget + 4) * GIB, BF16, WORK, BF16_BLOCKS, "bf16")
        assert bigger.streamed_bytes_per_step < plan.streamed_bytes_per_step


def test_a_budget_too_small_says_what_to_do():
    with pytest.raises(PipelineError, match="raise --vram-budget, choose qint4, or lower the long side"):
        plan_memory(5 * GIB, BF16, WORK, BF16_BLOCKS, "bf16")


def test_fp8_plans_only_with_its_transformer_resident():
    """fp8's weights do not stream (measured on an H100: the first streamed step failed, docs/benchmarks.md
    "Session 33"): where its transformer fits it stays resident (T5 on demand if need be); where it does not, one line
    names the tiers that stream, never a streamed fp8 plan."""
    fp8_blocks = [b // 2 for b in BF16_BLOCKS]
    fp8 = {**BF16, "transformer": sum(fp8_blocks) + int(0.2 * GIB), "text_encoder_2": int(4.8 * GIB)}
    roomy = plan_memory(20 * GIB, fp8, WORK, fp8_blocks, "fp8")
    assert "transformer" in roomy.resident and "text_encoder_2" in roomy.streamed
    for budget in (10, 12):
        assert "transformer" in plan_memory(budget * GIB, fp8, WORK, fp8_blocks, "qint8").streamed  # same sizes
        with pytest.raises(PipelineError, match=r"keeps its whole transformer on the GPU .* choose qint8 or qint4"):
            plan_memory(budget * GIB, fp8, WORK, fp8_blocks, "fp8")


@pytest.fixture(scope="module")
def control():
    return prepare_depth(str(DEPTH_SYN), DepthSettings(long_side=256)).control


def run(pipe, control, seed=5):
    out = pipe(prompt="a hall", control_image=control_tensor(control), height=control.height, width=control.width,
               num_inference_steps=2, guidance_scale=10.0, generator=torch.Generator("cpu").manual_seed(seed),
               output_type="np")
    return out.images[0]


@pytest.mark.parametrize("layout", ["count", "even"])
def test_streaming_a_partly_resident_denoiser_gives_the_same_pixels(control, layout, monkeypatch):
    """The plan applied (diffusers' group offloading on the streamed blocks, chosen blocks kept) computes exactly
    what the resident pipeline computes, with either choice of resident blocks. On the CPU the "device" is the CPU
    itself: this checks the wiring; the GPU run (benchmarks/vram_budget.py) checks peaks and speed."""
    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", layout)
    import copy

    from diffusers import FluxTransformer2DModel

    from fluxdepth_ui.pipeline.tiny import tiny_transformer_config

    components = build_tiny_components(0)
    torch.manual_seed(0)  # more blocks than the smallest tiny model, so some can stay and some stream
    components["transformer"] = FluxTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 4,
                                                          "num_single_layers": 6})
    resident = run(FluxControlPipeline(**copy.deepcopy(components)), control)
    blocks = transformer_block_sizes(components["transformer"])
    sizes = {"transformer": module_bytes(components["transformer"])}
    others = sizes["transformer"] - sum(blocks)
    budget = int((others + STREAM_GROUPS * max(blocks) + sum(blocks) // 2) / (1 - HEADROOM[layout][0]))  # half fit
    assert sum(blocks) > others
    plan = plan_memory(budget, sizes, 0, blocks, "bf16")
    assert "transformer" in plan.streamed and 0 < len(plan.resident_blocks) < len(blocks)
    pipe = FluxControlPipeline(**components)
    apply_memory_plan(pipe, plan, torch.device("cpu"))
    streamed = run(pipe, control)
    np.testing.assert_array_equal(resident, streamed)


def test_streaming_t5_gives_the_same_embeddings(control):
    """T5 streamed block by block through its encoder stack (the plan's "T5 on demand") encodes exactly as resident."""
    resident = FluxControlPipeline(**build_tiny_components(0))
    streamed = FluxControlPipeline(**build_tiny_components(0))
    sizes = {k: module_bytes(v) for k, v in build_tiny_components(0).items() if isinstance(v, torch.nn.Module)}
    budget = int((sum(sizes.values()) - sizes["text_encoder_2"] // 2) / 0.75)  # T5 must give way (tiny: 25% headroom)
    plan = plan_memory(budget, sizes, 0, None, "bf16")
    assert plan.streamed == ("text_encoder_2",) and "transformer" in plan.resident
    apply_memory_plan(streamed, plan, torch.device("cpu"))
    ours = streamed.encode_prompt("a hall", None, device=torch.device("cpu"), max_sequence_length=32)
    theirs = resident.encode_prompt("a hall", None, device=torch.device("cpu"), max_sequence_length=32)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(run(resident, control), run(streamed, control))


def test_prompt_embeddings_are_computed_once_per_prompt(tmp_path, control):
    manager = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path))
    manager.load()
    calls = []
    for name in ("text_encoder", "text_encoder_2"):
        getattr(manager._pipe, name).register_forward_hook(lambda *a, n=name: calls.append(n))
    first = manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    for seed in (2, 3):  # a seed batch
        manager.generate(control, GenerationSettings("a hall", seed=seed, steps=1))
    assert calls == ["text_encoder", "text_encoder_2"]
    manager.generate(control, GenerationSettings("a cave", seed=1, steps=1))
    assert calls.count("text_encoder_2") == 2
    again = manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    np.testing.assert_array_equal(first.pixels, again.pixels)  # cached embeddings: the same image
    assert first.metadata.memory_plan is None  # no budget on the CPU: nothing planned


def test_budget_travels_with_the_spec_and_reloads_on_change(tmp_path):
    manager = PipelineManager.from_spec(PipelineSpec(model="tiny-random", vram_budget="12"),
                                        cache_root=str(tmp_path))
    assert manager.vram_budget == 12.0 and manager.status()["vram_budget"] == 12.0
    # spec() is from_spec's inverse: a Ray worker gets the same tier, placement, compile, device and budget.
    spec = PipelineSpec(model="tiny-random", variant="qint8", compile=True, device="cpu", vram_budget="12")
    again = PipelineManager.from_spec(spec, cache_root=str(tmp_path)).spec()
    assert again == PipelineSpec(model="tiny-random", variant="qint8", compile=True, device="cpu", vram_budget="12.0")
    manager.load()
    assert manager.configure(vram_budget="auto") and not manager.loaded and manager.vram_budget == "auto"
    assert not manager.configure(vram_budget="auto")




# --- Budget by default: placement auto plans by what the card has free, less the headroom (issue 26) -------------


def deep_components(seed=0) -> dict:
    """Tiny-random with more blocks, so that some can stay resident and some stream."""
    from diffusers import FluxTransformer2DModel

    from fluxdepth_ui.pipeline.tiny import tiny_transformer_config

    components = build_tiny_components(seed)
    torch.manual_seed(seed)
    components["transformer"] = FluxTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 4,
                                                          "num_single_layers": 6})
    return components


class FakeCard:
    """What the driver says this process could hold (budget.available_bytes), set by the test: another program
    taking memory or giving it back between images. Each reading is recorded."""

    def __init__(self, available: int):
        self.available = available
        self.readings = 0

    def __call__(self, device):
        self.readings += 1
        return self.available


def plan_sizes(components) -> tuple[dict, list[int]]:
    from fluxdepth_ui.pipeline.manager import _is_oom  # noqa: F401 - the module the manager plans in

    sizes = {k: module_bytes(v) for k, v in components.items() if isinstance(v, torch.nn.Module)}
    return sizes, transformer_block_sizes(components["transformer"])


def partly_resident_budget(components, fraction: float) -> int:
    """The smallest budget (bytes) under which the planner keeps about `fraction` of the denoiser's blocks."""
    sizes, blocks = plan_sizes(components)
    lo, hi = WORK, WORK * 4
    target = max(1, int(len(blocks) * fraction))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            plan = plan_memory(mid, sizes, WORK, blocks, "bf16")
            kept = len(blocks) if "transformer" in plan.resident else len(plan.resident_blocks)
        except PipelineError:
            kept = -1
        lo, hi = (lo, mid) if kept >= target else (mid, hi)
    return hi


def card_manager(tmp_path, card, headroom=0.0, seed=0, budget="follow"):
    from fluxdepth_ui.pipeline.sources import LoadedModel

    def loader(variant, progress):
        return LoadedModel(deep_components(seed), "tiny")

    return PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path), loader=loader,
                           memory_reader=card, vram_headroom=headroom, vram_budget=budget)


def streamed_blocks(manager) -> int:
    plan = manager._plan
    return 0 if "transformer" in plan.resident else plan.total_blocks - len(plan.resident_blocks)


def test_only_a_streaming_bf16_transformer_suggests_a_quantized_tier():
    from dataclasses import replace

    plan = MemoryPlan(12 * GIB, ("text_encoder", "vae"), ("transformer", "text_encoder_2"), resident_blocks=(0, 2),
                      total_blocks=4, streamed_bytes_per_step=int(16.5 * GIB), variant="bf16")
    assert faster_tier_hint(plan).startswith("bf16 streams 16.5 GiB of its transformer")
    assert faster_tier_hint(replace(plan, variant="qint8")) is None  # already the smaller tier
    assert faster_tier_hint(replace(plan, streamed=("text_encoder_2",))) is None  # only T5 on demand: no step cost
    assert faster_tier_hint(None) is None


def test_auto_plans_everything_resident_when_the_card_has_room(tmp_path, control):
    card = FakeCard(64 * GIB)
    manager = card_manager(tmp_path, card, headroom=1.5)
    result = manager.generate(control, GenerationSettings("a hall", seed=3, steps=1))
    assert manager._plan.streamed == () and manager._plan.budget == int(62.5 * GIB)  # the headroom is left
    assert result.metadata.placement == "budget" and "kept for other programs" in manager.status()["placement_reason"]
    assert not any("qint8" in note for note in result.metadata.notes)  # nothing streams: no tier to suggest


def test_auto_streams_blocks_instead_of_offloading_when_the_card_is_short(tmp_path, control):
    components = deep_components()
    budget = partly_resident_budget(components, 0.5)
    card = FakeCard(budget + 2 * GIB)
    manager = card_manager(tmp_path, card, headroom=2.0)  # what the card has less the headroom: a partial plan
    result = manager.generate(control, GenerationSettings("a hall", seed=3, steps=1))
    assert manager._plan.budget == budget and 0 < streamed_blocks(manager) < manager._plan.total_blocks
    assert result.metadata.placement == "budget" and "blocks resident" in result.metadata.memory_plan
    # bf16's blocks cross the bus every step: the image's notes say so and name the tiers that keep them on the card.
    hint = [note for note in result.metadata.notes if note.startswith("bf16 streams")]
    assert len(hint) == 1 and "qint8" in hint[0] and "qint4" in hint[0]
    reference = card_manager(tmp_path, FakeCard(None)).generate(control, GenerationSettings("a hall", seed=3, steps=1))
    assert reference.metadata.placement == "cpu"  # no reading (not a GPU): the old placement rule
    np.testing.assert_array_equal(result.pixels, reference.pixels)


def test_a_card_that_shrinks_and_grows_between_images_is_re_planned_with_the_same_pixels(tmp_path, control):
    components = deep_components()
    roomy = partly_resident_budget(components, 1.0)
    tight = partly_resident_budget(components, 0.3)
    card = FakeCard(roomy + 8 * GIB)
    manager = card_manager(tmp_path, card)
    messages = []
    settings = GenerationSettings("a hall", seed=4, steps=2)
    first = manager.generate(control, settings, load_progress=lambda f, m: messages.append(m))
    assert streamed_blocks(manager) == 0
    card.available = tight  # Houdini took memory: the next image plans down before it starts
    second = manager.generate(control, settings, load_progress=lambda f, m: messages.append(m))
    assert 0 < streamed_blocks(manager) and manager._plan.budget == tight
    assert any(m.startswith("GPU memory taken by other programs: re-planning down") for m in messages)
    card.available = roomy + 8 * GIB  # and gave it back: up again, between images
    third = manager.generate(control, settings, load_progress=lambda f, m: messages.append(m))
    assert streamed_blocks(manager) == 0 and any("re-planning up" in m for m in messages)
    # The hint follows the plan of each image: there while the blocks streamed, gone once they fit again.
    assert [any(n.startswith("bf16 streams") for n in r.metadata.notes) for r in (first, second, third)] == [
        False, True, False]
    np.testing.assert_array_equal(first.pixels, second.pixels)
    np.testing.assert_array_equal(first.pixels, third.pixels)
    readings = card.readings
    manager.generate(control, settings)  # unchanged card: read, nothing re-planned
    assert card.readings == readings + 1 and manager._plan.budget == roomy + 8 * GIB


def test_the_headroom_is_left_free_and_changes_without_a_reload(tmp_path, control):
    components = deep_components()
    budget = partly_resident_budget(components, 1.0)
    card = FakeCard(budget + 4 * GIB)
    manager = card_manager(tmp_path, card, headroom=3.0)
    manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    assert manager._plan.budget == budget + GIB and streamed_blocks(manager) == 0
    pipe = manager._pipe
    # A larger headroom (Houdini needs more): what is left is only enough for part of the blocks.
    assert not manager.configure(vram_headroom=4.0 + (budget - partly_resident_budget(components, 0.3)) / GIB)
    manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    assert manager._pipe is pipe and streamed_blocks(manager) > 0  # same pipeline, fewer resident blocks
    with pytest.raises(SettingsError, match="VRAM headroom"):
        manager.configure(vram_headroom="lots")


def test_an_image_that_runs_out_of_memory_is_retried_once_with_a_smaller_plan(tmp_path, control):
    components = deep_components()
    roomy = partly_resident_budget(components, 1.0)
    card = FakeCard(roomy + 4 * GIB)
    manager = card_manager(tmp_path, card)
    settings = GenerationSettings("a hall", seed=6, steps=2)
    expected = manager.generate(control, settings).pixels
    failures = []

    def fail_once(module, args):
        if not failures:
            failures.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = manager._pipe.transformer.register_forward_pre_hook(fail_once)
    before = manager._plan.budget
    again = manager.generate(control, settings)
    handle.remove()
    assert failures == [True] and manager._plan.budget == int(before * 0.8)
    np.testing.assert_array_equal(expected, again.pixels)

    def always(module, args):
        raise torch.OutOfMemoryError("CUDA out of memory")

    handle = manager._pipe.transformer.register_forward_pre_hook(always)
    from fluxdepth_ui.pipeline import OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match="out of GPU memory at"):  # once retried, then reported
        manager.generate(control, settings)
    handle.remove()


def test_a_card_too_full_for_any_plan_says_what_to_do(tmp_path, control):
    card = FakeCard(64 * GIB)
    manager = card_manager(tmp_path, card, headroom=1.0)
    manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    card.available = 2 * GIB  # another program took nearly everything
    from fluxdepth_ui.pipeline import OutOfMemoryError

    with pytest.raises(OutOfMemoryError, match="only 2.0 GiB of GPU memory is free now .* lower the headroom"):
        manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))


def test_resident_blocks_keep_no_offload_hook_and_streamed_ones_do(tmp_path, control):
    """Host copies (pinned, on a GPU) belong to the streamed blocks' offload groups only: a resident block has no
    group, so nothing holds a host copy of its weights."""
    from diffusers.hooks import HookRegistry

    components = deep_components()
    card = FakeCard(partly_resident_budget(components, 0.5))
    manager = card_manager(tmp_path, card)
    manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    transformer = manager._pipe.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    grouped = {i for i, b in enumerate(blocks)
               if HookRegistry.check_if_exists_or_initialize(b).get_hook("group_offloading") is not None}
    assert grouped and grouped.isdisjoint(manager._plan.resident_blocks)
    assert grouped | set(manager._plan.resident_blocks) == set(range(len(blocks)))


@pytest.mark.parametrize("by_default", [True, False])
def test_the_default_follows_the_card_only_where_it_is_switched_on(tmp_path, control, monkeypatch, by_default):
    """Without a --vram-budget, placement auto follows the card's free memory when FOLLOW_FREE_MEMORY_BY_DEFAULT is
    on; off, the placement rule of before decides. `follow` asks for it either way; a fixed budget never follows."""
    from fluxdepth_ui.pipeline import manager as manager_module

    monkeypatch.setattr(manager_module, "FOLLOW_FREE_MEMORY_BY_DEFAULT", by_default)
    components = deep_components()
    card = FakeCard(partly_resident_budget(components, 0.5))
    default = card_manager(tmp_path, card, budget=None)
    default.load()
    assert default.follows_free_memory is by_default
    # Off, the rule of before places it (here on the CPU, which is what it says for a machine without a GPU).
    assert default.status()["placement"] == ("budget" if by_default else "cpu")
    fixed = card_manager(tmp_path, card, budget="12")
    assert not fixed.follows_free_memory and card_manager(tmp_path, card).follows_free_memory
    assert parse_budget("Follow") == "follow"
    # A compiled transformer (fp8, --compile) follows only when asked: not yet run compiled on a GPU (docs/vram.md).
    compiled = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path), compile=True)
    fp8 = PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path), variant="fp8")
    assert not compiled.follows_free_memory and not fp8.follows_free_memory
    assert PipelineManager(ModelSource("tiny-random"), cache_root=str(tmp_path), variant="fp8",
                           vram_budget="follow").follows_free_memory


def test_diffusers_makes_offload_groups_of_the_streamed_blocks_only(tmp_path, control, monkeypatch):
    """With CUDA streams every offload group makes a pinned host copy of its weights when it is made, and pinned
    memory given back stays with the process: a resident block must never be in a group, not even for a moment
    (docs/benchmarks.md "Session 34": 35.6 GiB of host memory under a 12 GiB budget, 16.8 GiB resident)."""
    from diffusers.hooks import group_offloading

    grouped_modules = []
    made = group_offloading.ModuleGroup.__init__

    def record(self, modules, *args, **kwargs):
        grouped_modules.extend(modules or [])
        made(self, modules, *args, **kwargs)

    monkeypatch.setattr(group_offloading.ModuleGroup, "__init__", record)
    components = deep_components()
    card = FakeCard(partly_resident_budget(components, 0.5))
    manager = card_manager(tmp_path, card)
    result = manager.generate(control, GenerationSettings("a hall", seed=1, steps=1))
    transformer = manager._pipe.transformer
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    resident = {id(blocks[i]) for i in manager._plan.resident_blocks}
    streamed = {id(b) for i, b in enumerate(blocks) if i not in manager._plan.resident_blocks}
    assert resident and streamed
    assert resident.isdisjoint(id(m) for m in grouped_modules)
    assert streamed <= {id(m) for m in grouped_modules}
    assert result.image is not None


def test_each_tensor_is_read_to_the_home_the_plan_gives_it():
    """Issue 26 (host memory): with the plan made before the cached weights are read, a resident block's tensors go
    straight to the GPU, a streamed block's to pinned host memory (diffusers' copy source), the transformer's
    embedders and norms to the GPU, an on-demand T5 to pinned memory; without streams (no CUDA) to the host."""
    from diffusers import FluxTransformer2DModel

    from fluxdepth_ui.pipeline.tiny import tiny_transformer_config

    transformer = FluxTransformer2DModel(**{**tiny_transformer_config(), "num_layers": 2, "num_single_layers": 2})
    doubles = 2
    cuda = torch.device("cuda")
    plan = MemoryPlan(8 * GIB, ("text_encoder", "vae"), ("text_encoder_2", "transformer"),
                      resident_blocks=(0, doubles + 1), total_blocks=doubles + len(transformer.single_transformer_blocks))
    homes = tensor_homes(plan, "budget", cuda)
    home = homes("transformer", transformer)
    keys = list(transformer.state_dict())
    expected = {"transformer_blocks.0.attn.to_q.weight": cuda, "single_transformer_blocks.1.proj_out.weight": cuda,
                "single_transformer_blocks.0.proj_out.weight": "pinned", "x_embedder.weight": cuda,
                "norm_out.linear.weight": cuda, "transformer_blocks.1.attn.to_q.weight": "pinned"}
    assert set(expected) <= set(keys)
    assert {k: home(k) for k in expected} == expected
    assert homes("text_encoder_2", None) == "pinned" and homes("vae", None) == cuda
    assert tensor_homes(plan, "budget", torch.device("cpu"))("text_encoder_2", None) == "cpu"
    resident = MemoryPlan(30 * GIB, ("transformer", "text_encoder_2", "text_encoder", "vae"), ())
    assert tensor_homes(resident, "budget", cuda)("transformer", transformer) == cuda
    assert tensor_homes(None, "gpu", cuda)("transformer", transformer) == cuda
    assert tensor_homes(None, "model_offload", cuda)("transformer", transformer) == "cpu"


def test_the_streaming_cache_is_handed_back_between_phases(tmp_path, control, monkeypatch):
    """The copies of streamed blocks are made on diffusers' copy stream, whose freed blocks PyTorch keeps for that
    stream alone: T5's after the prompt, the denoiser's after its last step, so they do not sit beside the next
    phase (the VAE decode is the peak the plan counts). Released once each, at those points."""
    import fluxdepth_ui.pipeline.budget as budget_module
    import fluxdepth_ui.pipeline.manager as manager_module

    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", "count")
    emptied = []
    budget_module.release_stream_cache(MemoryPlan(12 * GIB, (), ("transformer",)), "transformer",
                                       torch.device("cuda"))
    assert not emptied  # the count layout keeps the cache (sessions 5-39, measured there)
    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", "even")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    plan = MemoryPlan(12 * GIB, ("vae",), ("text_encoder_2", "transformer"), (0,), 4)
    for component, device, expected in [("transformer", "cuda", 1), ("text_encoder_2", "cuda", 1),
                                        ("vae", "cuda", 0), ("transformer", "cpu", 0)]:
        emptied.clear()
        budget_module.release_stream_cache(plan, component, torch.device(device))
        assert len(emptied) == expected, (component, device)
    emptied.clear()
    budget_module.release_stream_cache(None, "transformer", torch.device("cuda"))
    assert not emptied

    events = []
    monkeypatch.setattr(manager_module, "release_stream_cache",
                        lambda plan, component, device: events.append(("release", component, plan is not None)))
    components = deep_components()
    card = FakeCard(partly_resident_budget(components, 0.5) + 2 * GIB)
    manager = card_manager(tmp_path, card, headroom=2.0)
    settings = GenerationSettings("a hall", seed=3, steps=3)
    manager.generate(control, settings, on_step=lambda i, n: events.append(("step", i)))
    assert events == [("release", "text_encoder_2", True), ("step", 1), ("step", 2),
                      ("release", "transformer", True), ("step", 3)]
    events.clear()
    manager.generate(control, settings, on_step=lambda i, n: events.append(("step", i)))  # the prompt is cached
    assert events == [("step", 1), ("step", 2), ("release", "transformer", True), ("step", 3)]


def test_a_plan_whose_streamed_blocks_are_small_keeps_more_resident(monkeypatch):
    """The room kept for streamed blocks in flight is what this plan streams (STREAM_GROUPS of them in a row), not
    STREAM_GROUPS of the largest block: where the large blocks stay, the small ones stream with less room set aside
    (the even layout)."""
    from fluxdepth_ui.pipeline.budget import _in_flight

    monkeypatch.setenv("FLUXDEPTH_STREAM_LAYOUT", "even")

    blocks = [int(2 * GIB)] + [int(0.25 * GIB)] * 40
    sizes = {"transformer": sum(blocks) + int(0.1 * GIB), "vae": int(0.16 * GIB)}
    budget = 14 * GIB
    plan = plan_memory(budget, sizes, WORK, blocks, "bf16")
    assert 0 in plan.resident_blocks  # the large block stays
    window = _in_flight(blocks, set(plan.resident_blocks))
    assert window == STREAM_GROUPS * int(0.25 * GIB)
    fixed = sizes["vae"] + int(0.1 * GIB) + max(WORK, int(WORK * DENOISER_SHARE) + window)
    kept = sum(blocks[i] for i in plan.resident_blocks)
    assert kept + fixed <= usable(14) < kept + fixed + int(0.25 * GIB)  # every byte of room holds blocks
    largest_bound = max(WORK, int(WORK * DENOISER_SHARE) + STREAM_GROUPS * max(blocks))
    assert usable(14) - (sizes["vae"] + int(0.1 * GIB) + largest_bound) < kept  # the old bound held fewer
