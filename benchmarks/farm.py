"""Frames per minute of `fluxdepth sequence` in one process and on 1 and 2 Ray workers, and the driver's overhead
per frame (docs/benchmarks.md, "Farm").

    python benchmarks/farm.py --frames 12 --json farm.json                     # CPU, tiny-random (this box)
    python benchmarks/farm.py --frames 48 --model black-forest-labs/FLUX.1-Depth-dev --long-side 1024 --steps 28 \
        --variant qint8 --workers 1 2 --json farm_gpu.json                      # GPUs, when lent

Each configuration renders the same generated sequence into a fresh folder through the real CLI in a subprocess
(Ray start, worker start and model load included: what an artist waits for), and checks that the files are
byte-identical to the one-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def make_frames(folder: str, count: int) -> str:
    import OpenEXR

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        d = np.full((272, 480), 50.0, np.float32)
        d[80:180, 20 + 8 * i: 120 + 8 * i] = 5.0 + 0.5 * i
        header = {"type": OpenEXR.scanlineimage, "compression": OpenEXR.ZIP_COMPRESSION}
        OpenEXR.File(header, {"Z": d}).write(os.path.join(folder, f"shot.{i + 1:04d}.exr"))
    return os.path.join(folder, "shot.####.exr")


def files(folder: str) -> dict:
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def run(pattern: str, out: str, args, workers: int | None) -> float:
    command = [sys.executable, "-m", "fluxdepth_ui.cli", "sequence", pattern, "--prompt", "a corridor", "--seed",
               "3", "--steps", str(args.steps), "--long-side", str(args.long_side), "--model", args.model,
               "--variant", args.variant, "--out", out]
    if workers:
        command += ["--workers", str(workers)]
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--variant", default="bf16")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="fluxdepth-farm-")
    pattern = make_frames(os.path.join(root, "frames"), args.frames)
    rows = []
    single = run(pattern, os.path.join(root, "one"), args, None)
    reference = files(os.path.join(root, "one"))
    rows.append({"config": "one process", "seconds": round(single, 2),
                 "frames_per_minute": round(args.frames * 60 / single, 1)})
    for n in args.workers:
        out = os.path.join(root, f"ray{n}")
        seconds = run(pattern, out, args, n)
        rows.append({"config": f"ray, {n} worker(s)", "seconds": round(seconds, 2),
                     "frames_per_minute": round(args.frames * 60 / seconds, 1),
                     "identical": files(out) == reference})
    one_worker = next((r for r in rows if r["config"] == "ray, 1 worker(s)"), None)
    report = {"frames": args.frames, "model": args.model, "variant": args.variant, "steps": args.steps,
              "long_side": args.long_side, "cpu_count": os.cpu_count(), "rows": rows}
    if one_worker:
        report["driver_overhead_s_per_frame"] = round((one_worker["seconds"] - single) / args.frames, 3)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    for r in rows:
        print(r)
    print("driver overhead per frame (s):", report.get("driver_overhead_s_per_frame"))


if __name__ == "__main__":
    main()
