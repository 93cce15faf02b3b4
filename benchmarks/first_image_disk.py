"""GPU benchmark (issue 26): how long an artist waits from starting the app to the first image, model on disk.

    python benchmarks/first_image_disk.py --folder /tmp/flux-depth-random --tiers bf16 qint8 qint4 --json out.json
    python benchmarks/first_image_disk.py --tiny --folder /tmp/tiny-folder --tiers bf16 qint8 --json out.json  # CPU

1. The FLUX.1-Depth-dev-shaped random-weight pipeline (benchmarks/configs) is saved as a diffusers folder once
   (`save_pretrained`; skipped when the folder is there).
2. The disk's read speed: the transformer's files read once in 64 MiB pieces, after dropping the page cache when this
   machine lets us (the JSON says whether it did: a warm page cache reads at memory speed).
3. Per tier and budget, two fresh processes with one cache folder: the first start (the quantized tiers quantize
   and write the cache), then a later start (the cache is read). Each runs what `fluxdepth generate` runs: a
   PipelineManager over the folder, one 1024x1024 image of 28 steps, saved as PNG. Timed from the parent's
   `Popen`: imports done, model loaded, first image saved; and the process's peak host RSS (the app's own, with no
   benchmark copy of the weights). `--compare-read-ahead` runs every later start again without the load's
   read-ahead of its files; `--drop all weights` runs each later start from a cold machine and again with only the
   weights out of the page cache (the libraries cached, as when the app ran a while ago). Each tier's cache folder is removed after its two starts (the lent disk is 64 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from host_memory import drop_page_cache, evict_files, peak_rss_bytes  # noqa: E402

MIB = 2**20
GIB = 2**30


def save_folder(folder: str, tiny: bool) -> float:
    """Write the random-weight pipeline as a diffusers folder; seconds taken (0 when it was there)."""
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return 0.0
    import torch
    from diffusers import FluxControlPipeline

    t = time.perf_counter()
    if tiny:
        from fluxdepth_ui.pipeline.tiny import build_tiny_components

        components = build_tiny_components(0, torch.bfloat16)
    else:
        from vram_budget import build_master

        components = build_master("bf16")
    FluxControlPipeline(**components).save_pretrained(folder)
    return round(time.perf_counter() - t, 1)


def read_speed(folder: str) -> dict:
    dropped = drop_page_cache()
    files = [os.path.join(folder, "transformer", name) for name in sorted(os.listdir(os.path.join(folder,
                                                                                                  "transformer")))
             if name.endswith(".safetensors")]
    total = 0
    t = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while chunk := fh.read(64 * MIB):
                total += len(chunk)
    seconds = time.perf_counter() - t
    return {"bytes": total, "seconds": round(seconds, 2), "gb_per_s": round(total / seconds / 1e9, 2),
            "page_cache_dropped": dropped}


def reader_check(cache: str) -> list[dict]:
    """Each cache file read twice from a dropped page cache: plain sequential reads (the disk), then the app's
    reader (`variants.read_tensors`), so a slow load can be told apart from a slow disk."""
    from fluxdepth_ui.pipeline.variants import read_tensors

    out = []
    for root, _dirs, names in os.walk(cache):
        for name in names:
            if not name.endswith(".safetensors"):
                continue
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            drop_page_cache()
            t = time.perf_counter()
            with open(path, "rb", buffering=0) as fh:
                while fh.read(64 * MIB):
                    pass
            raw = time.perf_counter() - t
            drop_page_cache()
            t = time.perf_counter()
            tensors = read_tensors(path, "cpu")
            reader = time.perf_counter() - t
            del tensors
            out.append({"file": os.path.relpath(path, cache), "gb": round(size / 1e9, 2),
                        "sequential_read_s": round(raw, 2), "app_reader_s": round(reader, 2)})
            print(json.dumps(out[-1]), flush=True)
    return out


def child(args) -> None:
    """One start of the app's path, in this fresh process."""
    t0 = float(args.t0)
    import torch

    from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager
    from pipeline_gpu import PROMPT, control_image

    marks = {"imports_s": time.time() - t0}
    cuda = torch.cuda.is_available()
    if args.no_read_ahead:  # the load as it was before session 34's read-ahead, for the comparison
        from fluxdepth_ui.pipeline import sources

        sources._prefetch = lambda paths: None
    manager = PipelineManager(ModelSource(args.folder), variant=args.tier, cache_root=args.cache,
                              placement="auto",
                              vram_budget=args.budget if args.budget else None)
    phases = []  # (seconds since launch, the load's own progress line): where the load's time goes
    manager.load(lambda f, m: phases.append((round(time.time() - t0, 2), m)))
    marks["loaded_s"] = time.time() - t0
    control = control_image()
    if args.tiny:
        from fluxdepth_ui.depth import ControlImage

        control = ControlImage(control.pixels[::8, ::8].copy())
    result = manager.generate(control, GenerationSettings(PROMPT, seed=1, steps=args.steps))
    result.image.save(args.out)
    marks["first_image_saved_s"] = time.time() - t0
    row = {k: round(v, 2) for k, v in marks.items()}
    row["peak_host_rss_gib"] = round(peak_rss_bytes() / GIB, 2)
    if cuda:
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    status = manager.status()
    row["placement"] = status["placement"]
    row["memory_plan"] = status.get("memory_plan")
    row["phases"] = phases
    print("ROW " + json.dumps(row), flush=True)


def start(args, tier: str, budget: str, cache: str, out: str, read_ahead: bool = True, drop: str = "all") -> dict:
    # "all": a cold machine (libraries too); "weights": only the model folder and the cache leave the page cache
    dropped = drop_page_cache() if drop == "all" else evict_files([args.folder, cache])
    t0 = time.time()
    cmd = [sys.executable, __file__, "--child", "--folder", args.folder, "--tier", tier, "--cache", cache,
           "--out", out, "--t0", repr(t0), "--steps", str(args.steps), "--json", "-"]
    if budget:
        cmd += ["--budget", budget]
    if not read_ahead:
        cmd.append("--no-read-ahead")
    if args.tiny:
        cmd.append("--tiny")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        text = "".join(t.decode() if isinstance(t, bytes) else t for t in (exc.stdout or "", exc.stderr or ""))
        tail = [line for line in text.splitlines() if line.strip()][-6:]
        return {"ok": False, "error": f"over {args.timeout:.0f} s", "tail": tail, "page_cache_dropped": dropped}
    rows = [line for line in p.stdout.splitlines() if line.startswith("ROW ")]
    if p.returncode != 0 or not rows:
        tail = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()][-6:]
        return {"ok": False, "error": f"exit {p.returncode}", "tail": tail, "page_cache_dropped": dropped}
    return {"ok": True, **json.loads(rows[-1][4:]), "process_s": round(time.time() - t0, 2),
            "page_cache_dropped": dropped}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", required=True)
    ap.add_argument("--tiers", nargs="+", default=["bf16", "qint8", "qint4"])
    ap.add_argument("--budgets", nargs="*", default=[], help="GiB budgets to run besides the default (e.g. 12 8)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--tiny", action="store_true", help="tiny-random on the CPU: a check of the script")
    ap.add_argument("--json", required=True)
    ap.add_argument("--keep-folder", action="store_true")
    ap.add_argument("--compare-read-ahead", action="store_true",
                    help="run every later start a second time without the load's read-ahead (sources._prefetch)")
    ap.add_argument("--no-read-ahead", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--drop", nargs="+", choices=["all", "weights"], default=["all"],
                    help="before each later start, drop the whole page cache (a cold machine), or only the model "
                         "folder's and the cache's files (libraries still cached); several run each")
    ap.add_argument("--no-resident", action="store_true", help="later starts under the --budgets only")
    ap.add_argument("--reader-check", action="store_true",
                    help="after each tier's starts, time its cache files: sequential read vs the app's reader")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tier", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--t0", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    report: dict = {"steps": args.steps, "tiny": args.tiny, "rows": []}
    if not args.tiny:
        from pipeline_gpu import versions

        report["versions"] = versions()

    def save():
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)

    report["save_folder_s"] = save_folder(args.folder, args.tiny)
    report["disk"] = read_speed(args.folder)
    print(json.dumps(report["disk"]), flush=True)
    save()
    work = args.folder.rstrip("/") + "-runs"
    os.makedirs(work, exist_ok=True)
    try:
        for tier in args.tiers:
            cache = os.path.join(work, f"cache-{tier}")
            later = ([] if args.no_resident else [""]) + args.budgets
            runs = [("", "first start", True, "all")]
            runs += [(b, "later start", ra, drop) for drop in args.drop for ra in
                     ((True, False) if args.compare_read_ahead else (True,)) for b in later]
            for budget, phase, read_ahead, drop in runs:
                row = {"tier": tier, "budget_gib": budget or None, "phase": phase, "read_ahead": read_ahead,
                       "dropped": drop,
                       **start(args, tier, budget, cache, os.path.join(work, f"{tier}.png"), read_ahead, drop)}
                print(json.dumps(row), flush=True)
                report["rows"].append(row)
                save()
            if args.reader_check:
                report.setdefault("reader_check", {})[tier] = reader_check(cache)
                save()
            shutil.rmtree(cache, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.keep_folder:
            shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
