"""What the app's warm-up at launch saves the first Generate (issue 26).

    python benchmarks/warm_up.py --folder /tmp/flux-depth-random --tier qint8 --json out.json   # lent GPU
    python benchmarks/warm_up.py --tiny --json out.json                                         # dev machine

In fresh processes, alternating, the page cache of the model's files dropped first where this machine lets us
(`host_memory.evict_files`: only the model folder and its quantized cache, the libraries stay cached): a manager is
made as the app makes it; without a warm-up the load is timed at once; with one, `PipelineManager.warm_up()` runs
and the load is timed once its thread is done (the artist setting up the first shot meanwhile). The first start of
the tier (the quantized cache written) runs once before, untimed. Reported: load seconds, median of --repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from host_memory import evict_files  # noqa: E402


def child(args) -> None:
    from fluxdepth_ui.pipeline import ModelSource, PipelineManager

    manager = PipelineManager(ModelSource(args.folder), variant=args.tier, cache_root=args.cache)
    if args.warm:
        t = time.perf_counter()
        manager.warm_up().join()
        for thread in threading.enumerate():
            if thread.name == "fluxdepth-prefetch":
                thread.join()
        warm_s = time.perf_counter() - t
    else:
        warm_s = None
    t = time.perf_counter()
    manager.load()
    print("ROW " + json.dumps({"warm": args.warm, "warm_up_s": warm_s and round(warm_s, 2),
                               "load_s": round(time.perf_counter() - t, 2)}), flush=True)


def start(args, warm: bool) -> dict:
    evicted = evict_files([args.folder, args.cache])
    cmd = [sys.executable, __file__, "--child", "--folder", args.folder, "--tier", args.tier, "--cache", args.cache,
           "--json", "-"] + (["--warm"] if warm else [])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    rows = [line for line in p.stdout.splitlines() if line.startswith("ROW ")]
    if p.returncode != 0 or not rows:
        return {"ok": False, "tail": (p.stdout + p.stderr).strip().splitlines()[-4:]}
    return {"ok": True, "weights_evicted": evicted, **json.loads(rows[-1][4:])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder")
    ap.add_argument("--tiny", action="store_true", help="a tiny-random model folder, made in a temporary folder")
    ap.add_argument("--tier", default="qint8")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--json", required=True)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    work = tempfile.mkdtemp(prefix="fluxdepth-warm-up-")
    if args.tiny:
        import torch  # noqa: F401
        from diffusers import FluxControlPipeline

        from fluxdepth_ui.pipeline.tiny import build_tiny_components

        args.folder = os.path.join(work, "tiny-folder")
        FluxControlPipeline(**build_tiny_components(0, torch.bfloat16)).save_pretrained(args.folder)
    if not args.folder:
        ap.error("--folder or --tiny")
    args.cache = os.path.join(work, "cache")
    first = start(args, warm=False)  # the first start: quantizes and writes the cache
    rows = []
    for _ in range(args.repeat):
        for warm in (False, True):
            rows.append(start(args, warm))
            print(json.dumps(rows[-1]), flush=True)
    report = {"tier": args.tier, "tiny": args.tiny, "first_start": first, "rows": rows}
    for warm in (False, True):
        loads = [r["load_s"] for r in rows if r.get("ok") and r["warm"] == warm]
        if loads:
            report["warm" if warm else "cold"] = {"load_s_median": statistics.median(loads), "load_s": loads}
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    print(json.dumps({k: report.get(k) for k in ("cold", "warm")}))


if __name__ == "__main__":
    main()
