"""GPU benchmark (issue 28): what the live preview costs, against the same images without it, in one process.

    python benchmarks/live_preview_gpu.py --variant bf16 --every 1 4 --json out.json
    python benchmarks/live_preview_gpu.py --tiny --every 1 2 --json out.json        # CPU: a check of the script

The full-size FLUX.1-Depth-dev-shaped random-weight pipeline (benchmarks/configs) through PipelineManager, 1024x1024,
28 steps, fully resident. The preview decoder is an AutoencoderTiny of TAEF1's shape (16 latent channels, 64-wide
blocks) with random weights: the same work as TAEF1 (the machine cannot fetch it). Images alternate between preview
off and each `--every`, `--repeat` rounds; per setting the median image seconds and its ratio to off (target <= 1.03
at every 4 steps), and the pixels compared with off (they must be equal: the preview only reads the latents).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def taef1_shaped(device, dtype, vae_config):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    decoder = AutoencoderTiny(latent_channels=16, scaling_factor=vae_config.scaling_factor,
                              shift_factor=vae_config.shift_factor or 0.0)
    return decoder.to(device=device, dtype=dtype).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="bf16", choices=["bf16", "qint8", "qint4", "fp8"])
    ap.add_argument("--every", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
    from fluxdepth_ui.pipeline.sources import LoadedModel

    if args.tiny:
        from fluxdepth_ui.depth import ControlImage

        manager = PipelineManager(ModelSource("tiny-random"), cache_root="/tmp/live-preview-bench")
        control = ControlImage(np.tile(np.linspace(0, 1, 256, dtype=np.float32), (192, 1)))
        report = {"device": "cpu (tiny-random)"}
    else:
        from pipeline_gpu import build_small_parts, control_image, versions
        from tiers_gpu import prepared_components

        components = prepared_components(args.variant, build_small_parts())
        manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=args.variant,
                                  placement="gpu", cache_root="/tmp/live-preview-bench",
                                  loader=lambda v, p: LoadedModel(components, "random"))
        control = control_image()
        report = versions()
    report.update(variant=args.variant, steps=args.steps, every=args.every, rows=[])
    manager.load()
    pipe = manager._pipe
    if not args.tiny:  # TAEF1's shape in place of the real weights (not reachable from the lent machine)
        manager._preview = taef1_shaped(pipe._execution_device, pipe.vae.dtype, pipe.vae.config)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def image(every: int) -> tuple[float, np.ndarray, int]:
        shown = []
        sync()
        t = time.perf_counter()
        result = manager.generate(control, GenerationSettings("a hall", seed=1, steps=args.steps),
                                  on_preview=(lambda s, n, img: shown.append(img)) if every else None,
                                  preview_every=every)
        sync()
        return time.perf_counter() - t, result.pixels, len(shown)

    image(0)  # warm-up (and the first compile, where the tier compiles)
    times: dict[int, list[float]] = {0: [], **{e: [] for e in args.every}}
    reference = None
    previews = {}
    for _ in range(args.repeat):
        for every in [0, *args.every]:
            seconds, pixels, count = image(every)
            times[every].append(seconds)
            previews[every] = count
            if every == 0:
                reference = pixels
            elif not np.array_equal(pixels, reference):
                report.setdefault("pixel_mismatch", []).append(every)
    off = statistics.median(times[0])
    for every in [0, *args.every]:
        median = statistics.median(times[every])
        row = {"every": every, "previews": previews[every], "median_s": round(median, 3),
               "x_off": round(median / off, 4), "seconds": [round(t, 3) for t in times[every]]}
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
