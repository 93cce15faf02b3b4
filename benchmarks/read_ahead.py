"""Does reading the weights ahead during the imports pay (pipeline/sources.py `_prefetch`)?

    python benchmarks/read_ahead.py --gib 2 --repeat 2 --json out.json

A safetensors file of `--gib` GiB of int8 tensors (a quantized cache's shape) is written once. Each run is a fresh
process with the page cache dropped (root only; the JSON says whether it was): with or without `_prefetch` of the
file, it imports what a load imports (diffusers' FluxControlPipeline and FluxTransformer2DModel, transformers'
T5EncoderModel), then reads the file with the cache reader (`variants.read_tensors`). Runs alternate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from host_memory import drop_page_cache  # noqa: E402


def child(path: str, ahead: bool) -> None:
    t0 = time.perf_counter()
    from fluxdepth_ui.pipeline import sources

    if ahead:
        sources._prefetch([path])
    from diffusers import FluxControlPipeline, FluxTransformer2DModel  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    t1 = time.perf_counter()
    from fluxdepth_ui.pipeline.variants import read_tensors

    read_tensors(path, "cpu")
    t2 = time.perf_counter()
    print("ROW " + json.dumps({"read_ahead": ahead, "imports_s": round(t1 - t0, 2), "read_s": round(t2 - t1, 2),
                               "total_s": round(t2 - t0, 2)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--file", default="/tmp/read-ahead.safetensors")
    ap.add_argument("--json", required=True)
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.file, args.child == "1")
        return
    import torch
    from safetensors.torch import save_file

    n = max(1, int(args.gib * 2**30 / (4096 * 8192)))
    save_file({f"t{i}": torch.randint(-128, 127, (4096, 8192), dtype=torch.int8) for i in range(n)}, args.file)
    rows = []
    try:
        for _ in range(args.repeat):
            for ahead in ("0", "1"):
                dropped = drop_page_cache()
                out = subprocess.run([sys.executable, __file__, "--child", ahead, "--file", args.file, "--json", "-"],
                                     capture_output=True, text=True, check=True).stdout
                row = json.loads([line for line in out.splitlines() if line.startswith("ROW ")][-1][4:])
                row["page_cache_dropped"] = dropped
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        os.remove(args.file)
    report = {"gib": args.gib, "cpus": os.cpu_count(), "rows": rows}
    for ahead in (False, True):
        report[f"total_s_median_read_ahead_{ahead}"] = statistics.median(r["total_s"] for r in rows
                                                                          if r["read_ahead"] == ahead)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
