"""A VRAM budget: what stays on the GPU, what streams from pinned host memory, and the cap that enforces it.

Artists' cards (8-24 GB) are shared with Houdini, so "never use more than this" is the contract (docs/vram.md):

1. `plan_memory` decides from the component sizes, the working memory of one image and the budget. The denoiser
   runs every step, so it stays resident whenever it fits with its working memory; the VAE and CLIP (small) next;
   T5 (large) runs only when a prompt is new (the manager caches prompt embeddings), so it is the first to stream.
   When even the denoiser does not fit, as many of its blocks as the budget allows stay resident, spread evenly, and
   the rest stream each step with prefetch.
2. `apply_memory_plan` places the pipeline: resident modules move to the GPU; streamed ones get diffusers' group
   offloading with CUDA streams (pinned host copies, the next group copied while the current one computes).
3. `enforce_budget` caps this process's CUDA allocator at the budget (torch.cuda.set_per_process_memory_fraction),
   so a wrong estimate fails as an out-of-memory message instead of taking memory Houdini holds.

No pure-Python weight shuffling here: the streaming is diffusers' own (hooks/group_offloading.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import PipelineError
from .speed import BLOCK_LISTS

log = logging.getLogger(__name__)

GIB = 2**30
# Left free under "auto": the display, the driver's own use and another program's next allocation.
AUTO_MARGIN = 1.5 * GIB
# Of the budget, kept free for the allocator's own overhead (the cap counts reserved memory, not only live tensors):
# the larger of a share of the budget and a fixed floor, by stream layout (`stream_layout`). "count" sets aside room
# for four of the largest blocks in flight and keeps the streaming copies' cache across phases: 12%, at least 2 GiB
# (measured 1.2-2.0 GiB of reserved over live at the peak on the H100, docs/benchmarks.md "VRAM budget"). "even"
# counts its own streamed blocks in flight and hands that cache back between phases: 6%, at least 1 GiB (every peak
# reserved under its budget, bf16 at 12 and 16 GiB, qint8 at 12, qint4 at 8: docs/benchmarks.md "Session 40").
HEADROOM = {"even": (0.06, GIB), "count": (0.12, 2 * GIB)}
# The measured peak of one image (2.4 GiB over the weights at 1 MP) is the VAE decode, when no block streams; the
# denoiser's own activations, beside which streamed blocks sit, are taken as at most half of it.
DENOISER_SHARE = 0.5
# Streamed groups on the card at once with the bounded run-ahead (`_RunAhead`): the one computing, the one queued
# behind it, the one being copied in, and one whose memory is waiting to be released.
STREAM_GROUPS = 4
# Components, in the order in which they give up their place on the GPU (first = streamed first). CLIP and the VAE
# (0.4 GiB together) are not worth streaming: they always stay.
STREAM_ORDER = ("text_encoder_2", "text_encoder", "vae", "transformer")
STREAMABLE = ("text_encoder_2", "transformer")
NAMES = {"transformer": "transformer", "text_encoder_2": "T5", "text_encoder": "CLIP", "vae": "VAE"}


def parse_budget(text) -> float | str | None:
    """'auto', a size in GiB ('12', '12.5', '12GiB'), or None: the one parser, in settings.py (no torch there)."""
    from ..settings import parse_vram_budget

    return parse_vram_budget(text)


def resolve_budget(budget: float | str | None, device: torch.device) -> int | None:
    """The budget in bytes on this device: 'auto' = free memory now minus a margin; None off a CUDA device."""
    if budget in (None, "follow") or device.type != "cuda":
        return None  # "follow": planned by the manager from available_bytes before every image
    free, total = torch.cuda.mem_get_info(device)
    if budget == "auto":
        return max(int(free - AUTO_MARGIN), GIB)
    wanted = int(float(budget) * GIB)
    if wanted > total:
        raise PipelineError(f"VRAM budget {float(budget):g} GiB is more than this GPU has ({total / GIB:.1f} GiB); "
                            "give a smaller one or auto")
    return wanted


# The allocator cap someone else set before the manager first capped it (a benchmark emulating a smaller card, a
# host that shares the GPU between processes): what this process may hold at most, whatever the driver says is free.
_OUTSIDE_CAP: dict[int, float] = {}


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _process_fraction(index: int) -> float:
    """The allocator cap now set on this process (1.0 where this torch build cannot tell)."""
    if hasattr(torch.cuda, "get_per_process_memory_fraction"):
        return torch.cuda.get_per_process_memory_fraction(index)
    return 1.0


def available_bytes(device: torch.device) -> int | None:
    """GPU memory this process could hold now: the driver's free memory (other programs' use counted, Houdini's
    included) plus what this process's allocator already reserves, within a cap set from outside. None off CUDA."""
    if device.type != "cuda":
        return None
    index = _device_index(device)
    free, total = torch.cuda.mem_get_info(index)
    available = free + torch.cuda.memory_reserved(index)
    fraction = _OUTSIDE_CAP.get(index)
    if fraction is None:
        fraction = _process_fraction(index)
    if fraction < 1.0:
        available = min(available, int(fraction * total))
    return int(available)


def enforce_budget(budget_bytes: int | None, device: torch.device) -> None:
    """Cap this process's CUDA allocator at the budget: peaks above it fail as out-of-memory, never spill over."""
    if budget_bytes is None or device.type != "cuda":
        return
    index = _device_index(device)
    if index not in _OUTSIDE_CAP:
        _OUTSIDE_CAP[index] = _process_fraction(index)
    try:  # fewer, growable segments: block-sized allocations every step do not fragment the capped pool
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError):
        log.info("expandable segments are not available in this torch build")
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total, _OUTSIDE_CAP[index]), index)


@dataclass(frozen=True)
class MemoryPlan:
    budget: int
    resident: tuple[str, ...]  # components wholly on the GPU
    streamed: tuple[str, ...]  # components streamed from pinned host memory (group offloading with streams)
    resident_blocks: tuple[int, ...] = ()  # indices (over both block lists) kept on the GPU when the denoiser streams
    total_blocks: int = 0
    streamed_bytes_per_step: int = 0  # denoiser bytes copied to the GPU each step
    variant: str = ""

    def summary(self) -> str:
        """'qint4 transformer resident, T5 on demand, 6.9 GiB budget'"""
        parts = []
        if "transformer" in self.resident:
            parts.append(f"{self.variant} transformer resident".strip())
        else:
            parts.append(f"{self.variant} transformer {len(self.resident_blocks)}/{self.total_blocks} blocks resident, "
                         f"{self.streamed_bytes_per_step / GIB:.1f} GiB streamed per step".strip())
        on_demand = [NAMES[c] for c in STREAM_ORDER if c in self.streamed and c != "transformer"]
        if on_demand:
            parts.append(" and ".join(on_demand) + " on demand")
        parts.append(f"{self.budget / GIB:.1f} GiB budget")
        return ", ".join(parts)


def faster_tier_hint(plan: MemoryPlan | None) -> str | None:
    """One line for the artist when bf16's transformer streams: every step then waits on copies over the bus (about
    1.75x the resident time under a 12 GiB budget, docs/vram.md "What it costs"), where a quantized tier keeps most
    or all of it on the card (qint8 about 1.03x its resident time there). None otherwise."""
    if plan is None or plan.variant != "bf16" or "transformer" not in plan.streamed:
        return None
    return (f"bf16 streams {plan.streamed_bytes_per_step / GIB:.1f} GiB of its transformer from host memory every "
            "step on this card: qint8 (about half the memory) or qint4 keeps more of it on the card and runs faster")


def plan_memory(budget: int, sizes: dict[str, int], work: int, block_sizes: list[int] | None = None,
                variant: str = "") -> MemoryPlan:
    """Decide residency under `budget` bytes.

    sizes: bytes per component (transformer, text_encoder, text_encoder_2, vae); work: the working memory of one
    image (activations, the VAE decode); block_sizes: bytes of each transformer block in execution order (the
    rest of the transformer, embedders and norms, is sizes["transformer"] - sum(block_sizes)).
    """
    components = [c for c in STREAM_ORDER if sizes.get(c)]
    resident = set(components)
    layout = stream_layout()
    share, _ = HEADROOM[layout]
    budget_full, budget = budget, budget - allocator_headroom(budget, layout)

    def slack(streamed, in_flight=None):
        """Working memory on top of the resident weights: the larger of the decode's peak and the denoiser's
        activations beside its streamed groups in flight (T5 runs before both, alone). With the even layout the
        streaming copies' cached memory is handed back between phases (`release_stream_cache`), so they do not stack;
        with the count layout the allocator headroom (HEADROOM["count"]) covers it."""
        def groups(name):
            return STREAM_GROUPS * _largest_group(name, sizes, block_sizes) if name in streamed else 0

        denoiser = groups("transformer") if in_flight is None else in_flight
        return max(work, int(work * DENOISER_SHARE) + denoiser, groups("text_encoder_2")) - work

    streamed: list[str] = []
    for name in STREAMABLE[:-1]:  # give up T5 (CLIP and the VAE, 0.4 GiB together, always stay)
        if sum(sizes.get(c, 0) for c in resident) + work + slack(streamed) <= budget:
            break
        if name in resident:
            resident.discard(name)
            streamed.append(name)
    used = sum(sizes.get(c, 0) for c in resident) + work + slack(streamed)
    if used <= budget:
        return MemoryPlan(budget_full, tuple(c for c in STREAM_ORDER if c in resident), tuple(streamed),
                          variant=variant)

    # The denoiser itself streams: keep as many blocks as fit, spread evenly so copies overlap resident compute.
    blocks = list(block_sizes or [])
    if variant in UNSTREAMABLE_TIERS:
        raise PipelineError(_must_be_resident(variant, budget_full, used / (1 - share)))
    if not blocks:
        raise PipelineError(_too_small(budget_full, work + sizes.get("transformer", 0)))
    resident.discard("transformer")
    streamed.append("transformer")
    others = sizes["transformer"] - sum(blocks)  # embedders, norms, projections: resident (_keep_unmatched_resident)
    fixed = sum(sizes.get(c, 0) for c in resident) + work + others
    window = STREAM_GROUPS * max(blocks)  # bytes of streamed groups on the card at once: first the largest bound
    if budget - fixed - slack(streamed, window) < 0:
        raise PipelineError(_too_small(budget_full, (fixed + slack(streamed, window)) / (1 - share)))
    if layout == "even":
        keep = _even_plan(blocks, lambda window: budget - fixed - slack(streamed, window), window)
    else:
        keep = _spread_by_count(blocks, budget - fixed - slack(streamed, window))
    streamed_bytes = sum(b for i, b in enumerate(blocks) if i not in keep)
    return MemoryPlan(budget_full, tuple(c for c in STREAM_ORDER if c in resident), tuple(streamed),
                      resident_blocks=tuple(sorted(keep)), total_blocks=len(blocks),
                      streamed_bytes_per_step=streamed_bytes, variant=variant)


def _largest_group(component: str, sizes: dict[str, int], block_sizes: list[int] | None) -> int:
    if component == "transformer" and block_sizes:
        return max(block_sizes)
    # T5 streams block by block (24 blocks): a generous bound is a twentieth of the model.
    return sizes.get(component, 0) // 20


def _even_plan(blocks: list[int], room_for: Callable[[int], int], window: int) -> set[int]:
    """`_spread_evenly` with the room left beside `window` bytes of streamed blocks in flight, then again with the
    room its own streamed blocks leave (STREAM_GROUPS of them in a row at most), while that gives room back."""
    keep = _spread_evenly(blocks, room_for(window))
    while (in_flight := _in_flight(blocks, keep)) < window:
        window = in_flight
        candidate = _spread_evenly(blocks, room_for(window))
        if _in_flight(blocks, candidate) > window:
            break  # more blocks resident would put larger ones in flight together: keep the last plan that held
        keep = candidate
    return keep


def _in_flight(blocks: list[int], keep: set[int]) -> int:
    """The most bytes of STREAM_GROUPS streamed blocks in a row (across a step's end: the next step's first streamed
    block is copied while the last ones compute), which is what the run-ahead can have on the card at once."""
    streamed = [b for i, b in enumerate(blocks) if i not in keep]
    if len(streamed) <= STREAM_GROUPS:
        return sum(streamed)
    return max(sum(streamed[(i + k) % len(streamed)] for k in range(STREAM_GROUPS)) for i in range(len(streamed)))


# Which blocks stay resident when the denoiser streams: "even" (the default since session 40: the streamed bytes
# spread evenly, the in-flight room from the plan's own streamed blocks, the streaming cache handed back between
# phases) or "count" (sessions 5-39: the most blocks by count; FLUXDEPTH_STREAM_LAYOUT=count). Measured on the H100,
# bf16 under 16 GiB: count 1.58x the resident time, even 1.32x (docs/vram.md "Which blocks stay").
STREAM_LAYOUTS = ("even", "count")


def stream_layout() -> str:
    layout = os.environ.get("FLUXDEPTH_STREAM_LAYOUT", "").strip().lower()
    return layout if layout in STREAM_LAYOUTS else STREAM_LAYOUTS[0]


def allocator_headroom(budget: int, layout: str | None = None) -> int:
    """Bytes of `budget` left to the allocator's own overhead under `layout` (default: the current one; HEADROOM); a
    quarter of a budget at most."""
    share, floor = HEADROOM[layout or stream_layout()]
    return max(int(budget * share), min(floor, budget // 4))


def _spread_by_count(blocks: list[int], room: int) -> set[int]:
    """The most blocks that fit in `room`, spread evenly over the execution order by count."""
    count = 0
    total = 0
    for size in sorted(blocks):
        if total + size > room:
            break
        total += size
        count += 1
    if count == 0:
        return set()
    n = len(blocks)
    picks = {int(round(i * n / count + (n / count - 1) / 2)) for i in range(count)}
    picks = {min(n - 1, p) for p in picks}
    while sum(blocks[i] for i in picks) > room and picks:
        picks.discard(max(picks, key=lambda i: blocks[i]))
    return picks


def _spread_evenly(blocks: list[int], room: int) -> set[int]:
    """Blocks to keep resident: as many bytes as fit in `room`, chosen so that the streamed bytes are spread evenly
    over the execution order.

    Every block costs about the same compute (FLUX: a double block holds 2.4x a single block's bytes for the same
    matmul work at 1 MP), while a streamed block costs its bytes on the bus. Where streamed bytes bunch up (all the
    double blocks streamed in a row) the GPU waits for copies there and the bus idles elsewhere; spread evenly, the
    copies of each stretch overlap that stretch's compute (docs/vram.md "Which blocks stay")."""
    if room <= 0:
        return set()
    total, n = sum(blocks), len(blocks)
    to_stream = max(0, total - room)
    keep: set[int] = set()
    kept = streamed = 0
    for i, size in enumerate(blocks):
        behind = streamed + size / 2 <= to_stream * (i + 1) / n  # streaming it keeps the running share on course
        if behind or kept + size > room:
            streamed += size
        else:
            keep.add(i)
            kept += size
    for i in sorted(set(range(n)) - keep, key=lambda i: -blocks[i]):  # room left by rounding: the largest that fit
        if kept + blocks[i] <= room:
            keep.add(i)
            kept += blocks[i]
    return keep


# fp8's torchao weights do not move with diffusers' group offloading (measured on an H100: the streamed blocks stayed
# in host memory and the first step failed, docs/benchmarks.md "Session 33"), so fp8 plans only with its transformer
# resident.
UNSTREAMABLE_TIERS = ("fp8",)


def _must_be_resident(variant: str, budget: int, needed: float) -> str:
    return (f"the {variant} tier keeps its whole transformer on the GPU (about {needed / GIB:.1f} GiB with one image) "
            f"and {budget / GIB:.1f} GiB is available for it: choose qint8 or qint4 (they stream what does not fit), "
            "or free GPU memory")


def _too_small(budget: int, needed: int) -> str:
    return (f"a VRAM budget of {budget / GIB:.1f} GiB is too small for this size and tier (about {needed / GIB:.1f} "
            "GiB needed even when streaming); raise --vram-budget, choose qint4, or lower the long side")


def block_places(transformer) -> list[tuple[str, int]]:
    """(block list, position) of every transformer block in execution order: a plan's block index is an index here."""
    return [(name, i) for name in BLOCK_LISTS for i in range(len(getattr(transformer, name, ())))]


def transformer_block_sizes(transformer) -> list[int]:
    from .placement import module_bytes

    sizes = []
    for name in BLOCK_LISTS:
        for block in getattr(transformer, name, ()):
            sizes.append(module_bytes(block))
    return sizes


def tensor_homes(plan: MemoryPlan | None, placement: str, device: torch.device):
    """(component, module) -> where each of its tensors goes as its weights are read (variants.TensorHome): straight
    to the GPU when the plan keeps it there, to pinned host memory when it streams with CUDA streams (diffusers' copy
    source, taken as it is), else the host. Read so, the weights that live on the GPU have no host copy, even for a
    moment, and the streamed ones are not held twice (issue 26's host memory; docs/vram.md)."""
    from .variants import PINNED

    streamed_home = PINNED if device.type == "cuda" else "cpu"

    def homes(component: str, module):
        if plan is None:
            return device if placement == "gpu" else "cpu"
        if component in plan.resident:
            return device
        if component not in plan.streamed:
            return "cpu"
        if component != "transformer":
            return streamed_home
        index = {f"{name}.{i}.": n for n, (name, i) in enumerate(block_places(module))}
        resident = set(plan.resident_blocks)

        def home(key: str):
            prefix = ".".join(key.split(".", 2)[:2]) + "."
            if prefix not in index:
                return device  # embedders, norms, projections: resident (_keep_unmatched_resident)
            return device if index[prefix] in resident else streamed_home

        return home

    return homes


# How many streamed blocks the CPU may queue ahead of the GPU's compute (`_RunAhead`); None = diffusers' default
# without record_stream (the CPU waits for the compute stream after every streamed block). Both measured in
# docs/benchmarks.md "VRAM budget".
RUN_AHEAD: int | None = 1


def apply_memory_plan(pipe, plan: MemoryPlan, device: torch.device, run_ahead: int | None | str = "default") -> list:
    """Resident modules to the GPU; streamed ones get diffusers' group offloading with CUDA streams. Returns the
    run-ahead hooks' handles (`remove_memory_plan` takes them off again).

    The denoiser's streamed blocks use record_stream (the allocator keeps a block's memory until the compute stream
    is done with it, so the CPU need not wait after each block) with a bound on how far the CPU runs ahead: unbounded,
    it queued copies of every block ahead of the compute and they all sat on the card (measured past the budget).
    """
    from diffusers.hooks import apply_group_offloading

    use_stream = device.type == "cuda"
    run_ahead = RUN_AHEAD if run_ahead == "default" else run_ahead
    handles: list = []
    for name in plan.resident:
        getattr(pipe, name).to(device)
    for name in plan.streamed:
        module = getattr(pipe, name)
        if name == "transformer":
            bounded = use_stream and run_ahead is not None
            with _resident_blocks_set_aside(module, plan.resident_blocks) as aside:
                apply_group_offloading(module, device, offload_type="block_level", num_blocks_per_group=1,
                                       use_stream=use_stream, non_blocking=use_stream, record_stream=bounded)
            _untrack(module, aside)
            for block in aside.values():
                block.to(device)
            _keep_unmatched_resident(module, device)
            if bounded:
                handles += _RunAhead(run_ahead).attach(module, plan.resident_blocks)
        else:  # T5: its encoder's blocks, one group each (measured: leaf-level groups stayed on the card)
            apply_group_offloading(getattr(module, "encoder", module), device, offload_type="block_level",
                                   num_blocks_per_group=1, use_stream=use_stream, non_blocking=use_stream)
    return handles


class _RunAhead:
    """Before a streamed block starts (which is when diffusers issues the copy of the next one), the CPU waits until
    the compute of the streamed block `depth + 1` back has finished: at most STREAM_GROUPS blocks on the card, and
    the GPU never runs dry between blocks as it does when the CPU waits for the whole compute stream each time."""

    def __init__(self, depth: int):
        import collections

        self.depth = max(0, int(depth))
        self.events = collections.deque()

    def attach(self, transformer, resident_blocks: tuple[int, ...]) -> list:
        blocks = [b for name in BLOCK_LISTS for b in getattr(transformer, name, ())]
        handles = []
        for index, block in enumerate(blocks):
            if index not in resident_blocks:
                handles.append(block.register_forward_pre_hook(self.before))
                handles.append(block.register_forward_hook(self.after))
        return handles

    def before(self, module, args):
        while len(self.events) > self.depth:
            self.events.popleft().synchronize()

    def after(self, module, args, output):
        event = torch.cuda.Event()
        event.record()
        self.events.append(event)


def _keep_unmatched_resident(transformer, device: torch.device) -> None:
    """The denoiser's own embedders, norms and projections (0.2 GiB in bf16) stay on the GPU.

    diffusers puts them in one group without a stream that goes back to pageable host memory after every forward:
    measured on the H100, 20 device -> pageable copies a step at about 1.3 GB/s, over 100 ms of every step
    (docs/benchmarks.md "VRAM budget"). The plan counts them as resident (`plan_memory`'s `others`).
    """
    from diffusers.hooks import HookRegistry

    hook = HookRegistry.check_if_exists_or_initialize(transformer).get_hook("group_offloading")
    if hook is None:
        return
    hook.group.offload_device = device  # "offloading" them is now a no-op move to where they are
    hook.group.onload_()


class _SetAside(torch.nn.Module):
    """Holds a resident block's place while the streaming is set up: it has no weights, so diffusers makes no pinned
    host copy for it."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("a resident block's stand-in ran: the memory plan was not applied in full")


@contextlib.contextmanager
def _resident_blocks_set_aside(transformer, keep: tuple[int, ...]):
    """The chosen blocks out of their lists while diffusers' group offloading is applied, then back in place.

    With CUDA streams diffusers makes a pinned host copy of every block it offloads when it is applied. Dropping the
    resident blocks' copies afterwards did not give the memory back (the pinned allocator keeps what it allocated):
    the qint8 later start under a 12 GiB budget peaked at 35.6 GiB of host memory, against 16.8 GiB fully resident
    (docs/benchmarks.md "Session 34"). Set aside, the resident blocks get no hook and no copy."""
    named = block_places(transformer)
    aside: dict[str, torch.nn.Module] = {}
    for index in keep:
        name, i = named[index]
        blocks = getattr(transformer, name)
        aside[f"{name}.{i}"] = blocks[i]
        blocks[i] = _SetAside()
    try:
        yield aside
    finally:
        for key, block in aside.items():
            name, i = key.rsplit(".", 1)
            getattr(transformer, name)[int(i)] = block


def _untrack(transformer, aside: dict) -> None:
    """diffusers links its prefetch chain at the first forward from the blocks it saw when applied: the set-aside
    places are no links of it (their stand-ins are gone)."""
    from diffusers.hooks import HookRegistry

    lazy = HookRegistry.check_if_exists_or_initialize(transformer).get_hook("lazy_prefetch_group_offloading")
    if lazy is not None:
        for name in aside:
            lazy._layer_execution_tracker_module_names.discard(name)


def release_stream_cache(plan: MemoryPlan | None, component: str, device: torch.device) -> None:
    """Hand back the memory the streaming copies of `component` left cached, once its phase is over (T5 after the
    prompt, the denoiser after the last step). The copies are made on diffusers' copy stream, and PyTorch's allocator
    keeps a stream's freed blocks for that stream alone: the denoiser's last STREAM_GROUPS blocks stayed reserved
    beside the VAE decode (the peak), T5's beside the first step. Released, the phases do not stack, as `plan_memory`
    counts them. One device synchronisation per phase."""
    if plan is not None and component in plan.streamed and device.type == "cuda" and stream_layout() == "even":
        torch.cuda.empty_cache()


def remove_memory_plan(pipe, handles: list) -> None:
    """Undo `apply_memory_plan` for the streamable components (re-planning between images): the offload hooks and
    the run-ahead hooks come off and every weight goes back to host memory, ready for the next plan."""
    from diffusers.hooks import HookRegistry

    for handle in handles:
        handle.remove()
    handles.clear()
    for name in STREAMABLE:
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for sub in module.modules():
            registry = getattr(sub, "_diffusers_hook", None)
            if registry is None:
                continue
            for hook in ("group_offloading", "lazy_prefetch_group_offloading", "layer_execution_tracker"):
                if registry.get_hook(hook) is not None:
                    registry.remove_hook(hook, recurse=False)
        HookRegistry.check_if_exists_or_initialize(module)  # a fresh registry for the next plan
        module.to("cpu")
