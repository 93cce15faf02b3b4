"""Time to the first image of a compiled tier, on a fresh machine and on a later start (issue 17).

    python benchmarks/first_image.py --tier fp8 --json first_image_fp8.json [--aot 0] [--tuning 0] [--steps 28]

Two child processes share one new, empty cache folder (the app's cache root, with torch's inductor and Triton caches
pointed inside it, so "cold" really is cold): the first is a fresh machine, the second a later start. Each builds the
FLUX.1-Depth-dev-shaped random-weight components first (not timed: "weights already in memory"), then times from
PipelineManager creation to the first finished 1024x1024 image, then a second image (steady speed). Recorded per
phase: first-image seconds, second-image seconds, the ahead-of-time packages compiled or loaded and their seconds,
the cache folder's size. `--aot 0` runs the same with torch.compile (FLUXDEPTH_AOT=0), for comparison; `--tuning 0`
without torchao's coordinate-descent tuning (FLUXDEPTH_COMPILE_TUNING=0): a faster cold compile, steps to be measured.

`--tiny` runs the same path with the tiny random model (a check of this script and of the compile path on a machine,
not a figure to report); on a CPU the compile gate is opened for it, as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def child(args) -> dict:
    import torch

    from fluxdepth_ui.depth import ControlImage
    from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
    from fluxdepth_ui.pipeline.sources import LoadedModel

    cuda = torch.cuda.is_available()
    if args.tiny:
        from fluxdepth_ui.pipeline.tiny import build_tiny_components

        components = build_tiny_components(0, torch.bfloat16 if cuda else torch.float32)
        size, prompt = 256, "a lighthouse"
        if not cuda:
            from fluxdepth_ui.pipeline import manager as manager_module
            from fluxdepth_ui.pipeline.speed import CompileDecision

            manager_module.decide_compile = lambda requested, device, placement: CompileDecision(requested, "")
    else:
        from pipeline_gpu import PROMPT, SIZE, build_small_parts, build_t5, build_transformer

        components = dict(build_small_parts(), transformer=build_transformer(), text_encoder_2=build_t5())
        size, prompt = SIZE, PROMPT
    import numpy as np

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    control = ControlImage(np.clip(1.0 - 0.7 * yy - 0.2 * np.sin(6 * xx), 0, 1).astype(np.float32))
    settings = GenerationSettings(prompt, seed=0, steps=args.steps)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=args.tier,
                              placement="gpu" if cuda else "auto", cache_root=args.cache_root, compile=True,
                              loader=lambda v, p: LoadedModel(components, "random"))
    messages = []
    manager.generate(control, settings, load_progress=lambda f, m: messages.append(m))
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    manager.generate(control, settings)
    second = time.perf_counter() - t1
    aot = manager._aot
    return {
        "phase": args.phase,
        "tier": args.tier,
        "aot": os.environ.get("FLUXDEPTH_AOT", "1") != "0",
        "tuning": os.environ.get("FLUXDEPTH_COMPILE_TUNING", "1") != "0",
        "first_image_s": round(first, 2),
        "second_image_s": round(second, 2),
        "aot_events": [[e.kind, e.block, round(e.seconds, 2)] for e in aot.events] if aot else [],
        "messages": messages,
        "cache_mib": round(folder_bytes(args.cache_root) / 2**20, 1),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tier", default="fp8", choices=["bf16", "fp8"])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--aot", default="1", choices=["0", "1"])
    ap.add_argument("--tuning", default="1", choices=["0", "1"])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--phase", choices=["cold", "warm"], help=argparse.SUPPRESS)  # set for the child processes
    ap.add_argument("--cache-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    root = tempfile.mkdtemp(prefix="fluxdepth-first-image-")
    env = dict(os.environ, FLUXDEPTH_AOT=args.aot, FLUXDEPTH_COMPILE_TUNING=args.tuning,
               TORCHINDUCTOR_CACHE_DIR=os.path.join(root, "torch-compile"),
               TRITON_CACHE_DIR=os.path.join(root, "triton"))
    rows = []
    for phase in ("cold", "warm"):
        cmd = [sys.executable, __file__, "--tier", args.tier, "--json", args.json, "--steps", str(args.steps),
               "--aot", args.aot, "--tuning", args.tuning, "--phase", phase, "--cache-root", root]
        cmd += ["--tiny"] if args.tiny else []
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.stderr.write(out.stderr[-4000:])
            rows.append({"phase": phase, "error": f"exit {out.returncode}"})
            break
        rows.append(json.loads(lines[-1][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "w") as fh:
        json.dump({"command": " ".join(sys.argv), "rows": rows}, fh, indent=1)
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
