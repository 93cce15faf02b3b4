"""Where a later start's imports go (issue 26): the load imports diffusers, transformers and quanto for about 7 s on
the lent GPU machine even with the libraries in the page cache (docs/benchmarks.md "Session 35").

    python benchmarks/import_time.py --json out.json
    python benchmarks/import_time.py --drop --json out.json   # page cache dropped first (root): a cold machine

A fresh process imports what a later start of a quantized tier imports, in its order, under `python -X importtime`;
the report gives each step's wall time and the modules that took longest (cumulative, as importtime counts them,
top-level packages and their first level), so a slow one (torch._dynamo through diffusers, torchao through
diffusers' quantizers, transformers' import structure) can be named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from host_memory import drop_page_cache  # noqa: E402

# What a later start imports, step by step (pipeline/sources.py load_model, _cache_entries; manager.py step 4).
STEPS = [
    ("torch", "import torch"),
    ("fluxdepth_ui.pipeline", "from fluxdepth_ui.pipeline import PipelineManager"),
    ("diffusers FluxTransformer2DModel", "from diffusers import FluxTransformer2DModel"),
    ("transformers T5EncoderModel", "from transformers import T5Config, T5EncoderModel"),
    ("accelerate", "from accelerate import init_empty_weights"),
    ("optimum.quanto", "import optimum.quanto"),
    ("diffusers FluxControlPipeline", "from diffusers import FluxControlPipeline"),
]

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
marks = []
for name, statement in {steps!r}:
    t = time.perf_counter()
    exec(statement)
    marks.append((name, round(time.perf_counter() - t, 3)))
print("MARKS " + json.dumps(marks), flush=True)
"""


def parse_importtime(stderr: str, top: int) -> list[tuple[str, float]]:
    """The `top` modules by cumulative import time, among top-level packages and their first level."""
    rows = []
    for line in stderr.splitlines():  # "import time:  self_us |  cumulative_us |   package.module"
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        module = parts[2].strip()
        if module.count(".") <= 1:
            rows.append((module, int(parts[1]) / 1e6))
    rows.sort(key=lambda row: -row[1])
    return [(name, round(seconds, 3)) for name, seconds in rows[:top]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--drop", action="store_true", help="drop the whole page cache first (a cold machine)")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    dropped = drop_page_cache() if args.drop else False
    code = CHILD.format(root=os.path.dirname(HERE), steps=STEPS)
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=600)
    marks = [line for line in p.stdout.splitlines() if line.startswith("MARKS ")]
    if p.returncode != 0 or not marks:
        print("error: the import process failed: " + (p.stderr.strip().splitlines() or ["?"])[-1], file=sys.stderr)
        raise SystemExit(1)
    report = {"python": sys.version.split()[0], "page_cache_dropped": dropped,
              "steps_s": json.loads(marks[-1][6:]), "slowest_modules_s": parse_importtime(p.stderr, args.top)}
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    for name, seconds in report["steps_s"]:
        print(f"{seconds:7.2f} s  {name}")
    print("slowest modules (cumulative):")
    for name, seconds in report["slowest_modules_s"]:
        print(f"{seconds:7.2f} s  {name}")


if __name__ == "__main__":
    main()
