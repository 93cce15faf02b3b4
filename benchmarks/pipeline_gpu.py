"""GPU benchmark: FLUX.1-Depth-dev-shaped pipeline with random weights, per precision tier.

    python benchmarks/pipeline_gpu.py --variant bf16 --json out.json [--runs 3]

Random weights cost exactly what real ones do (a forward pass does not look at values), and the configs in
benchmarks/configs/flux1-depth-dev/ are the real model's. Measured per tier, in one process:
- build (random init on the GPU) and quantize time; with --cache-roundtrip also the quantized-cache save and the
  reload a second start does (meta-device build + the dense layout assigned, then moved to the GPU);
- transformer ms per denoising step at 1024x1024 (4096 image + 512 text tokens), CUDA events, median/min/max;
- transformer weight GiB and peak GPU memory of a whole 28-step generation (T5, CLIP and VAE included);
- end-to-end 28-step seconds through PipelineManager.generate and through a direct FluxControlPipeline call with the
  same components, inputs and seed (interleaved runs), and whether both gave the same pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs", "flux1-depth-dev")
sys.path.insert(0, os.path.dirname(HERE))

from fluxdepth_ui.depth import ControlImage  # noqa: E402
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager, control_tensor  # noqa: E402
from fluxdepth_ui.pipeline.placement import module_bytes  # noqa: E402
from fluxdepth_ui.pipeline.sources import LoadedModel  # noqa: E402
from fluxdepth_ui.pipeline.tiny import tiny_tokenizers  # noqa: E402
from fluxdepth_ui.pipeline.variants import QuantizedCache, get_variant, quantize_component  # noqa: E402

GIB = 2**30
SIZE = 1024
PROMPT = "a lighthouse on a cliff at dusk, volumetric fog, 35mm photo"


def config(name: str) -> dict:
    with open(os.path.join(CONFIGS, f"{name}.json")) as fh:
        return json.load(fh)


def sync() -> None:
    torch.cuda.synchronize()


class bf16_on_gpu:
    """Build modules directly on the GPU in bf16: no fp32 copy, no host round trip."""

    def __enter__(self):
        self._dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        self._device = torch.device("cuda")
        self._device.__enter__()

    def __exit__(self, *exc):
        self._device.__exit__(*exc)
        torch.set_default_dtype(self._dtype)


def build_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    with bf16_on_gpu():
        return FluxTransformer2DModel.from_config(config("transformer")).eval()


def build_t5(seed: int = 1):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    with bf16_on_gpu():
        return T5EncoderModel(T5Config.from_dict(config("text_encoder_2"))).eval()


def build_small_parts() -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(2)
    with bf16_on_gpu():
        vae = AutoencoderKL.from_config(config("vae")).eval()
        clip = CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder"))).eval()
    tokenizer, tokenizer_2 = tiny_tokenizers()
    return dict(vae=vae, text_encoder=clip, tokenizer=tokenizer, tokenizer_2=tokenizer_2,
                scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                          max_shift=1.15, base_image_seq_len=256,
                                                          max_image_seq_len=4096))


def step_inputs() -> dict:
    """One transformer call's inputs at 1024x1024, as in the denoising loop (bf16, guidance embedded). Fixed seed."""
    g = torch.Generator("cuda").manual_seed(0)
    tokens = (SIZE // 16) ** 2
    return dict(
        hidden_states=torch.randn(1, tokens, 128, device="cuda", dtype=torch.bfloat16, generator=g),
        encoder_hidden_states=torch.randn(1, 512, 4096, device="cuda", dtype=torch.bfloat16, generator=g),
        pooled_projections=torch.randn(1, 768, device="cuda", dtype=torch.bfloat16, generator=g),
        timestep=torch.full((1,), 0.5, device="cuda", dtype=torch.bfloat16),
        guidance=torch.full((1,), 10.0, device="cuda", dtype=torch.float32),
        img_ids=torch.zeros(tokens, 3, device="cuda"),
        txt_ids=torch.zeros(512, 3, device="cuda"),
        return_dict=False,
    )


def versions() -> dict:
    import diffusers
    import optimum.quanto
    import transformers

    return {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "optimum_quanto": optimum.quanto.__version__,
        "python": platform.python_version(),
    }


def step_times(transformer, n: int) -> list[float]:
    """ms per transformer call at 1024x1024, CUDA events."""
    kw = step_inputs()
    times = []
    with torch.no_grad():
        transformer(**kw)  # warm-up
        for _ in range(n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            transformer(**kw)
            end.record()
            sync()
            times.append(start.elapsed_time(end))
    return times


def control_image() -> ControlImage:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    return ControlImage(np.clip(1.0 - 0.7 * y - 0.2 * np.sin(6 * x), 0, 1).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True, choices=["bf16", "qint8", "qint4"])
    ap.add_argument("--runs", type=int, default=3, help="end-to-end runs per path")
    ap.add_argument("--step-runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--direct", action="store_true", help="also time a direct diffusers call (interleaved)")
    ap.add_argument("--cache-roundtrip", action="store_true", help="save the quantized cache and time a reload")
    ap.add_argument("--reload-device", default="cuda", choices=["cuda", "cpu"],
                    help="load the cached weights onto this device (cpu: then move the module to the GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the whole transformer (fast tier)")
    ap.add_argument("--placement", default="gpu", choices=["gpu", "model_offload", "sequential_offload"])
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end generations")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    from diffusers import FluxControlPipeline

    variant = get_variant(args.variant)
    report: dict = {
        "variant": variant.name,
        **versions(),
        "size": f"{SIZE}x{SIZE}",
        "steps": args.steps,
    }
    t = time.perf_counter()
    parts = build_small_parts()
    transformer, t5 = build_transformer(), build_t5()
    sync()
    report["build_s"] = round(time.perf_counter() - t, 2)

    if variant.transformer:
        t = time.perf_counter()
        quantize_component(transformer, variant.transformer, "transformer")
        quantize_component(t5, variant.text_encoder_2, "text_encoder_2")
        sync()
        report["quantize_s"] = round(time.perf_counter() - t, 2)
        print(f"quantized in {report['quantize_s']} s", flush=True)
        if args.cache_roundtrip:
            report.update(cache_roundtrip(transformer, variant.transformer, args.reload_device))
    report["path"] = "dense" if variant.transformer else "bf16"
    if args.compile:
        transformer = torch.compile(transformer)
        t = time.perf_counter()
        step_times(transformer, 1)  # compiles
        report["compile_s"] = round(time.perf_counter() - t, 1)
        report["path"] += "+torch.compile"
    torch.cuda.empty_cache()
    report["transformer_weights_gib"] = round(module_bytes(transformer) / GIB, 2)
    report["t5_weights_gib"] = round(module_bytes(t5) / GIB, 2)

    times = step_times(transformer, args.step_runs)
    report["step_ms"] = {"median": round(statistics.median(times), 1), "min": round(min(times), 1),
                         "max": round(max(times), 1), "n": len(times)}
    print(json.dumps(report), flush=True)
    if args.no_e2e:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        return

    components = dict(parts, transformer=transformer, text_encoder_2=t5)
    manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=variant.name,
                              placement=args.placement, loader=lambda v, p: LoadedModel(components, "random"))
    direct = FluxControlPipeline(**components)
    direct.set_progress_bar_config(disable=True)
    control = control_image()
    settings = GenerationSettings(PROMPT, seed=0, steps=args.steps)

    def run_manager():
        return manager.generate(control, settings).image

    def run_direct():
        return direct(prompt=PROMPT, control_image=control_tensor(control), height=SIZE, width=SIZE,
                      num_inference_steps=args.steps, guidance_scale=10.0,
                      generator=torch.Generator("cpu").manual_seed(0), output_type="pil").images[0]

    manager.generate(control, GenerationSettings(PROMPT, seed=0, steps=2))  # load + warm-up kernels
    sync()
    torch.cuda.reset_peak_memory_stats()
    e2e = {"manager": [], "direct": []}
    images = {}
    for _ in range(args.runs):
        for name, fn in (("manager", run_manager), ("direct", run_direct)):
            if name == "direct" and not args.direct:
                continue
            sync()
            t = time.perf_counter()
            images[name] = fn()
            sync()
            e2e[name].append(time.perf_counter() - t)
    report["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    report["placement"] = manager.status()["placement"]
    report["e2e_s"] = {k: [round(x, 3) for x in v] for k, v in e2e.items() if v}
    if args.direct:
        m, d = statistics.median(e2e["manager"]), statistics.median(e2e["direct"])
        report["manager_over_direct"] = round(m / d, 4)
        report["same_pixels"] = bool(np.array_equal(np.asarray(images["manager"]), np.asarray(images["direct"])))
    print(json.dumps(report), flush=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)


def cache_roundtrip(transformer, weights: str, reload_device: str = "cuda") -> dict:
    """Save the quantized transformer the way the app caches it, then load it back the way a second start does."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    out = {}
    cache = QuantizedCache(tempfile.mkdtemp(prefix="fluxdepth-cache-"))
    folder = cache.folder("random", "default", "transformer", weights)
    fp = {"bench": "roundtrip", "weights": weights}
    t = time.perf_counter()
    cache.save(folder, fp, transformer)
    out["cache_save_s"] = round(time.perf_counter() - t, 2)
    print(f"cache saved in {out['cache_save_s']} s", flush=True)
    out["cache_gib"] = round(os.path.getsize(os.path.join(folder, "weights.safetensors")) / GIB, 2)

    def build_empty():
        with init_empty_weights():
            return FluxTransformer2DModel.from_config(config("transformer")).to(torch.bfloat16)

    t = time.perf_counter()
    reloaded = cache.load(folder, fp, build_empty, device=reload_device)
    out["cache_reload_device"] = reload_device
    out["cache_reload_s"] = round(time.perf_counter() - t, 2)
    print(f"reloaded on {reload_device} in {out['cache_reload_s']} s", flush=True)
    if reload_device == "cpu" and reloaded is not None:
        t = time.perf_counter()
        reloaded.to("cuda")
        sync()
        out["cache_to_gpu_s"] = round(time.perf_counter() - t, 2)
        print(f"moved to the GPU in {out['cache_to_gpu_s']} s", flush=True)
    sync()
    out["cache_reload_ok"] = reloaded is not None
    del reloaded
    torch.cuda.empty_cache()
    return out


if __name__ == "__main__":
    main()
