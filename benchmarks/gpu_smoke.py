"""GPU smoke run: every tier and option the app offers, full size, a few steps each, one device call (issue 23).

    python benchmarks/gpu_smoke.py --json docs/results/gpu_smoke.json [--cases bf16,fp8-cold,...] [--deadline 470]

Run it in every session that changes fluxdepth_ui/pipeline/ and quote what it printed. Each case runs in its own child
process (a crash is a failed case, not the end of the run), through PipelineManager with FLUX.1-Depth-dev-shaped
random-weight components (benchmarks/configs), 1024x1024, 3 steps, two images (the first includes any compile):

  bf16, qint8, qint4          the precision tiers, resident on the GPU
  fp8-cold                    fp8 (always compiled) in an empty cache folder: a fresh machine
  fp8-warm-loras              fp8 again with that cache folder (a later start: torch's saved compile artifacts), then
                              step times with no, one and three style LoRAs (rank 8 on every projection of all blocks);
                              CUDA graphs (pipeline/graphs.py): images with and without them, with no LoRA, a LoRA and
                              a new scale, must match (max abs pixel difference <= 1/255), and the step time of both
  bf16-compile                --compile on bf16
  bf16-budget-12gib           bf16 under a 12 GiB VRAM budget (the transformer streams; a 12 GB card)
  qint8-follow                qint8 with --vram-budget follow: planned by the card's free memory before every image
  qint8-inpaint               qint8 inpainting (FluxControlInpaintPipeline): the first image again with a mask over
                              its left half; the unmasked half must stay close to the init image
  fp8-plate-2048x1152         a 2048x1152 plate (about 1 MP, then img2img at full size) on fp8

Each case checks that the image is finite and not flat. Exit code 1 and the failing cases named when any fails,
crashes or is cut off by --deadline; the JSON is rewritten after every case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

CASES = {
    "bf16": dict(variant="bf16"),
    "qint8": dict(variant="qint8"),
    "qint4": dict(variant="qint4"),
    "fp8-cold": dict(variant="fp8", cache="fp8"),
    "fp8-warm-loras": dict(variant="fp8", cache="fp8", loras=True),
    "bf16-compile": dict(variant="bf16", compile=True),
    "bf16-budget-12gib": dict(variant="bf16", budget=12),
    "qint8-follow": dict(variant="qint8", budget="follow"),
    "qint8-inpaint": dict(variant="qint8", inpaint=True),
    "fp8-plate-2048x1152": dict(variant="fp8", cache="fp8", plate=(2048, 1152)),
}
STEPS = 3


def run_case(name: str, work: str) -> dict:
    import numpy as np
    import torch

    from pipeline_gpu import GIB, PROMPT, build_small_parts, control_image
    from production_gpu import depth_file, median_step, write_lora
    from tiers_gpu import prepared_components
    from fluxdepth_ui.depth import DepthSettings
    from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
    from fluxdepth_ui.pipeline.sources import LoadedModel
    from fluxdepth_ui.settings import ShotSettings, StyleLora
    from fluxdepth_ui.shot import render_shot

    case = CASES[name]
    row: dict = {"case": name}
    t = time.perf_counter()
    components = prepared_components(case["variant"], build_small_parts())
    if case.get("budget"):  # a fresh start has the weights in host memory; the budget plan places them
        for part in components.values():
            if isinstance(part, torch.nn.Module):
                part.to("cpu")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    row["build_s"] = round(time.perf_counter() - t, 1)
    cache_root = os.path.join(work, "cache-" + case.get("cache", name))
    lora_dir = os.path.join(work, "loras")
    os.makedirs(lora_dir, exist_ok=True)
    manager = PipelineManager(ModelSource("random-weights/flux1-depth-dev-shaped"), variant=case["variant"],
                              placement="auto" if case.get("budget") else "gpu", cache_root=cache_root,
                              compile=bool(case.get("compile")), vram_budget=case.get("budget"), lora_dir=lora_dir,
                              loader=lambda v, p: LoadedModel(components, "random"))
    messages: list[str] = []
    control = control_image()
    torch.cuda.reset_peak_memory_stats()

    def image(settings, **extra):
        t0 = time.perf_counter()
        result = manager.generate(control, settings, load_progress=lambda f, m: messages.append(m), **extra)
        torch.cuda.synchronize()
        pixels = result.pixels
        if not np.isfinite(pixels).all() or float(pixels.std()) < 1e-4:
            raise AssertionError(f"the image is not finite or flat (std {float(pixels.std()):.2e})")
        image.last = result
        return round(time.perf_counter() - t0, 2)

    if case.get("plate"):
        width, height = case["plate"]
        path = depth_file(work, width, height)
        settings = ShotSettings(DepthSettings(long_side=max(width, height)),
                                GenerationSettings(PROMPT, seed=2, steps=STEPS, plate=True))
        for label in ("first_plate_s", "second_plate_s"):
            t0 = time.perf_counter()
            result = render_shot(manager, path, settings, os.path.join(work, f"{name}.png"))
            torch.cuda.synchronize()
            row[label] = round(time.perf_counter() - t0, 2)
        row["out"] = list(result.image.size)
        row["passes"] = list(result.metadata.passes)
    else:
        row["first_image_s"] = image(GenerationSettings(PROMPT, seed=0, steps=STEPS))
        row["second_image_s"] = image(GenerationSettings(PROMPT, seed=1, steps=STEPS))
    if case.get("inpaint"):
        from PIL import Image

        init = image.last.image
        mask = Image.new("L", init.size, 0)
        mask.paste(255, (0, 0, init.size[0] // 2, init.size[1]))
        # Two seeds: where the mask is black the latents are the init image's (diffusers blends them back every
        # step), so the two results differ there only through the VAE decoder's reach (its mid-block attention sees
        # the whole image): much less than where painted (tiny-random on the CPU: 0.04 against 0.19).
        runs = []
        for seed in (3, 4):
            row.setdefault("inpaint_image_s", []).append(
                image(GenerationSettings(PROMPT, seed=seed, steps=STEPS * 3, strength=0.9), init_image=init, mask=mask))
            runs.append(image.last.pixels)
        half = init.size[0] // 2
        row["inpaint_kept_mean_abs"] = round(float(np.abs(runs[0][:, half + 64:] - runs[1][:, half + 64:]).mean()), 4)
        row["inpaint_painted_mean_abs"] = round(float(np.abs(runs[0][:, :half - 64] - runs[1][:, :half - 64]).mean()),
                                                4)
        if not row["inpaint_kept_mean_abs"] < 0.5 * row["inpaint_painted_mean_abs"]:
            raise AssertionError(f"two seeds of inpainting differ as much where the mask is black "
                                 f"({row['inpaint_kept_mean_abs']}) as where it is white "
                                 f"({row['inpaint_painted_mean_abs']})")
    if case.get("loras"):
        row["lora_mb"] = [write_lora(os.path.join(lora_dir, f"style{i}.safetensors"),
                                     manager._pipe.transformer, i, rank=8) for i in range(3)]
        if manager._graphed is not None:
            row["graphs"] = graphs_check(manager, control, image)
        one = (StyleLora("style0.safetensors", 0.8),)
        three = tuple(StyleLora(f"style{i}.safetensors", 0.5) for i in range(3))
        t0 = time.perf_counter()
        row["lora_step_ms"] = {"none": median_step(manager, control)}
        row["lora_step_ms"]["one"] = median_step(manager, control, one)
        row["lora_step_ms"]["three"] = median_step(manager, control, three)
        row["lora_step_ms"]["none_again"] = median_step(manager, control)
        row["lora_rows_s"] = round(time.perf_counter() - t0, 1)
    status = manager.status()
    row.update(peak_gib=round(torch.cuda.max_memory_allocated() / GIB, 2), compiled=status["compiled"],
               cuda_graphs=status["cuda_graphs"],
               placement=status["placement"], notes=status["notes"][-3:], messages=messages[-4:])
    return row


def graphs_check(manager, control, image) -> dict:
    """Images replayed from CUDA graphs against the same load with graphs off: no LoRA, a LoRA (a new set: the graphs
    must be dropped), a new scale (read from its tensor by the replay), no LoRA again."""
    import numpy as np

    from pipeline_gpu import PROMPT
    from production_gpu import median_step
    from fluxdepth_ui.pipeline import GenerationSettings
    from fluxdepth_ui.settings import StyleLora

    wrapper = manager._graphed
    shots = [(), (StyleLora("style0.safetensors", 0.8),), (StyleLora("style0.safetensors", 0.3),), (), ()]
    found: dict = {"replays_before": wrapper.replays, "max_abs": [], "mean_abs": []}
    with_graphs, without = [], []
    for loras in shots:
        pixels = []
        for on in (True, False):
            wrapper.wanted = manager._graphs_wanted if on else (lambda: False)
            image(GenerationSettings(PROMPT, seed=5, steps=STEPS, loras=loras))
            pixels.append(image.last.pixels)
        with_graphs.append(pixels[0])
        without.append(pixels[1])
        found["max_abs"].append(round(float(np.abs(pixels[0] - pixels[1]).max()), 5))
        found["mean_abs"].append(round(float(np.abs(pixels[0] - pixels[1]).mean()), 6))
    # Each LoRA change shows in the replayed images (a graph kept past a change would repeat the image before).
    found["change_mean_abs"] = [round(float(np.abs(a - b).mean()), 5) for a, b in zip(with_graphs, with_graphs[1:])]
    # No LoRA before and after the LoRA shots, each way: which of the two moved.
    found["no_lora_again_vs_first"] = {"graphs": round(float(np.abs(with_graphs[3] - with_graphs[0]).max()), 5),
                                       "plain": round(float(np.abs(without[3] - without[0]).max()), 5)}
    wrapper.wanted = manager._graphs_wanted
    found["replays"] = wrapper.replays - found["replays_before"]
    found["status"] = manager.status()["cuda_graphs"]
    found["step_ms_on"] = median_step(manager, control)
    wrapper.wanted = lambda: False
    found["step_ms_off"] = median_step(manager, control)
    wrapper.wanted = manager._graphs_wanted
    print("GRAPHS " + json.dumps(found), flush=True)
    if found["replays"] <= 0:
        raise AssertionError(f"CUDA graphs never replayed ({found['status']})")
    if max(found["max_abs"]) > 1 / 255:
        raise AssertionError(f"images with CUDA graphs differ from those without: max abs {found['max_abs']}")
    if min(found["change_mean_abs"][:3]) < 1e-4:
        raise AssertionError(f"a LoRA change did not show in the replayed images: {found['change_mean_abs']}")
    return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--deadline", type=float, default=470, help="seconds after which no new case starts")
    ap.add_argument("--case-timeout", type=float, default=180)
    ap.add_argument("--case", default="", help=argparse.SUPPRESS)
    ap.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        row = run_case(args.case, args.work)
        print("ROW " + json.dumps(row), flush=True)
        return 0
    names = [n for n in args.cases.split(",") if n]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"error: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}", file=sys.stderr)
        return 2
    from pipeline_gpu import versions

    work = tempfile.mkdtemp(prefix="gpu-smoke-")
    report: dict = {**versions(), "steps": STEPS, "cases": []}
    try:
        import torchao

        report["torchao"] = torchao.__version__
    except ImportError:
        report["torchao"] = None
    start = time.time()
    for name in names:
        if time.time() - start > args.deadline:
            row = {"case": name, "ok": False, "error": f"not run: past the {args.deadline:.0f} s deadline"}
        else:
            t = time.time()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            try:
                p = subprocess.run([sys.executable, __file__, "--json", "-", "--case", name, "--work", work],
                                   env=env, capture_output=True, text=True, timeout=args.case_timeout)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
                if p.returncode == 0 and lines:
                    row = {**json.loads(lines[-1][4:]), "ok": True}
                else:
                    how = f"crashed (signal {-p.returncode})" if p.returncode < 0 else f"exit {p.returncode}"
                    tail = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()][-6:]
                    row = {"case": name, "ok": False, "error": how, "tail": tail}
            except subprocess.TimeoutExpired:
                row = {"case": name, "ok": False, "error": f"cut off after {args.case_timeout:.0f} s"}
            row["process_s"] = round(time.time() - t, 1)
        report["cases"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    failed = [r["case"] for r in report["cases"] if not r["ok"]]
    print(f"\n{report['device']} torch {report['torch']} diffusers {report['diffusers']} torchao {report['torchao']}")
    for r in report["cases"]:
        figures = ", ".join(f"{k} {r[k]}" for k in ("first_image_s", "second_image_s", "first_plate_s",
                                                     "second_plate_s", "inpaint_image_s", "peak_gib") if k in r)
        print(f"{r['case']:22} {'ok  ' if r['ok'] else 'FAIL'} {r.get('error', figures)}")
        if "lora_step_ms" in r:
            print(f"{'':27} LoRA step ms {r['lora_step_ms']}")
        if "graphs" in r:
            print(f"{'':27} CUDA graphs {r['graphs']}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("gpu smoke: all cases passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
