"""GPU benchmark (issue 26): placement auto with no memory flag on smaller cards, and a card that other programs share.

    python benchmarks/vram_default.py --variant qint8 --cards 16 12 --json qint8.json

A smaller card is made physically: a second process ("the other program", as Houdini would be) holds all of the
lent GPU's memory but `card` GiB, so the driver's free memory (what the manager reads before every image,
pipeline/budget.py available_bytes) is that of the smaller card, other programs' use included. For one tier:

1. resident reference: the same components fully on the card (placement gpu), two images;
2. one manager with the defaults (placement auto, no --vram-budget, headroom 1.5 GiB) loads on the first card, two
   images; for each further card the other program grows, and the next image re-plans down (no reload);
3. `--squeeze 4`: on the last card, between two images of a sequence the other program takes 4 GiB more, then gives
   it back: the next image re-plans down, the one after it up again.

Per row: the plan, the second image's seconds and its ratio to the resident second image, peak reserved memory
(which must stay under the card), host RSS, and whether the pixels equal the resident image's (same seed).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from pipeline_gpu import GIB, control_image, versions  # noqa: E402
from vram_budget import PROMPT, build_master, host_rss_gib  # noqa: E402
from fluxdepth_ui.pipeline import GenerationSettings, ModelSource, PipelineManager  # noqa: E402
from fluxdepth_ui.pipeline.sources import LoadedModel  # noqa: E402

# The other program: holds GiB on the GPU as told on stdin ("hold 60.5"), answers "ok" when it does.
HOG = r"""
import sys, torch
held = []
for line in sys.stdin:
    want = float(line.split()[1])
    held.clear(); torch.cuda.empty_cache()
    try:
        if want > 0:
            held.append(torch.empty(int(want * 2**30), dtype=torch.uint8, device="cuda"))
        torch.cuda.synchronize()
        print("ok", flush=True)
    except torch.OutOfMemoryError:
        print("short", flush=True)
"""


class OtherProgram:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def hold(self, gib: float) -> None:
        self.proc.stdin.write(f"hold {gib}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"the other program could not take {gib:.1f} GiB ({answer or 'it died'})")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def card_total_gib() -> float:
    return torch.cuda.mem_get_info()[1] / GIB


def leave_card(other: OtherProgram, card_gib: float) -> None:
    """The other program holds all of the GPU but `card_gib` (its own CUDA context, about 0.6 GiB, counted): this
    process sees the free memory of a `card_gib` card on which it runs alone."""
    other.hold(max(0.0, card_total_gib() - card_gib - 0.6))


def manager_over(master: dict, variant: str, placement: str) -> PipelineManager:
    components = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in master.items()}
    loader = lambda v, progress: LoadedModel(components=components, revision="random", notes=[])  # noqa: E731
    return PipelineManager(ModelSource("black-forest-labs/FLUX.1-Depth-dev"), variant=variant, placement=placement,
                           loader=loader, cache_root="/tmp/fluxdepth-bench-cache")


def image(manager, control, seed: int, steps: int, messages: list) -> tuple[float, np.ndarray, str]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    result = manager.generate(control, GenerationSettings(PROMPT, seed=seed, steps=steps, guidance=10.0),
                              load_progress=lambda f, m: messages.append(m))
    torch.cuda.synchronize()
    return time.perf_counter() - t, result.pixels, result.metadata.placement


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True, choices=["bf16", "qint8", "qint4", "fp8"])
    ap.add_argument("--cards", nargs="+", type=float, required=True, help="card sizes in GiB, largest first")
    ap.add_argument("--squeeze", type=float, default=0.0, help="GiB another program takes between two images")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    out = {"versions": versions(), "variant": args.variant, "steps": args.steps, "rows": []}

    def save():
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)

    control = control_image()
    t = time.perf_counter()
    master = build_master(args.variant)
    out["build_s"] = round(time.perf_counter() - t, 1)
    print(f"built {args.variant} in {out['build_s']} s", flush=True)

    # 1. Resident reference.
    manager = manager_over(master, args.variant, "gpu")
    messages: list = []
    image(manager, control, 1, args.steps, messages)
    resident_s, reference, _ = image(manager, control, 2, args.steps, messages)
    out["resident"] = {"image2_s": round(resident_s, 2), "peak_reserved_gib": round(torch.cuda.max_memory_reserved()
                                                                                     / GIB, 2)}
    print(json.dumps(out["resident"]), flush=True)
    manager.unload()
    del manager
    gc.collect()
    torch.cuda.empty_cache()
    save()

    # 2. The defaults on smaller cards: loaded on the first, re-planned for the others.
    other = OtherProgram()
    manager = manager_over(master, args.variant, "auto")
    oom = 0
    try:
        for index, card in enumerate(args.cards):
            leave_card(other, card)
            torch.cuda.reset_peak_memory_stats()
            messages = []
            row = {"card_gib": card, "how": "loaded" if index == 0 else "re-planned"}
            try:
                first_s, _, _ = image(manager, control, 1, args.steps, messages)
                second_s, pixels, placement = image(manager, control, 2, args.steps, messages)
            except Exception as exc:  # noqa: BLE001 - a failure is a result row
                oom += "out of" in str(exc).lower()
                row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
                save()
                continue
            row.update(ok=True, placement=placement, plan=manager.status()["memory_plan"],
                       image1_s=round(first_s, 2), image2_s=round(second_s, 2),
                       x_resident=round(second_s / resident_s, 3),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                       host_rss_gib=round(host_rss_gib(), 1), same_pixels=bool(np.array_equal(pixels, reference)),
                       max_abs_diff=float(np.abs(pixels - reference).max()), messages=messages)
            out["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()

        # 3. Another program takes memory between two images of a sequence, then gives it back.
        if args.squeeze:
            card = args.cards[-1]
            frames = []
            for label, take in (("squeezed", args.squeeze), ("given back", 0.0)):
                leave_card(other, card - take) if take else leave_card(other, card)
                messages = []
                torch.cuda.reset_peak_memory_stats()
                try:
                    seconds, pixels, _ = image(manager, control, 2, args.steps, messages)
                    frames.append({"frame": label, "ok": True, "s": round(seconds, 2),
                                   "plan": manager.status()["memory_plan"], "messages": messages,
                                   "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
                                   "same_pixels": bool(np.array_equal(pixels, reference))})
                except Exception as exc:  # noqa: BLE001
                    oom += "out of" in str(exc).lower()
                    frames.append({"frame": label, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                print(json.dumps(frames[-1]), flush=True)
            out["squeeze"] = {"card_gib": card, "taken_gib": args.squeeze, "frames": frames}
    finally:
        out["out_of_memory_failures"] = oom
        save()
        manager.unload()
        other.close()
    print(f"out-of-memory failures: {oom}", flush=True)


if __name__ == "__main__":
    main()
