"""The pipeline manager: one FLUX.1-Depth-dev pipeline resident, loaded lazily, switched safely, one job at a time.

`generate` is one explicit call in numbered steps, like a diffusers pipeline. The control map goes to diffusers as a
float tensor in [-1, 1] at the target size, which `FluxControlPipeline.prepare_image` passes through untouched: no
8-bit rounding, no resize on the way to the VAE.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS, DEFAULT_STRENGTH  # noqa: F401 - re-exported
from ..defaults import DEFAULT_VRAM_HEADROOM_GIB, FOLLOW_FREE_MEMORY_BY_DEFAULT
from ..settings import MAX_SEED, MAX_SEQUENCE_LENGTH, GenerationSettings, PipelineSpec  # noqa: F401
from ..settings import parse_vram_headroom, refine_steps
from ..depth import ControlImage, DepthStats
from ..loras import file_digest, lora_folder, resolve_lora
from .errors import GenerationCancelled, OutOfMemoryError, PipelineError
from .loras import LoraFile, LoraStack, read_lora
from ..outputs import GenerationMetadata
from .placement import (
    ACTIVATION_BYTES_PER_MEGAPIXEL,
    PLACEMENTS,
    PlacementChoice,
    apply_placement,
    choose_placement,
    free_memory,
    module_bytes,
    pick_device,
    release_device_memory,
)
from .sources import LoadedModel, ModelSource, load_model
from .budget import (
    GIB, UNSTREAMABLE_TIERS, MemoryPlan, apply_memory_plan, available_bytes, enforce_budget, parse_budget,
    faster_tier_hint, plan_memory, release_stream_cache, remove_memory_plan, resolve_budget, tensor_homes,
    transformer_block_sizes,
)
from .timings import TimingLog
from .aot import AotBlocks, aot_folder
from .compile_cache import load_compile_artifacts, save_compile_artifacts
from .graphs import GraphedForward, graphs_enabled
from .preview import decode_preview, load_preview_decoder
from .speed import (
    AOT_TIERS,
    CompileDecision,
    check_fp8,
    compile_transformer,
    decide_compile,
    fp8_quantize_transformer,
    on_zerogpu,
    use_aot,
)
from .variants import VARIANTS, TRANSFORMER_EXCLUDE, QuantizedCache, Variant, default_cache_root, get_variant

log = logging.getLogger(__name__)


StepCallback = Callable[[int, int], None]
LoadProgress = Callable[[float, str], None]
PreviewCallback = Callable[[int, int, Image.Image], None]  # (step, total, the latents seen through TAEF1)
# Replaces loading from `source` (benchmarks with random full-size weights, apps that own their modules).
Loader = Callable[[Variant, LoadProgress], LoadedModel]
# GPU memory this process could hold now, other programs' use counted (budget.available_bytes); None: not a GPU.
MemoryReader = Callable[[torch.device], "int | None"]
# A plan that follows the card is re-made when what it may use moved by more than this (between images only).
REPLAN_DOWN_SLACK = GIB // 4
REPLAN_UP_SLACK = GIB


@dataclass(frozen=True)
class GenerationResult:
    image: Image.Image
    metadata: GenerationMetadata
    # The VAE's float decode, (H, W, 3) float32 in [0, 1]: `image` is it rounded to 8 bits exactly as diffusers'
    # output_type="pil" rounds it; 16-bit PNG and EXR copies are written from it (image_files.py).
    pixels: np.ndarray | None = None


def control_tensor(control: ControlImage) -> torch.Tensor:
    """(1, 3, H, W) float32 in [-1, 1]: what the VAE encodes, with the map's full float precision."""
    t = torch.from_numpy(np.ascontiguousarray(control.pixels, dtype=np.float32))
    return (t * 2.0 - 1.0).expand(1, 3, *t.shape).contiguous()


def _transformer_moves(choice: PlacementChoice, plan: MemoryPlan | None) -> bool:
    """Whether the transformer goes back and forth between host and GPU during a session (offload)."""
    if plan is not None:
        return "transformer" not in plan.resident
    return choice.placement not in ("gpu", "cpu", "mps")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _check_inputs(width: int, height: int, init_image, mask) -> None:
    if width % 16 or height % 16:
        raise PipelineError(f"control image {width}x{height} is not a multiple of 16; use make_control_image")
    if mask is not None and init_image is None:
        raise PipelineError("a mask needs the image it is painted on (the init image): give both to fix a region")


def _uncompile_blocks(transformer) -> None:
    """Undo diffusers' regional compilation (`compile_repeated_blocks`: nn.Module.compile on each block)."""
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


class PipelineManager:
    """Holds at most one loaded pipeline. Thread-safe: loads, switches and generations are serialized."""

    def __init__(self, source: ModelSource | None = None, variant: str = "bf16", placement: str = "auto",
                 device: str | None = None, cache_root: str | None = None, token: str | None = None,
                 loader: Loader | None = None, compile: bool = False, vram_budget: float | str | None = None,
                 lora_dir: str | None = None, lora_paths: bool = True,
                 vram_headroom: float = DEFAULT_VRAM_HEADROOM_GIB, memory_reader: MemoryReader | None = None):
        get_variant(variant)
        if placement not in PLACEMENTS:
            raise PipelineError(f"unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        self.source = source or ModelSource()
        self.variant = variant
        self.placement = placement
        self.compile = bool(compile)
        # GiB, "auto" (free memory minus a margin) or None (the placement option alone decides): budget.py
        self.vram_budget = parse_budget(vram_budget)
        # GiB left free on the card for other programs (Houdini) when the plan follows the card (docs/vram.md).
        self.vram_headroom = parse_vram_headroom(vram_headroom)
        self._read_memory = memory_reader or available_bytes
        self._plan: MemoryPlan | None = None
        self._plan_handles: list = []
        self._plan_inputs: tuple | None = None  # (sizes, block sizes) the plans are made from
        # Prompt -> (prompt_embeds, pooled_prompt_embeds): a seed batch, a sequence or a re-run never re-encodes.
        self._prompt_cache: dict = {}
        # Style LoRAs (loras.py): the host's folder, whether a shot may also name a file path (the CLI; never a shared
        # studio), files read so far by digest, and what is active on the transformer.
        self.lora_dir = lora_folder(lora_dir)
        self.lora_paths = bool(lora_paths)
        self._lora_files: dict[str, LoraFile] = {}
        self._loras: LoraStack | None = None
        self._compiled = False
        self._compiled_shapes: set[tuple] = set()  # sizes already compiled for, in this load
        self._aot: AotBlocks | None = None  # ahead-of-time packages (aot.py), else torch.compile when compiled
        self._graphed: GraphedForward | None = None  # CUDA graphs of the compiled fp8 call (graphs.py)
        self._preview = None  # the live preview's tiny autoencoder (preview.py); False: not available in this load
        self._artifacts_loaded = False  # this process handed the saved compile artifacts to torch (compile_cache.py)
        # ZeroGPU: the transformer is compiled (and fp8 quantized) in one start-up GPU call (zerogpu.py):
        # "pending" after load until `compile_on_zerogpu` ran, then "applied".
        self._zerogpu: str | None = None
        self._device_request = device
        self.cache = QuantizedCache(cache_root or default_cache_root())
        self.timings = TimingLog(self.cache.root)
        self._token = token
        self._loader = loader
        self._lock = threading.RLock()
        self._warming: threading.Thread | None = None  # warm_up's thread
        self._pipe = None
        self._img2img = None
        self._inpaint = None  # FluxControlInpaintPipeline, made on the first masked image
        self._device: torch.device | None = None
        self._choice: PlacementChoice | None = None
        self._revision: str | None = None
        self._notes: list[str] = []

    @classmethod
    def from_spec(cls, spec: PipelineSpec, token: str | None = None, cache_root: str | None = None,
                  loader: Loader | None = None) -> "PipelineManager":
        from .sources import parse_model_source

        source = parse_model_source(spec.model, spec.revision, spec.depth_lora, spec.depth_lora_scale)
        return cls(source, variant=spec.variant, placement=spec.placement, device=spec.device, token=token,
                   cache_root=cache_root, loader=loader, compile=spec.compile, vram_budget=spec.vram_budget,
                   lora_dir=spec.lora_dir, vram_headroom=spec.vram_headroom)

    def spec(self) -> PipelineSpec:
        """What `from_spec` takes: the same pipeline, for another process (a Ray worker, docs/farm.md)."""
        source = self.source
        budget = None if self.vram_budget is None else str(self.vram_budget)
        return PipelineSpec(model=source.model, variant=self.variant, placement=self.placement, compile=self.compile,
                            device=self._device_request, revision=source.revision,
                            depth_lora=source.depth_lora, depth_lora_scale=source.depth_lora_scale, vram_budget=budget,
                            lora_dir=self.lora_dir, vram_headroom=self.vram_headroom)

    # --- state -----------------------------------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def status(self) -> dict:
        return {
            "model": self.source.label,
            "variant": self.variant,
            "loaded": self.loaded,
            "device": str(self._device) if self._device else None,
            "placement": self._choice.placement if self._choice else self.placement,
            "placement_reason": self._choice.reason if self._choice else None,
            "compile": self.compile,
            "compiled": self._compiled,
            "vram_budget": self.vram_budget,
            "vram_headroom": self.vram_headroom,
            "memory_plan": self._plan.summary() if self._plan else None,
            "cuda_graphs": self._graphs_status(),
            "revision": self._revision,
            "notes": list(self._notes),
        }

    def configure(self, source: ModelSource | None = None, variant: str | None = None,
                  placement: str | None = None, compile: bool | None = None,
                  vram_budget: float | str | None = False, vram_headroom: float | None = None) -> bool:
        """Change model, variant or placement. The old pipeline is released at once; the new one loads lazily.
        A new headroom needs no reload: the next image re-plans to it.

        Returns True when something changed.
        """
        if vram_headroom is not None:
            with self._lock:
                self.vram_headroom = parse_vram_headroom(vram_headroom)
        if variant is not None:
            self.check_variant(variant)  # before the loaded model is dropped: a refusal leaves it in place
        if placement is not None and placement not in PLACEMENTS:
            raise PipelineError(f"unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        budget = self.vram_budget if vram_budget is False else parse_budget(vram_budget)
        with self._lock:
            new = (source or self.source, variant or self.variant, placement or self.placement,
                   self.compile if compile is None else bool(compile), budget)
            if new == (self.source, self.variant, self.placement, self.compile, self.vram_budget):
                return False
            self.unload()
            self.source, self.variant, self.placement, self.compile, self.vram_budget = new
            return True

    def check_variant(self, variant: str) -> None:
        """Raise a one-line PipelineError when `variant` is unknown or this machine cannot run it."""
        if get_variant(variant).fp8:
            check_fp8(pick_device(self._device_request))

    def runnable_variants(self) -> list[str]:
        """The tiers this machine can run, in the order of VARIANTS."""
        runnable = []
        for name in VARIANTS:
            try:
                self.check_variant(name)
            except PipelineError:
                continue
            runnable.append(name)
        return runnable

    def device_name(self) -> str:
        """The accelerator's model name ("NVIDIA GeForce RTX 4090"), or "cpu" / "mps": what timings are kept by."""
        device = self._device or pick_device(self._device_request)
        if device.type == "cuda":
            return torch.cuda.get_device_name(device)
        return device.type

    def tier_labels(self) -> dict[str, str]:
        """Each tier this machine runs, labelled with the step time measured here (or "not measured here yet")."""
        figures = self.timings.figures(self.source.key, self.device_name(), self.runnable_variants())
        labels = {name: f"{get_variant(name).label} · {figure or 'not measured here yet'}"
                  for name, figure in figures.items()}
        if "fp8" in labels:  # the one tier that always compiles: say what its first image costs before it starts
            labels["fp8"] += " · " + self.first_compile_cost("fp8")
        return labels

    def first_compile_cost(self, variant: str) -> str:
        """'first image about 48 s here last time (compiles; cached after)', or the figure measured on fresh GPUs
        (docs/benchmarks.md, issue 17) when this machine has not compiled this tier yet."""
        last = self.timings.first_compiled(self.source.key, self.device_name(), variant)
        if last is not None:
            return f"first image about {last:.0f} s here last time (compiles; cached after)"
        if variant == "fp8":
            return "first image compiles for about 20 s on a fresh machine (cached after)"
        return "first image at each size compiles for 10-20 s (cached after)"

    def unload(self) -> None:
        with self._lock:
            pipe, self._pipe, self._img2img, self._inpaint = self._pipe, None, None, None
            if pipe is not None:
                if hasattr(pipe, "remove_all_hooks"):
                    pipe.remove_all_hooks()
                for name in list(pipe.components):
                    setattr(pipe, name, None)
                del pipe
            self._choice = None
            self._plan = None
            self._plan_handles = []
            self._plan_inputs = None
            self._prompt_cache = {}
            if self._loras is not None:
                self._loras.clear()
                self._loras = None
            self._compiled = False
            self._compiled_shapes = set()
            self._drop_graphs(remove=True)
            self._aot = None
            self._preview = None
            self._zerogpu = None
            release_device_memory()

    def warm_up(self) -> threading.Thread | None:
        """While the artist sets up the first shot: read the model's files into the OS cache and import what a load
        imports, in a background thread (`sources.warm_up`). Nothing goes to the GPU and no memory is held; a load
        waits for the thread's imports rather than importing beside it. None when there is nothing to warm (on
        ZeroGPU the model loads at start-up)."""
        if self.loaded or self._loader is not None or on_zerogpu():
            return None
        from .sources import warm_up

        def work() -> None:
            try:
                warm_up(self.source, get_variant(self.variant), self.cache)
            except Exception:  # noqa: BLE001 - the load does the same work and reports what fails
                log.debug("warm-up failed", exc_info=True)

        self._warming = threading.Thread(target=work, name="fluxdepth-warm-up", daemon=True)
        self._warming.start()
        return self._warming

    def load(self, progress: LoadProgress | None = None) -> None:
        warming = self._warming
        if warming is not None:
            warming.join()  # two threads importing one package at once can each see it half made
        with self._lock:
            if self._pipe is not None:
                return
            oom = False
            try:
                self._load(progress or (lambda f, m: None))
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                oom = True
            if oom:  # outside the except block, so the partly loaded modules can be freed
                self.unload()
                raise OutOfMemoryError(
                    f"out of memory while loading {self.source.label} ({self.variant}): close other GPU programs, "
                    "or choose qint8 or qint4, or placement model_offload")

    def _load(self, progress: LoadProgress) -> None:
        variant = get_variant(self.variant)
        device = pick_device(self._device_request)
        if variant.fp8:
            check_fp8(device)  # before reading 30 GB of weights
        t0 = time.perf_counter()
        # The artist waits here on the first Generate: say what loads, in which tier, and where it is meant to go.
        progress(0.0, f"loading model {self.source.short_name} ({variant.name}, placement {self.placement} on {device})")
        # 1. The weights, in the tier's precision (from the quantized cache when there is one). A cached tier's
        #    memory plan (2.) is made from its sizes before its weights are read, so that each tensor is read
        #    straight to where it lives (budget.tensor_homes): no host copy of what stays on the GPU.
        memory: dict = {}

        def plan_homes(components: dict):
            memory["plan"] = self._plan_for(device, variant, components)
            choice, plan, _budget = memory["plan"]
            return tensor_homes(plan, choice.placement, device)

        if self._loader is not None:
            loaded = self._loader(variant, progress)
        else:
            # Not on ZeroGPU: there CUDA exists only inside its GPU calls, and a model is moved to it whole.
            loaded = load_model(self.source, variant, self.cache, progress, self._token,
                                quantize_on=device if device.type == "cuda" else None,
                                plan_homes=None if on_zerogpu() else plan_homes)
        # 2. Where it goes: the memory plan (or an offload) from the sizes it will have on the card.
        choice, plan, budget = memory.get("plan") or self._plan_for(device, variant, loaded.components)
        notes = loaded.notes + [choice.reason]
        # 3. Whether it compiles, and fp8's quantization (on the GPU) before it is placed.
        decision, zerogpu = self._decide_compile(variant, device, choice, plan)
        if variant.fp8 and not zerogpu:  # on ZeroGPU it quantizes in the start-up GPU call, before the export
            if plan is None and choice.placement != "gpu":
                raise PipelineError(f"the fp8 tier keeps its whole transformer on the GPU, but {choice.reason}: "
                                    "choose qint8 or qint4 (they stream what does not fit), or free GPU memory")
            progress(0.9, "quantizing the transformer to fp8 on the GPU")
            fp8_quantize_transformer(loaded.components["transformer"], device, TRANSFORMER_EXCLUDE,
                                     keep_on_gpu=plan is None or "transformer" not in plan.streamed)
        # 4. Place it, under the budget's cap from here on (this process never holds more).
        from diffusers import FluxControlPipeline  # here, not above: step 1 sets its files reading before importing

        enforce_budget(budget, device)
        pipe = FluxControlPipeline(**loaded.components)
        pipe.set_progress_bar_config(disable=True)
        progress(0.97, f"placing {variant.name} on {device}: {choice.placement} ({choice.reason})")
        if plan is not None:
            self._plan_handles = apply_memory_plan(pipe, plan, device)
        else:
            apply_placement(pipe, choice, device)
        # 5. The compiler: ahead-of-time blocks (opt-in), torch.compile, or ZeroGPU's start-up compile.
        self._pipe, self._device = pipe, device
        decision, aot = self._install_compiler(variant, decision, zerogpu, _transformer_moves(choice, plan))
        if decision.reason:
            notes.append(decision.reason)
        self._choice, self._revision = choice, loaded.revision
        self._plan = plan
        self._compiled = decision.enabled
        self._aot = aot
        self._zerogpu = "pending" if zerogpu else None
        self._notes = notes
        if decision.enabled and variant.fp8 and device.type == "cuda" and graphs_enabled() and not zerogpu:
            self._graphed = GraphedForward(pipe.transformer, self._graphs_wanted)
        progress(1.0, f"ready in {time.perf_counter() - t0:.1f} s")
        log.info("loaded %s %s on %s (%s%s)", self.source.label, variant.name, device, choice.placement,
                 ", compiled" if decision.enabled else "")

    def _install_compiler(self, variant: Variant, decision: CompileDecision, zerogpu: bool,
                          transformer_moves: bool) -> tuple[CompileDecision, AotBlocks | None]:
        if zerogpu or not decision.enabled:
            return decision, None  # ZeroGPU: compile_on_zerogpu, called by the app at start-up
        if use_aot(variant.name, transformer_moves=transformer_moves):
            aot = AotBlocks(self._pipe.transformer, aot_folder(self.cache.root), variant.name, self._device,
                            on_failure=self._aot_failed)
            aot.install()
            return CompileDecision(True, "compiled ahead of time: the first image at each size compiles the "
                                         "transformer's two block shapes once and saves them in the cache folder; "
                                         "later starts load them in seconds"), aot
        self._torch_compile(self._pipe.transformer, variant.name, self._device)
        return decision, None

    def _decide_compile(self, variant: Variant, device: torch.device, choice: PlacementChoice,
                        plan: MemoryPlan | None) -> tuple[CompileDecision, bool]:
        """(whether and why the transformer compiles, whether on ZeroGPU's start-up path)."""
        decision = decide_compile(self.compile or variant.fp8, device, choice.placement)
        if decision.enabled and plan is not None and "transformer" in plan.streamed:
            decision = CompileDecision(False, "torch.compile is off while the transformer streams (an offload hook "
                                              "on every block)")
        zerogpu = decision.enabled and on_zerogpu()
        if zerogpu and variant.name not in AOT_TIERS:
            zerogpu = False
            decision = CompileDecision(False, f"compile is off for {variant.name} on ZeroGPU: its dense layers' "
                                              "kernels do not export (bf16 and fp8 compile there)")
        return decision, zerogpu

    def _plan_for(self, device: torch.device, variant: Variant, components: dict):
        """`_choose_memory` from the components' sizes on the card (a cached one may still be a meta skeleton)."""
        sizes = {k: module_bytes(v) for k, v in components.items()}
        blocks = transformer_block_sizes(components["transformer"])
        if variant.fp8:
            sizes["transformer"] //= 2  # what it will hold once in fp8
            blocks = [b // 2 for b in blocks]
        self._plan_inputs = (sizes, blocks)
        return self._choose_memory(device, variant, sizes, blocks)

    def _choose_memory(self, device: torch.device, variant: Variant, sizes: dict, blocks: list[int]):
        """(placement choice, memory plan or None, budget bytes or None) for this load.

        Placement auto on a GPU plans with the budget planner (budget.py): a fixed --vram-budget, or, without one,
        the card's memory as the driver sees it now less the headroom kept for other programs. Such a plan follows
        the card: it is re-made between images when their memory use changes (`_fit_plan_to_card`). Model and
        sequential offload only when asked for, or when even streaming cannot hold the tier."""
        quantized = variant.transformer is not None or variant.fp8
        budget = resolve_budget(self.vram_budget, device)
        if budget is not None and self.placement == "auto":
            plan = plan_memory(budget, sizes, ACTIVATION_BYTES_PER_MEGAPIXEL, blocks, variant.name)
            return PlacementChoice("budget", plan.summary()), plan, budget
        available = self._read_memory(device) if self.follows_free_memory else None
        if available is not None:
            budget = max(available - int(self.vram_headroom * GIB), GIB)
            try:
                plan = plan_memory(budget, sizes, ACTIVATION_BYTES_PER_MEGAPIXEL, blocks, variant.name)
                return PlacementChoice("budget", f"{plan.summary()} (what the GPU has free now, less "
                                                 f"{self.vram_headroom:g} GiB kept for other programs)"), plan, budget
            except PipelineError:
                if variant.name in UNSTREAMABLE_TIERS:
                    raise  # its message says which tiers stream
                # not even streaming holds it: the offloads below
        choice = choose_placement(self.placement, device, sizes, 1.0, budget or free_memory(device), quantized)
        return choice, None, budget

    @property
    def follows_free_memory(self) -> bool:
        """Whether placement auto plans by the card's free memory before every image (`--vram-budget follow`, or the
        default where FOLLOW_FREE_MEMORY_BY_DEFAULT is on). Not by default for a compiled transformer (fp8,
        --compile): following the card has not yet run compiled on a GPU (docs/vram.md), so those place as before
        unless follow is asked for."""
        compiled = self.compile or get_variant(self.variant).fp8
        by_default = self.vram_budget is None and FOLLOW_FREE_MEMORY_BY_DEFAULT and not compiled
        return (self.vram_budget == "follow" or by_default) and self.placement == "auto"

    @property
    def _follows_card(self) -> bool:
        """The loaded plan follows the card (made from its free memory; a fixed budget never follows)."""
        return self.follows_free_memory and self._plan is not None

    def _fit_plan_to_card(self, progress: LoadProgress | None, shrink_to: int | None = None) -> None:
        """Before an image (never during one): when the plan follows the card and other programs took memory since
        it was made (or gave it back), re-plan to what the card has now, less the headroom. `shrink_to` forces a
        smaller plan (an image that ran out of memory is retried once with it)."""
        if not self._follows_card or self._active_aot() is not None:
            return
        available = self._read_memory(self._device)
        if available is None:
            return
        wanted = max(available - int(self.vram_headroom * GIB), GIB)
        current = self._plan.budget
        if shrink_to is not None:
            wanted = min(wanted, shrink_to)
        elif current - REPLAN_DOWN_SLACK <= wanted <= current + REPLAN_UP_SLACK:
            return
        elif wanted > current and not self._plan.streamed:
            return  # already all on the GPU: more room changes nothing
        sizes, blocks = self._plan_inputs
        variant = get_variant(self.variant)
        try:
            plan = plan_memory(wanted, sizes, ACTIVATION_BYTES_PER_MEGAPIXEL, blocks, variant.name)
        except PipelineError as exc:
            if variant.name in UNSTREAMABLE_TIERS:
                raise OutOfMemoryError(f"other programs took GPU memory: {exc}") from None
            raise OutOfMemoryError(
                f"only {available / GIB:.1f} GiB of GPU memory is free now (other programs hold the rest): close "
                f"some, lower the headroom ({self.vram_headroom:g} GiB), or choose qint4") from None
        if (plan.resident, plan.streamed, plan.resident_blocks) == (
                self._plan.resident, self._plan.streamed, self._plan.resident_blocks):
            enforce_budget(plan.budget, self._device)
            self._plan = plan
            return
        direction = "down" if plan.budget < current else "up"
        if progress is not None:
            progress(0.0, f"GPU memory {'taken by other programs' if direction == 'down' else 'freed'}: "
                          f"re-planning {direction} to {plan.summary()}")
        self._apply_new_plan(plan)

    def _apply_new_plan(self, plan: MemoryPlan) -> None:
        """Take the old plan off (weights back to host memory) and place the pipeline by the new one."""
        pipe, device = self._pipe, self._device
        self._drop_graphs()  # the weights move: a replay would read where they were
        streams_now = "transformer" in plan.streamed
        if streams_now and self._compiled:
            _uncompile_blocks(pipe.transformer)  # compiled code and per-block offload hooks do not mix
            self._compiled, self._compiled_shapes = False, set()
        remove_memory_plan(pipe, self._plan_handles)
        release_device_memory()
        enforce_budget(plan.budget, device)
        self._plan_handles = apply_memory_plan(pipe, plan, device)
        if not streams_now and not self._compiled and (self.compile or get_variant(self.variant).fp8) \
                and device.type == "cuda":
            self._torch_compile(pipe.transformer, self.variant, device)
            self._compiled, self._compiled_shapes = True, set()
        self._plan = plan
        self._choice = PlacementChoice("budget", plan.summary())
        self._notes.append(f"re-planned: {plan.summary()}")
        log.info("re-planned GPU memory: %s", plan.summary())

    def compile_on_zerogpu(self, spaces) -> None:
        """ZeroGPU start-up (the app calls it once, after `load`): quantize (fp8) and compile the transformer inside
        one long GPU call with the `spaces` AoT helpers, then put it in place for every request (zerogpu.py)."""
        from .zerogpu import STARTUP_GPU_SECONDS, capture_and_compile

        with self._lock:
            self.load()
            if self._zerogpu != "pending":
                return
            pipe, variant, device = self._pipe, get_variant(self.variant), self._device

            @spaces.GPU(duration=STARTUP_GPU_SECONDS)
            def build():
                if variant.fp8:
                    fp8_quantize_transformer(pipe.transformer, device, TRANSFORMER_EXCLUDE)
                return capture_and_compile(pipe, spaces, MAX_SEQUENCE_LENGTH)

            try:
                compiled = build()
            except Exception as exc:
                if variant.fp8:  # its fp8 weights were made in the GPU call; this process holds bf16 ones
                    raise PipelineError(f"the fp8 tier could not be compiled on this Space ({type(exc).__name__}); "
                                        "start it with FLUXDEPTH_VARIANT=bf16") from exc
                log.warning("ZeroGPU start-up compile failed; running uncompiled", exc_info=True)
                self._notes.append(f"start-up compile failed ({type(exc).__name__}); running uncompiled")
                self._zerogpu, self._compiled = None, False
                return
            spaces.aoti_apply(compiled, pipe.transformer)
            self._zerogpu = "applied"
            log.info("transformer compiled ahead of time for ZeroGPU (%s)", variant.name)

    def _inpaint_pipe(self):
        """diffusers' FluxControlInpaintPipeline over the same modules (no second copy of the weights)."""
        if self._inpaint is None:
            from diffusers import FluxControlInpaintPipeline

            self._inpaint = FluxControlInpaintPipeline(**self._pipe.components)
            self._inpaint.set_progress_bar_config(disable=True)
        return self._inpaint

    def _img2img_pipe(self):
        if self._img2img is None:
            from diffusers import FluxControlImg2ImgPipeline

            # Shares every module with the text-to-image pipeline: no second copy of the weights. Not `from_pipe`:
            # it casts the shared modules to float32 unless told otherwise, which turned a bf16 pipeline's weights
            # to float32 under the text-to-image pipeline too (found at 2K on the GPU, docs/benchmarks.md).
            self._img2img = FluxControlImg2ImgPipeline(**self._pipe.components)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    # --- generation ------------------------------------------------------------------------------------------------

    def generate(
        self,
        control: ControlImage,
        settings: GenerationSettings,
        *,
        init_image: Image.Image | None = None,
        init_image_name: str | None = None,
        mask: Image.Image | None = None,
        mask_name: str | None = None,
        depth: DepthStats | None = None,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
        load_progress: LoadProgress | None = None,
        on_preview: PreviewCallback | None = None,
        preview_every: int = 0,
    ) -> GenerationResult:
        # 1. Check the inputs before touching the model (the settings record checked its own values).
        width, height = control.width, control.height
        _check_inputs(width, height, init_image, mask)
        with self._lock:
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled("cancelled before it started")
            # 2. Load lazily.
            if self._pipe is None:
                self.load(load_progress)
            if self._zerogpu == "pending":
                raise PipelineError(f"on ZeroGPU the {self.variant} tier runs compiled, and it is compiled at "
                                    "start-up only: start the Space with FLUXDEPTH_VARIANT set to it "
                                    "(FLUXDEPTH_COMPILE=1 for bf16), or choose the tier it started with")
            # 3. Room on the card: a plan that follows it is re-made when other programs took or freed memory.
            self._fit_plan_to_card(load_progress)
            t0 = time.perf_counter()
            # 4. Seed: noise comes from a CPU generator so a seed gives the same image on any device.
            settings = settings.settled()  # the one seed rule (settings.py): drawn when unset, then reported
            seed = int(settings.seed)
            # 5. Style LoRAs (a scale change is one number; new files are read once), then the inputs in the form
            #    diffusers passes through untouched.
            loras = self._apply_loras(settings.loras, load_progress)
            pipe, kwargs, total = self._pipeline_inputs(control, settings, seed, init_image, mask)
            step_end = self._step_end(total, (width, height), on_step, cancel,
                                      (on_preview, preview_every, load_progress))
            tiled = self._vae_tiling(settings.vae_tiling, width, height)
            shape = (width, height, init_image is not None)
            compiling = self._announce_compile(shape, load_progress)
            # 6. Denoise. An image that runs out of memory under a plan that follows the card is tried once more
            #    with a smaller plan (same seed: the same image).
            pixels = self._denoise(pipe, kwargs, step_end, seed, (width, height), load_progress)
            image = pipe.image_processor.numpy_to_pil(pixels[None])[0]  # what output_type="pil" returns
            seconds = time.perf_counter() - t0
            self._after_image(shape, total, seconds, compiling)
            # 7. Record what made it.
            meta = self._metadata(settings, seed, shape, seconds, tiled, loras, init_image_name, depth,
                                  (mask_name or "mask") if mask is not None else None)
            return GenerationResult(image, meta, pixels)

    def _step_end(self, total: int, size: tuple[int, int], on_step: StepCallback | None,
                  cancel: threading.Event | None, preview: tuple):
        """The pipeline's callback_on_step_end: progress, cancel between steps, and every `preview_every` steps
        (not the last: the real decode follows) the live preview (preview.py)."""
        on_preview, every, load_progress = preview

        def step_end(pipe, step, timestep, callback_kwargs):
            if step + 1 == total:  # the decode comes next
                release_stream_cache(self._plan, "transformer", self._device)
            if on_step is not None:
                on_step(step + 1, total)
            if cancel is not None and cancel.is_set():
                raise GenerationCancelled(f"cancelled after step {step + 1} of {total}")
            if on_preview is not None and every and (step + 1) % every == 0 and step + 1 < total:
                self._show_preview(pipe, callback_kwargs["latents"], size, (step + 1, total), on_preview,
                                   load_progress)
            return callback_kwargs

        return step_end

    def _show_preview(self, pipe, latents, size: tuple[int, int], step: tuple[int, int], on_preview,
                      load_progress: LoadProgress | None) -> None:
        """One live preview. It never costs the image: a decode that fails turns the preview off for this load, with
        one line, and the image goes on."""
        decoder = self._preview_decoder(pipe, load_progress)
        if decoder is None:
            return
        try:
            image = decode_preview(pipe, decoder, latents, size[1], size[0])
        except Exception as exc:  # noqa: BLE001 - the preview is optional; the image is not
            log.warning("live preview failed; off for this load", exc_info=True)
            self._preview_off(f"live preview off: its decode failed ({type(exc).__name__}); the image goes on",
                              load_progress)
            return
        on_preview(step[0], step[1], image)

    def _preview_decoder(self, pipe, load_progress: LoadProgress | None):
        """The tiny autoencoder, loaded on the first preview of this load; a failure is said once and remembered."""
        if self._preview is None:
            decoder, why = load_preview_decoder(self.source.kind, pipe.vae.config, pipe._execution_device,
                                                pipe.vae.dtype)
            self._preview = decoder
            if why:
                self._preview_off(why, load_progress)
        return self._preview or None

    def _preview_off(self, why: str, load_progress: LoadProgress | None) -> None:
        """No live preview for the rest of this load, said once (status line and the load's notes)."""
        self._preview = False
        self._notes.append(why)
        if load_progress is not None:
            load_progress(0.0, why)

    def _pipeline_inputs(self, control: ControlImage, settings: GenerationSettings, seed: int,
                         init_image: Image.Image | None, mask: Image.Image | None = None) -> tuple:
        """(pipeline, its __call__ arguments, denoising steps that will run): text-to-image, img2img when an init
        image is given (steps x strength of them run), inpainting when a mask is given too (white = regenerate;
        diffusers binarizes it at the latent size, docs/inpaint.md)."""
        prompt_embeds, pooled = self._encode_prompt(settings.prompt, int(settings.max_sequence_length))
        kwargs = dict(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            control_image=control_tensor(control),
            height=control.height,
            width=control.width,
            num_inference_steps=int(settings.steps),
            guidance_scale=float(settings.guidance),
            generator=torch.Generator("cpu").manual_seed(seed),
            max_sequence_length=int(settings.max_sequence_length),
            output_type="np",
        )
        if init_image is None:
            return self._pipe, kwargs, int(settings.steps)
        kwargs["image"] = init_image.convert("RGB").resize((control.width, control.height),
                                                          Image.Resampling.LANCZOS)
        kwargs["strength"] = float(settings.strength)
        steps = refine_steps(settings.steps, settings.strength)
        if mask is None:
            return self._img2img_pipe(), kwargs, steps
        kwargs["mask_image"] = mask.convert("L")
        return self._inpaint_pipe(), kwargs, steps

    def _announce_compile(self, shape: tuple, load_progress: LoadProgress | None) -> tuple:
        """Say before the image when it compiles (ahead-of-time blocks say it themselves). Returns what
        `_after_image` needs: (first compiled call expected, the AOT blocks or None, their event count so far)."""
        # Compiled at start-up on ZeroGPU: no image there pays for a compile.
        first_compiled = self._compiled and self._zerogpu is None and shape not in self._compiled_shapes
        aot = self._active_aot()
        if aot is not None:
            aot.notify = self._aot_notifier(load_progress)
        elif first_compiled and load_progress is not None:
            load_progress(0.0, f"compiling the transformer for {shape[0]}x{shape[1]}: "
                               f"{self.first_compile_cost(self.variant)}")
        return first_compiled, aot, len(aot.events) if aot is not None else 0

    def _after_image(self, shape: tuple, steps: int, seconds: float, compiling: tuple) -> None:
        """The step time for the tier labels (not from an image that compiled: that times the compiler), the
        first-compile time and torch's compile artifacts for the next start, and the card's cache back to others."""
        first_compiled, aot, aot_events = compiling
        new_events = []
        if aot is not None:
            aot.notify = None
            # Only an image that compiled is a "first compiled image"; one that loaded saved blocks is neither that
            # nor a clean step time.
            new_events = aot.events[aot_events:]
            first_compiled = any(e.kind == "compiled" for e in new_events)
        width, height, img2img = shape
        if not first_compiled and not new_events:
            self.timings.record(self.source.key, self.device_name(), self.variant, width, height, steps, seconds)
        if first_compiled:
            self.timings.record_first_compiled(self.source.key, self.device_name(), self.variant, seconds)
            if self._active_aot() is None:  # torch.compile's work, for the next start (compile_cache.py)
                save_compile_artifacts(self.cache.root, self.variant, self._device, width, height, img2img)
        if self._compiled:
            self._compiled_shapes.add(shape)
        if self._graphed is not None and self._graphed.failed and self._graphed.failed not in self._notes:
            self._notes.append(self._graphed.failed)
        if self._follows_card and self._device.type == "cuda":
            # The card is shared (Houdini): what this image's activations held goes back to the driver, so other
            # programs can have it between images; the next image re-plans if they keep it.
            torch.cuda.empty_cache()

    def _metadata(self, settings: GenerationSettings, seed: int, shape: tuple, seconds: float, tiled: bool,
                  loras, init_image_name: str | None, depth: DepthStats | None,
                  mask_name: str | None) -> GenerationMetadata:
        width, height, img2img = shape
        return GenerationMetadata(
            prompt=settings.prompt,
            seed=seed,
            steps=int(settings.steps),
            guidance=float(settings.guidance),
            width=width,
            height=height,
            variant=self.variant,
            model=self.source.public_key,
            revision=self._revision or "",
            strength=float(settings.strength) if img2img else None,
            init_image=init_image_name if img2img else None,
            inpaint_mask=mask_name,
            depth_file=depth.file if depth else None,
            depth_channel=depth.channel if depth else None,
            depth_mode=depth.mode if depth else None,
            depth_inverted=depth.inverted if depth else None,
            depth_range=depth.range if depth else None,
            placement=self._choice.placement if self._choice else None,
            memory_plan=self._plan.summary() if self._plan else None,
            loras=tuple({"name": f.name, "scale": scale, "sha256": f.digest} for f, scale in loras),
            vae_tiling=tiled,
            compiled=self._compiled,
            device=str(self._device),
            seconds=round(seconds, 3),
            notes=((self.source.label,) if self.source.kind == "tiny" else ())
            + tuple(note for f, _ in loras for note in f.notes)
            + tuple(hint for hint in (faster_tier_hint(self._plan),) if hint),
        )

    def _denoise(self, pipe, kwargs: dict, step_end, seed: int, size: tuple[int, int],
                 load_progress: LoadProgress | None) -> np.ndarray:
        """The pipeline's own __call__. no_grad, not inference_mode: quanto qint4 fails under inference_mode."""
        for attempt in (1, 2):
            failure = None
            try:
                with torch.no_grad():
                    return pipe(**kwargs, callback_on_step_end=step_end).images[0]
            except GenerationCancelled as exc:
                failure = GenerationCancelled(str(exc))
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                failure = OutOfMemoryError(
                    f"out of GPU memory at {size[0]}x{size[1]} with {self.variant} "
                    f"({self._choice.placement if self._choice else self.placement}): try qint8 or qint4, "
                    "placement model_offload, or a smaller long side")
            # Outside the except block: the caught error (and its traceback, which holds the failed step's tensors)
            # is gone, so the memory can really be freed before anyone sees the message or the image is retried.
            self._after_failure(pipe)
            retry = attempt == 1 and isinstance(failure, OutOfMemoryError) and self._follows_card
            if retry:
                smaller = int(self._plan.budget * 0.8)
                try:
                    self._fit_plan_to_card(load_progress, shrink_to=smaller)
                except OutOfMemoryError:
                    retry = False
            if not retry:
                raise failure
            log.warning("out of memory: retrying once with %s", self._plan.summary())
            kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        raise AssertionError("unreachable")

    def compiled_block_events(self) -> list:
        """What the ahead-of-time blocks did in this load, in order: AotEvent("compiled" or "loaded", block kind,
        seconds). Empty for torch.compile and uncompiled tiers."""
        return list(self._aot.events) if self._aot is not None else []

    def _active_aot(self) -> AotBlocks | None:
        """The ahead-of-time blocks while they serve the transformer (not after a hand-over to torch.compile)."""
        return self._aot if self._aot is not None and self._aot.installed else None

    def _aot_notifier(self, load_progress: LoadProgress | None):
        quoted = []

        def notify(message: str) -> None:
            if load_progress is None:
                return
            if message.startswith("compiling") and not quoted:  # the cost once per image, not per block kind
                quoted.append(True)
                message += f": {self.first_compile_cost(self.variant)}"
            load_progress(0.0, message)

        return notify

    def _graphs_wanted(self) -> bool:
        """CUDA graphs replay the fp8 call only while it runs torch.compile's code on a transformer that stays on
        the GPU (graphs.py)."""
        return (self._compiled and self._zerogpu is None and self._active_aot() is None
                and not _transformer_moves(self._choice, self._plan))

    def _drop_graphs(self, remove: bool = False) -> None:
        if self._graphed is not None:
            if remove:
                self._graphed.remove()
                self._graphed = None
            else:
                self._graphed.clear()

    def _graphs_status(self) -> str | None:
        graphed = self._graphed
        if graphed is None:
            return None
        if graphed.failed:
            return graphed.failed
        return f"{len(graphed.graphs)} size(s) captured, {graphed.replays} replays" if self._graphs_wanted() \
            else "off (the transformer is not compiled and resident)"

    def _torch_compile(self, transformer, tier: str, device: torch.device) -> None:
        """torch.compile the transformer, with what earlier starts compiled handed to torch first (compile_cache.py):
        the first image of a size saved there compiles in seconds."""
        if not self._artifacts_loaded:
            self._artifacts_loaded = True
            load_compile_artifacts(self.cache.root, tier, device)
        compile_transformer(transformer, self.cache.root)

    def _aot_failed(self, reason: str) -> None:
        """The ahead-of-time path could not run here: torch.compile takes over (same speed once traced)."""
        self._torch_compile(self._pipe.transformer, self.variant, self._device)
        self._compiled_shapes = set()
        self._drop_graphs()
        self._notes.append(reason)

    def _leave_aot_for_loras(self, load_progress: LoadProgress | None) -> None:
        """Saved packages cannot see style LoRAs (hooks on the layers): torch.compile traces them instead, for the
        rest of this load."""
        self._aot.remove()
        self._torch_compile(self._pipe.transformer, self.variant, self._device)
        self._compiled_shapes = set()
        self._drop_graphs()
        if load_progress is not None:
            load_progress(0.0, "style LoRAs: the transformer compiles again with them (the saved compiled blocks "
                               "carry none); this image takes longer")

    def _vae_tiling(self, mode: str, width: int, height: int) -> bool:
        """Decode in tiles when asked, or ("auto") when a whole decode would not fit what this process may still
        use on the GPU: the budget (or the card) less what it holds now. diffusers' own tiled decode
        (AutoencoderKL.enable_tiling): seams are blended; the image differs slightly from a whole decode."""
        if mode == "auto":
            tile = False
            if self._device is not None and self._device.type == "cuda":
                held = torch.cuda.memory_allocated(self._device)
                cap = self._plan.budget if self._plan else torch.cuda.get_device_properties(self._device).total_memory
                free = min(cap - held, torch.cuda.mem_get_info(self._device)[0] + torch.cuda.memory_reserved(
                    self._device) - held)
                tile = ACTIVATION_BYTES_PER_MEGAPIXEL * width * height / 2**20 > free
        else:
            tile = mode == "on"
        vae = self._pipe.vae
        vae.enable_tiling() if tile else vae.disable_tiling()
        return tile

    def lora_files(self, loras) -> list[str]:
        """The file of each style LoRA, in order: from this manager's folder (and, where allowed, a path); a name
        that is neither raises a one-line SettingsError. Front ends call it to refuse before any work."""
        return [resolve_lora(lora.name, self.lora_dir, self.lora_paths) for lora in loras]

    def lora_digests(self, loras) -> tuple[str, ...]:
        """sha256 of each style LoRA's file, in order (shot keys count a LoRA by its bytes)."""
        return tuple(file_digest(path) for path in self.lora_files(loras))

    def _apply_loras(self, loras, load_progress: LoadProgress | None = None) -> list[tuple[LoraFile, float]]:
        if loras and self._zerogpu == "applied":
            # The compiled transformer replaced the eager one (its weights are freed): nothing to hang a LoRA on.
            raise PipelineError("style LoRAs are off on this Space: its transformer is compiled ahead of time for "
                                "ZeroGPU; the host can start it without FLUXDEPTH_COMPILE, in bf16, to offer them")
        chosen = []
        for lora, path in zip(loras, self.lora_files(loras)):
            digest = file_digest(path)
            if digest not in self._lora_files:
                while len(self._lora_files) >= 8:
                    self._lora_files.pop(next(iter(self._lora_files)))
                self._lora_files[digest] = read_lora(path, os.path.basename(lora.name), digest,
                                                     self._pipe.transformer)
            chosen.append((self._lora_files[digest], lora.scale))
        if chosen or self._loras is not None:
            if self._loras is None:
                self._loras = LoraStack(self._device, self.source.dtype)
            if chosen and self._active_aot() is not None:
                self._loras.apply(self._pipe.transformer, chosen)
                self._leave_aot_for_loras(load_progress)
            elif self._loras.apply(self._pipe.transformer, chosen) and self._compiled:
                # Compiled code does not see forward hooks added or changed after it was traced (torch does not
                # guard on them): measured on the GPU, a LoRA on the compiled fp8 tier changed nothing. Trace
                # again; a scale change alone needs nothing (the scales are tensors the graph reads).
                torch._dynamo.reset()
                self._compiled_shapes = set()
                self._drop_graphs()
                if load_progress is not None:
                    load_progress(0.0, "compiling again for the new set of style LoRAs: this image takes longer")
        return chosen

    def _encode_prompt(self, prompt: str, max_sequence_length: int):
        """T5 and CLIP run once per prompt: a seed batch, a sequence or a re-run reuses the embeddings, so under a
        budget the text encoders never come back to the GPU for them. Exactly what the pipeline computes itself
        from `prompt` (diffusers' own encode_prompt, same arguments): images are unchanged (tests/test_pipeline.py)."""
        key = (prompt, max_sequence_length)
        if key not in self._prompt_cache:
            with torch.no_grad():
                embeds, pooled, _ = self._pipe.encode_prompt(prompt=prompt, prompt_2=None,
                                                             device=self._pipe._execution_device,
                                                             num_images_per_prompt=1,
                                                             max_sequence_length=max_sequence_length)
            release_stream_cache(self._plan, "text_encoder_2", self._device)
            while len(self._prompt_cache) >= 16:
                self._prompt_cache.pop(next(iter(self._prompt_cache)))
            self._prompt_cache[key] = (embeds, pooled)
        return self._prompt_cache[key]

    def _after_failure(self, pipe) -> None:
        """Leave the manager usable: drop offload hooks' stale state and free what the failed call held."""
        self._drop_graphs()
        if hasattr(pipe, "maybe_free_model_hooks"):
            try:
                pipe.maybe_free_model_hooks()
            except Exception:  # noqa: BLE001 - cleanup must not mask the real error
                log.exception("freeing model hooks failed")
        release_device_memory()
