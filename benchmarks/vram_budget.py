"""GPU benchmark: whole 1024x1024 images through PipelineManager under VRAM budgets, per tier.

    python benchmarks/vram_budget.py --variant qint4 --budgets 24 16 12 8 --json qint4.json

A consumer card is emulated on the big one: the manager caps its own CUDA allocator at the budget
(torch.cuda.set_per_process_memory_fraction, pipeline/budget.py), so a plan that does not hold fails as OOM here just
as it would on the small card. FLUX.1-Depth-dev-shaped components with random weights (benchmarks/configs), built
once per tier and copied for each run. For each budget, and resident on the whole card for reference:
- the plan (what is resident, what streams, bytes streamed per step),
- peak GPU memory of the whole run (load + two images), which must stay under the budget,
- seconds for the first image (T5 encodes the prompt) and the second (cached embeddings), and the ratio of the
  second to the resident second image,
- host memory (resident set) after the run,
- whether the pixels equal the resident run's (same seed, same inputs).
Also the host -> GPU copy bandwidth from pageable and pinned memory, to project each row to a PCIe 4.0 x16 card.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from pipeline_gpu import (  # noqa: E402
    GIB, build_small_parts, build_t5, build_transformer, control_image, versions,
)
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager  # noqa: E402
from fluxdepth_ui.pipeline.placement import module_bytes  # noqa: E402
from fluxdepth_ui.pipeline.sources import LoadedModel  # noqa: E402
from fluxdepth_ui.pipeline.variants import get_variant, quantize_component  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, volumetric fog, 35mm photo"


def host_rss_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def copy_bandwidth() -> dict:
    """GB/s for a 2 GiB host -> GPU copy, pageable and pinned (median of 5)."""
    out = {}
    n = 2 * GIB
    for kind in ("pageable", "pinned"):
        host = torch.empty(n, dtype=torch.uint8, pin_memory=(kind == "pinned"))
        host.fill_(1)
        dev = torch.empty(n, dtype=torch.uint8, device="cuda")
        times = []
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            dev.copy_(host, non_blocking=(kind == "pinned"))
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[kind] = round(n / 1e9 / float(np.median(times)), 1)
        del host, dev
    torch.cuda.empty_cache()
    return out


def build_master(variant_name: str) -> dict:
    """The tier's components on the CPU (as a fresh start would have them before placement)."""
    variant = get_variant(variant_name)
    parts = build_small_parts()
    transformer, t5 = build_transformer(), build_t5()
    if variant.transformer:
        quantize_component(transformer, variant.transformer, "transformer")
        quantize_component(t5, variant.text_encoder_2, "text_encoder_2")
    elif variant.text_encoder_2:  # fp8: the manager quantizes the transformer at load; T5 is qint8
        quantize_component(t5, variant.text_encoder_2, "text_encoder_2")
    components = dict(parts, transformer=transformer, text_encoder_2=t5)
    for value in components.values():
        if isinstance(value, torch.nn.Module):
            value.to("cpu")
    torch.cuda.empty_cache()
    return components


_PLANNER = {}


def set_mode(mode: str) -> None:
    """Planner and streaming settings for one row. mode: '+'-joined flags; 'sync' = diffusers' default streaming (the
    CPU waits after every streamed block); 'even' / 'count' = which blocks stay resident when the transformer
    streams, with that layout's allocator headroom (pipeline/budget.py STREAM_LAYOUTS, HEADROOM; neither: the app's
    default). Session 40's rows 'even+h1' are today's 'even' (6%, at least 1 GiB); its 'even' rows had count's 12%."""
    import fluxdepth_ui.pipeline.budget as budget_module

    if not _PLANNER:
        _PLANNER.update(layout=os.environ.get("FLUXDEPTH_STREAM_LAYOUT"))
    flags = set(mode.split("+")) - {""}
    budget_module.RUN_AHEAD = None if "sync" in flags else 1
    layout = next((f for f in flags if f in budget_module.STREAM_LAYOUTS), _PLANNER["layout"])
    if layout:
        os.environ["FLUXDEPTH_STREAM_LAYOUT"] = layout
    else:
        os.environ.pop("FLUXDEPTH_STREAM_LAYOUT", None)


def budget_manager(master: dict, variant: str, budget: str | None) -> tuple:
    """A manager over a fresh copy of the tier's components for one budget ("12"; "12:sync", "12:even", "12:count",
    see `set_mode`; None = resident). Returns (manager, budget, mode)."""
    budget, _, mode = (budget or "").partition(":")
    budget = budget or None
    set_mode(mode)
    components = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in master.items()}
    loader = lambda v, progress: LoadedModel(components=components, revision="random", notes=[])  # noqa: E731
    manager = PipelineManager(ModelSource("black-forest-labs/FLUX.1-Depth-dev"), variant=variant,
                              placement="gpu" if budget is None else "auto", vram_budget=budget, loader=loader,
                              cache_root="/tmp/fluxdepth-bench-cache")
    return manager, budget, mode


def run_one(master: dict, variant: str, budget, control) -> dict:
    """One budget, or resident (None): load, two images, peaks, host memory, pixels."""
    torch.cuda.set_per_process_memory_fraction(1.0)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    manager, budget, mode = budget_manager(master, variant, budget)
    from fluxdepth_ui.pipeline.budget import stream_layout

    row: dict = {"budget_gib": budget, "streaming": "sync" if "sync" in mode else "run-ahead 1", "mode": mode,
                 "layout": stream_layout()}
    try:
        t = time.perf_counter()
        manager.load()
        torch.cuda.synchronize()
        row["load_s"] = round(time.perf_counter() - t, 1)
        row["plan"] = manager.status()["memory_plan"] or manager.status()["placement_reason"]
        plan = manager._plan
        row["streamed_gib_per_step"] = round(plan.streamed_bytes_per_step / GIB, 2) if plan else 0.0
        row["after_load_gib"] = round(torch.cuda.memory_allocated() / GIB, 2)
        trace = row.setdefault("step_gib", [])  # live memory at each step's end: growth means a pile-up
        t5_calls = []  # T5 forwards per image: the second image (same prompt) must need none
        manager._pipe.text_encoder_2.register_forward_hook(lambda *a: t5_calls.append(1))
        images = []
        phases = row.setdefault("phase_peaks_gib", [])  # per image: [live, reserved] of the steps, then the decode

        def on_step(i, n):
            trace.append(round(torch.cuda.memory_allocated() / GIB, 2))
            if i == n:  # the steps' peaks, then the decode's alone
                phases.append([round(torch.cuda.max_memory_allocated() / GIB, 2),
                               round(torch.cuda.max_memory_reserved() / GIB, 2)])
                peaks.append((torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()))
                torch.cuda.reset_peak_memory_stats()

        peaks: list = []
        for seed in (1, 2):
            t5_calls.clear()
            t = time.perf_counter()
            result = manager.generate(control, GenerationSettings(PROMPT, seed=seed, steps=28, guidance=10.0),
                                      on_step=on_step)
            torch.cuda.synchronize()
            phases.append([round(torch.cuda.max_memory_allocated() / GIB, 2),
                           round(torch.cuda.max_memory_reserved() / GIB, 2)])
            peaks.append((torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()))
            row[f"image{seed}_s"] = round(time.perf_counter() - t, 2)
            row[f"image{seed}_t5_calls"] = len(t5_calls)
            images.append(result.pixels)
        row["peak_gib"] = round(max(p[0] for p in peaks) / GIB, 2)
        row["peak_reserved_gib"] = round(max(p[1] for p in peaks) / GIB, 2)
        row["host_rss_gib"] = round(host_rss_gib(), 1)
        row["pixels"] = images[1]
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a failed plan is a result row
        import traceback

        row["where"] = [f"{f.filename.split('/')[-1]}:{f.lineno} {f.name}"
                        for f in traceback.extract_tb(exc.__traceback__)][-8:]
        row["ok"] = False
        row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    finally:
        manager.unload()
        del manager
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(json.dumps({k: v for k, v in row.items() if k != "pixels"}), flush=True)
    return row


def profile_one(master: dict, variant: str, budget: str, control, trace_path: str | None) -> None:
    """Where a streamed step's time goes: torch.profiler over 2 steps after a warm image (kernels, host -> GPU
    copies, CPU waits), as tables on stdout and, with trace_path, a gzipped Chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    manager, budget, mode = budget_manager(master, variant, budget)
    manager.load()
    settings = GenerationSettings(PROMPT, seed=1, steps=2, guidance=10.0)
    manager.generate(control, settings)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        manager.generate(control, settings)
        torch.cuda.synchronize()
    print(f"== profile {variant} @ {budget} ({mode or 'run-ahead 1'}): {manager.status()['memory_plan']}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60))
    if trace_path:
        import gzip
        import shutil

        prof.export_chrome_trace(trace_path)
        with open(trace_path, "rb") as src, gzip.open(trace_path + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(trace_path)
    manager.unload()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True, choices=["bf16", "qint8", "qint4", "fp8"])
    ap.add_argument("--budgets", nargs="+", default=["24", "16", "12", "8"],
                    help="GiB each; '12:sync' streams with diffusers' default (CPU waits after each block)")
    ap.add_argument("--no-resident", action="store_true", help="skip the resident reference run")
    ap.add_argument("--raw-oom", action="store_true", help="let torch's own out-of-memory text through")
    ap.add_argument("--json", required=True)
    ap.add_argument("--profile", help="profile one budget ('24', '24:sync') instead: 2 steps under torch.profiler")
    ap.add_argument("--trace", help="with --profile: write a gzipped Chrome trace here")
    args = ap.parse_args()
    if args.raw_oom:
        import fluxdepth_ui.pipeline.manager as manager_module

        manager_module._is_oom = lambda exc: False

    report = {"variant": args.variant, **versions(), "size": "1024x1024", "steps": 28,
              "bandwidth_gb_s": copy_bandwidth()}
    print(json.dumps(report), flush=True)
    t = time.perf_counter()
    master = build_master(args.variant)
    report["build_s"] = round(time.perf_counter() - t, 1)
    report["component_gib"] = {k: round(module_bytes(v) / GIB, 2) for k, v in master.items()
                               if isinstance(v, torch.nn.Module)}
    control = control_image()
    if args.profile:
        profile_one(master, args.variant, args.profile, control, args.trace)
        return
    rows = []
    reference = None
    if not args.no_resident:
        reference = run_one(master, args.variant, None, control)
        rows.append(reference)
    for budget in args.budgets:
        row = run_one(master, args.variant, budget, control)
        budget = row["budget_gib"]
        if row.get("ok") and reference and reference.get("ok"):
            row["same_pixels_as_resident"] = bool(np.array_equal(row["pixels"], reference["pixels"]))
            row["max_abs_diff"] = float(np.abs(row["pixels"] - reference["pixels"]).max())
            row["x_resident"] = round(row["image2_s"] / reference["image2_s"], 2)
            row["under_budget"] = row["peak_reserved_gib"] <= float(budget)
        rows.append(row)
    report["rows"] = [{k: v for k, v in r.items() if k != "pixels"} for r in rows]
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    print("\nbudget | streaming | plan | peak GiB (reserved) | image 1 / 2 s | x resident | GiB/step | host GiB | same px")
    for r in report["rows"]:
        print(f"{r['budget_gib']} | {r.get('streaming')} | {r.get('plan', r.get('error'))} | {r.get('peak_gib')} ({r.get('peak_reserved_gib')})"
              f" | {r.get('image1_s')} / {r.get('image2_s')} | {r.get('x_resident')} | "
              f"{r.get('streamed_gib_per_step')} | {r.get('host_rss_gib')} | {r.get('same_pixels_as_resident')}")


if __name__ == "__main__":
    main()
