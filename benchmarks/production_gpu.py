"""GPU benchmark for the production options (issue 16): style LoRAs per tier, and 2K plates per tier.

    python benchmarks/production_gpu.py --variant qint8 --json qint8.json

FLUX.1-Depth-dev-shaped components with random weights (benchmarks/configs), one tier per run, in one process:
- Style LoRAs: FLUX-shaped LoRA files of rank 32 on every attention and MLP projection of all 57 blocks (about the
  size of a typical style LoRA), random weights. Median transformer step time (time between step callbacks of a
  12-step 1024x1024 image) with no LoRA, one and three; the time to switch to a new LoRA (file read + to the GPU)
  and to change a scale (the generate call's own overhead, measured as the difference to the same call without
  a change is below noise, so the apply step is timed directly).
- 2K plates: 2048x1152 and 2048x2048, 28 steps, direct (one pass) and as a plate (about 1 MP, then img2img at
  0.35 at full size): seconds and peak GPU memory (allocated and reserved) of each, VAE tiling "auto".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import safetensors.torch
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from pipeline_gpu import GIB, control_image, versions  # noqa: E402
from vram_budget import build_master  # noqa: E402
from fluxdepth_ui.depth import DepthSettings  # noqa: E402
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager  # noqa: E402
from fluxdepth_ui.pipeline.sources import LoadedModel  # noqa: E402
from fluxdepth_ui.settings import ShotSettings, StyleLora  # noqa: E402
from fluxdepth_ui.shot import render_shot  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk, volumetric fog, 35mm photo"
TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
           "ff_context.net.2", "proj_mlp", "proj_out")


def write_lora(path: str, transformer, seed: int, rank: int = 32) -> float:
    """A diffusers-format LoRA on every target projection of the transformer; returns its size in MB."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in transformer.named_modules():
        if not name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            continue
        if not any(name.endswith(t) for t in TARGETS) or not hasattr(module, "in_features"):
            continue
        state[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=g)
                                                      * 0.01).to(torch.bfloat16)
        state[f"transformer.{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=g)
                                                      * 0.01).to(torch.bfloat16)
    safetensors.torch.save_file(state, path)
    return round(os.path.getsize(path) / 1e6, 1)


def depth_file(folder: str, width: int, height: int) -> str:
    """A 16-bit PNG depth pass (near = white) of this size: a floor plane and a sphere."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    depth = 1.0 - 0.7 * y / height
    r = np.hypot(x - width * 0.55, y - height * 0.45) / (0.25 * min(width, height))
    depth = np.where(r < 1, 0.9 + 0.1 * np.sqrt(np.clip(1 - r * r, 0, 1)), depth)
    path = os.path.join(folder, f"depth_{width}x{height}.png")
    Image.fromarray((depth * 65535).astype(np.uint16)).save(path)
    return path


def median_step(manager, control, loras=()) -> float:
    marks = []
    manager.generate(control, GenerationSettings(PROMPT, seed=1, steps=12, loras=loras),
                     on_step=lambda i, n: (torch.cuda.synchronize(), marks.append(time.perf_counter())))
    return round(statistics.median(np.diff(marks)) * 1000, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True, choices=["bf16", "qint8", "qint4", "fp8"])
    ap.add_argument("--json", required=True)
    ap.add_argument("--skip-plates", action="store_true")
    ap.add_argument("--twice", action="store_true",
                    help="render each plate row a second time: a compiled tier's first render at a size compiles")
    args = ap.parse_args()
    report = {"variant": args.variant, **versions()}

    def save() -> None:  # after every row: a run stopped at the device's limit still leaves what it measured
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    t = time.perf_counter()
    components = build_master(args.variant)  # on the CPU, as a fresh start has them; placed on the GPU at load
    report["build_s"] = round(time.perf_counter() - t, 1)
    folder = tempfile.mkdtemp()
    loras = os.path.join(folder, "loras")
    os.makedirs(loras)
    report["lora_mb"] = [write_lora(os.path.join(loras, f"style{i}.safetensors"), components["transformer"], i)
                         for i in range(3)]
    loader = lambda v, progress: LoadedModel(components=components, revision="random", notes=[])  # noqa: E731
    manager = PipelineManager(ModelSource("black-forest-labs/FLUX.1-Depth-dev"), variant=args.variant,
                              placement="gpu", loader=loader, cache_root=os.path.join(folder, "cache"),
                              lora_dir=loras)
    manager.load()
    control = control_image()
    manager.generate(control, GenerationSettings(PROMPT, seed=1, steps=2))  # warm
    one, three = (StyleLora("style0.safetensors", 0.8),), tuple(StyleLora(f"style{i}.safetensors", 0.5)
                                                                 for i in range(3))
    # The LoRA reaches the picture on this tier: mean absolute difference of a 4-step image with and without it.
    plain, styled = (manager.generate(control, GenerationSettings(PROMPT, seed=3, steps=4, loras=x)).pixels
                     for x in ((), (StyleLora("style0.safetensors", 1.0),)))
    report["lora_effect"] = round(float(np.abs(plain - styled).mean()), 5)
    print(json.dumps({"lora_effect": report["lora_effect"], "since_build_s": round(time.perf_counter() - t, 1)}),
          flush=True)
    rows = {"none": median_step(manager, control)}
    rows["one"] = median_step(manager, control, one)
    rows["three"] = median_step(manager, control, three)
    rows["none_again"] = median_step(manager, control)
    report["step_ms"] = rows
    # Switching: a LoRA not read yet (file read, parsed, moved to the GPU), then a scale change of it.
    t = time.perf_counter()
    manager._apply_loras((StyleLora("style1.safetensors", 1.0),))
    torch.cuda.synchronize()
    report["switch_new_lora_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    manager._apply_loras((StyleLora("style1.safetensors", 0.4),))
    torch.cuda.synchronize()
    report["change_scale_ms"] = round((time.perf_counter() - t) * 1000, 2)
    manager._apply_loras(())
    print(json.dumps(report), flush=True)
    save()

    plates = []
    if not args.skip_plates:
        for width, height in ((2048, 1152), (2048, 2048)):
            path = depth_file(folder, width, height)
            for plate in (False, True):
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                settings = ShotSettings(DepthSettings(long_side=2048),
                                        GenerationSettings(PROMPT, seed=2, steps=28, plate=plate))
                row = {"size": f"{width}x{height}", "plate": plate}
                try:
                    for key in ("seconds", "again_seconds")[:2 if args.twice else 1]:
                        torch.cuda.synchronize()
                        t = time.perf_counter()
                        result = render_shot(manager, path, settings,
                                             os.path.join(folder, f"p{width}{height}{plate}.png"))
                        torch.cuda.synchronize()
                        row[key] = round(time.perf_counter() - t, 2)
                    row.update(passes=list(result.metadata.passes), out=list(result.image.size),
                               vae_tiling=result.metadata.vae_tiling)
                except Exception as exc:  # noqa: BLE001 - a failure is a result row
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                row["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
                row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
                print(json.dumps(row), flush=True)
                plates.append(row)
                report["plates"] = plates
                save()
    report["plates"] = plates
    save()


if __name__ == "__main__":
    main()
