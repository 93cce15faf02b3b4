"""Host memory while a quantized cache file is read (issue 26): peak resident memory of the process against the
file's size, with the page cache dropped first (when this machine lets us).

    python benchmarks/cache_read_rss.py --gib 2 --json out.json

Run it once per change, in a fresh process: ru_maxrss is the process's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fluxdepth_ui.pipeline import variants  # noqa: E402
from host_memory import drop_page_cache  # noqa: E402 - beside this script


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0, help="size of the test file")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    folder = tempfile.mkdtemp(prefix="cache-rss-")
    path = os.path.join(folder, "weights.safetensors")
    count = max(1, int(args.gib * 32))  # tensors of 32 MiB
    # Written by another process: this one's peak must be the read's alone.
    subprocess.run([sys.executable, "-c", "import sys, torch; from safetensors.torch import save_file; "
                    f"save_file({{f'w{{i}}': torch.randn(2048, 4096) for i in range({count})}}, sys.argv[1])", path],
                   check=True)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dropped = drop_page_cache()
    t = time.perf_counter()
    state = variants.read_tensors(path, "cpu")
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    size = os.path.getsize(path)
    row = {"file_gib": round(size / 2**30, 2), "tensors": len(state), "read_s": round(seconds, 2),
           "peak_rss_gib": round(peak / 2**30, 2), "rss_before_read_gib": round(baseline / 2**30, 2),
           "read_window_mib": getattr(variants, "READ_WINDOW", 0) >> 20, "page_cache_dropped": dropped}
    print(json.dumps(row))
    with open(args.json, "w") as fh:
        json.dump(row, fh, indent=1)
    os.remove(path)
    os.rmdir(folder)


if __name__ == "__main__":
    main()
