"""Every precision / speed tier in one process, so the ratio to bf16 is measured in the same run (issue 6).

    python benchmarks/tiers_gpu.py --json tiers.json [--tiers bf16,qint8,...] [--offload] [--kernels] [--cache]

Per tier, through PipelineManager (the app's own code path: quanto quantizes, dense-path linears run, fp8 via
torchao, regional torch.compile), on a FLUX.1-Depth-dev-shaped pipeline with random weights (configs in
benchmarks/configs/flux1-depth-dev/):
- load seconds (the manager's load with prepared components: fp8 quantization, compile set-up) and, for compiled
  tiers, the first-call seconds (the compile itself; a second process with the same --cache-root shows the warm
  cache);
- transformer ms per denoising step at 1024x1024 (median, min, max), ratio to bf16 eager of the same run;
- relative L2 error of one transformer call against bf16 (same inputs): catches a broken tier, says nothing of
  image quality with real weights;
- transformer weight GiB, peak GPU GiB of a whole 28-step generation (T5, CLIP, VAE included), end-to-end seconds;
- --offload: the same generation with model offload (quantized and bf16 tiers), peak GiB and seconds;
- --kernels: the Triton dequant kernels at FLUX's layer shapes on the GPU, bit-compared with the torch reference,
  and their achieved bandwidth;
- --cache: save the quantized transformer the way the app caches it and time the reload a second start does.
The JSON is rewritten after every tier, so a cut-off run keeps what it measured.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from pipeline_gpu import (  # noqa: E402
    GIB,
    PROMPT,
    SIZE,
    build_small_parts,
    build_t5,
    build_transformer,
    cache_roundtrip,
    control_image,
    step_inputs,
    step_times,
    sync,
    versions,
)

from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager  # noqa: E402
from fluxdepth_ui.pipeline.placement import module_bytes  # noqa: E402
from fluxdepth_ui.pipeline.sources import LoadedModel  # noqa: E402
from fluxdepth_ui.pipeline.speed import fp8_quantize_transformer  # noqa: E402
from fluxdepth_ui.pipeline.variants import TRANSFORMER_EXCLUDE, get_variant, quantize_component  # noqa: E402

ALL_TIERS = "bf16,bf16+compile,qint8,qint8+compile,qint4,qint4+compile,fp8-eager,fp8"


def prepared_components(variant_name: str, small: dict) -> dict:
    """What load_model hands the manager for this tier: quantized (quanto, then dense) or bf16, built on the GPU."""
    variant = get_variant(variant_name)
    transformer, t5 = build_transformer(), build_t5()
    if variant.transformer:
        quantize_component(transformer, variant.transformer, "transformer")
    if variant.text_encoder_2:
        quantize_component(t5, variant.text_encoder_2, "text_encoder_2")
    return dict(small, transformer=transformer, text_encoder_2=t5)


def reference_output(small: dict) -> torch.Tensor:
    transformer = build_transformer()
    with torch.no_grad():
        out = transformer(**step_inputs())[0].float()
    del transformer
    torch.cuda.empty_cache()
    return out


def rel_error(transformer, ref: torch.Tensor) -> float:
    with torch.no_grad():
        out = transformer(**step_inputs())[0].float()
    return float((out - ref).norm() / ref.norm())


def fresh_memory() -> float:
    """Free what earlier tiers left (module graphs hold reference cycles) and return the GiB still allocated."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return round(torch.cuda.memory_allocated() / GIB, 2)


def run_tier(tier: str, small: dict, ref: torch.Tensor, args) -> dict:
    name, _, extra = tier.partition("+")
    row: dict = {"tier": tier, "allocated_before_gib": fresh_memory()}
    if name == "fp8-eager":  # fp8 without compile: the manager never runs it so; measured to show why
        transformer = build_transformer()
        t = time.perf_counter()
        fp8_quantize_transformer(transformer, torch.device("cuda"), TRANSFORMER_EXCLUDE)
        sync()
        row["load_s"] = round(time.perf_counter() - t, 2)
        row["transformer_weights_gib"] = round(module_bytes(transformer) / GIB, 2)
        row["rel_err_vs_bf16"] = round(rel_error(transformer, ref), 4)
        times = step_times(transformer, args.step_runs)
        row["step_ms"] = summary(times)
        return row

    compile_ = extra in ("compile", "full") or name == "fp8"
    graphs_before = _unique_graphs()
    components = prepared_components(name, small)
    manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=name, placement="gpu",
                              cache_root=args.cache_root, compile=compile_,
                              loader=lambda v, p: LoadedModel(components, "random"))
    t = time.perf_counter()
    if extra == "full":  # whole-model compile instead of the manager's regional one, for this tier only
        from unittest import mock

        from fluxdepth_ui.pipeline import manager as manager_module

        whole = functools.partial(manager_module.compile_transformer, regional=False)
        with mock.patch.object(manager_module, "compile_transformer", whole):
            manager.load()
    else:
        manager.load()
    sync()
    row["load_s"] = round(time.perf_counter() - t, 2)
    row["compiled"] = manager.status()["compiled"]
    transformer = manager._pipe.transformer
    row["transformer_weights_gib"] = round(module_bytes(transformer) / GIB, 2)
    t = time.perf_counter()
    row["rel_err_vs_bf16"] = round(rel_error(transformer, ref), 4)  # first call: compiles where compiled
    sync()
    row["first_call_s"] = round(time.perf_counter() - t, 2)
    row["compiled_graphs"] = _unique_graphs() - graphs_before
    print(f"{tier}: loaded in {row['load_s']} s, first call {row['first_call_s']} s", flush=True)
    row["step_ms"] = summary(step_times(transformer, args.step_runs))

    control = control_image()
    if not args.no_e2e:
        manager.generate(control, GenerationSettings(PROMPT, seed=0, steps=2))  # warm-up (text encoders, VAE)
        sync()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        manager.generate(control, GenerationSettings(PROMPT, seed=0, steps=args.steps))
        sync()
        row["e2e_s"] = round(time.perf_counter() - t, 2)
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    manager.unload()
    components = transformer = None  # noqa: F841 - drop the last references before the next tier
    torch.cuda.empty_cache()
    return row


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def run_offload(name: str, small: dict, args) -> dict:
    before = fresh_memory()
    components = prepared_components(name, small)
    manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=name,
                              placement="model_offload", cache_root=args.cache_root,
                              loader=lambda v, p: LoadedModel(components, "random"))
    manager.load()
    torch.cuda.empty_cache()
    control = control_image()
    manager.generate(control, GenerationSettings(PROMPT, seed=0, steps=2))
    sync()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    manager.generate(control, GenerationSettings(PROMPT, seed=0, steps=args.offload_steps))
    sync()
    row = {"tier": name, "allocated_before_gib": before, "placement": manager.status()["placement"],
           "steps": args.offload_steps,
           "e2e_s": round(time.perf_counter() - t, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2)}
    manager.unload()
    components = None  # noqa: F841
    for part in small.values():  # offload left the shared small parts on the CPU
        if isinstance(part, torch.nn.Module):
            part.to("cuda")
    torch.cuda.empty_cache()
    return row


def check_kernels() -> dict:
    """Triton dequant vs the torch reference at FLUX's shapes: same bits, and the bandwidth reached."""
    import triton.testing

    from fluxdepth_ui.pipeline import dequant

    out = {"triton_available": dequant.triton_available(), "shapes": []}
    g = torch.Generator("cuda").manual_seed(0)
    for n, k in ((3072, 3072), (12288, 3072), (3072, 12288), (21504, 3072), (3072, 15360)):
        packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device="cuda", generator=g)
        scale = (torch.rand(n, k // 128, device="cuda", generator=g) * 0.01).to(torch.bfloat16)
        shift = (torch.randn(n, k // 128, device="cuda", generator=g) * 0.05).to(torch.bfloat16)
        q8 = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
        s8 = (torch.rand(n, 1, device="cuda", generator=g) * 0.01).to(torch.bfloat16)
        w4 = dequant.dequant_int4_triton(packed, scale, shift)
        w8 = dequant.dequant_int8_triton(q8, s8)
        same4 = torch.equal(w4, dequant.dequant_int4_reference(packed, scale, shift, torch.bfloat16))
        same8 = torch.equal(w8, dequant.dequant_int8_reference(q8, s8, torch.bfloat16))
        ms4 = triton.testing.do_bench(lambda: dequant.dequant_int4_triton(packed, scale, shift), return_mode="median")
        ms8 = triton.testing.do_bench(lambda: dequant.dequant_int8_triton(q8, s8), return_mode="median")
        x = torch.randn(4608, k, device="cuda", dtype=torch.bfloat16, generator=g)
        mm = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w4), return_mode="median")
        bytes4 = packed.numel() + 2 * w4.numel() + 4 * scale.numel()
        bytes8 = q8.numel() + 2 * w8.numel() + 2 * s8.numel()
        out["shapes"].append({"out": n, "in": k, "int4_same_bits": same4, "int8_same_bits": same8,
                              "int4_us": round(ms4 * 1e3, 1), "int4_tb_s": round(bytes4 / ms4 / 1e9, 2),
                              "int8_us": round(ms8 * 1e3, 1), "int8_tb_s": round(bytes8 / ms8 / 1e9, 2),
                              "bf16_matmul_4608_rows_us": round(mm * 1e3, 1)})
    out["all_same_bits"] = all(s["int4_same_bits"] and s["int8_same_bits"] for s in out["shapes"])
    return out


def summary(times: list[float]) -> dict:
    return {"median": round(statistics.median(times), 1), "min": round(min(times), 1), "max": round(max(times), 1),
            "n": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiers", default=ALL_TIERS, help=f"comma-separated, from {ALL_TIERS}")
    ap.add_argument("--step-runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--offload", default="", help="comma-separated tiers to run with model offload")
    ap.add_argument("--offload-steps", type=int, default=8)
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--cache", default="", help="comma-separated weight types (qint8,qint4) for a cache round trip")
    ap.add_argument("--cache-root", default=os.path.join(tempfile.gettempdir(), "fluxdepth-bench-cache"))
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    report: dict = {**versions(), "size": f"{SIZE}x{SIZE}", "steps": args.steps, "tiers": [], "offload": []}
    try:
        import torchao

        report["torchao"] = torchao.__version__
    except ImportError:
        report["torchao"] = None

    def save():
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)

    if args.kernels:
        report["kernels"] = check_kernels()
        print(json.dumps(report["kernels"]), flush=True)
        save()
    small = build_small_parts()
    ref = reference_output(small)
    bf16_ms = None
    for tier in [t for t in args.tiers.split(",") if t]:
        try:
            row = run_tier(tier, small, ref, args)
        except Exception as exc:  # noqa: BLE001 - one broken tier must not lose the others' numbers
            row = {"tier": tier, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
        if tier == "bf16" and "step_ms" in row:
            bf16_ms = row["step_ms"]["median"]
        if bf16_ms and "step_ms" in row:
            row["x_bf16"] = round(row["step_ms"]["median"] / bf16_ms, 3)
        report["tiers"].append(row)
        print(json.dumps(row), flush=True)
        save()
        torch.cuda.empty_cache()
    for name in [t for t in args.offload.split(",") if t]:
        try:
            row = run_offload(name, small, args)
        except Exception as exc:  # noqa: BLE001
            row = {"tier": name, "error": f"{type(exc).__name__}: {exc}"}
        report["offload"].append(row)
        print(json.dumps(row), flush=True)
        save()
    for weights in [t for t in args.cache.split(",") if t]:
        transformer = build_transformer()
        quantize_component(transformer, weights, "transformer")
        row = {"weights": weights, **cache_roundtrip(transformer, weights)}
        report.setdefault("cache", []).append(row)
        print(json.dumps(row), flush=True)
        del transformer
        torch.cuda.empty_cache()
        save()
    print_table(report)


def print_table(report: dict) -> None:
    print(f"\n{report['device']} torch {report['torch']} diffusers {report['diffusers']} "
          f"quanto {report['optimum_quanto']} torchao {report['torchao']}")
    print(f"{'tier':16} {'ms/step':>8} {'min':>7} {'max':>7} {'x bf16':>7} {'weights':>8} {'peak':>7} {'e2e s':>7} "
          f"{'first':>7} {'relerr':>7}")
    for r in report["tiers"]:
        if "error" in r:
            print(f"{r['tier']:16} ERROR {r['error']}")
            continue
        s = r["step_ms"]
        print(f"{r['tier']:16} {s['median']:8.1f} {s['min']:7.1f} {s['max']:7.1f} {r.get('x_bf16', 0):7.3f} "
              f"{r['transformer_weights_gib']:8.2f} {r.get('peak_gib', 0):7.2f} {r.get('e2e_s', 0):7.2f} "
              f"{r.get('first_call_s', 0):7.2f} {r['rel_err_vs_bf16']:7.4f}")
    for r in report["offload"]:
        print(f"offload {r}")


if __name__ == "__main__":
    main()
