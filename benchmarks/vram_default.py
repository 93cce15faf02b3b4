"""GPU benchmark (issue 26): placement auto with no memory flag on smaller cards, and a card that other programs share.

    python benchmarks/vram_default.py --variant bf16 --cards 12 16 24 --squeeze 4 --squeeze-at 16 --json bf16.json

A smaller card is made physically: a second process ("the other program", as Houdini would be) holds all of the
lent GPU's memory but `card` GiB, so the driver's free memory (what the manager reads before every image,
pipeline/budget.py available_bytes) is that of the smaller card, other programs' use included. For one tier:

1. resident reference: the same components fully on the card (placement gpu), two images;
2. one manager with placement auto and --vram-budget follow (headroom 1.5 GiB) loads on the first (smallest)
   card, two images; for each further card the other program gives memory back, and the next image re-plans up (no
   reload);
3. `--squeeze 4 --squeeze-at 16`: on that card, between two images of a sequence the other program takes 4 GiB
   more, then gives it back: the next image re-plans down, the one after it up again.

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

    def hold(self, gib: float, settle: bool = False) -> float:
        """Hold `gib`; with `settle`, as much of it as the card has free (in 0.25 GiB steps), as a real program
        would take what it can. Returns what is held."""
        while True:
            self.proc.stdin.write(f"hold {gib}\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().strip()
            if answer == "ok":
                return gib
            if not settle or answer != "short" or gib <= 0.25:
                raise RuntimeError(f"the other program could not take {gib:.1f} GiB ({answer or 'it died'})")
            gib -= 0.25

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def card_total_gib() -> float:
    return torch.cuda.mem_get_info()[1] / GIB


def leave_card(other: OtherProgram, card_gib: float, settle: bool = False) -> float:
    """The other program holds all of the GPU but `card_gib` (its own CUDA context, about 0.6 GiB, counted): this
    process sees the free memory of a `card_gib` card on which it runs alone. Returns the GiB it holds."""
    return other.hold(max(0.0, card_total_gib() - card_gib - 0.6), settle)


def manager_over(master: dict, variant: str, placement: str) -> PipelineManager:
    def loader(variant, progress):  # a fresh copy per load, as a load from disk would be (a failed load may have
        # quantized part of what it was given)
        components = {k: copy.deepcopy(v) if isinstance(v, torch.nn.Module) else v for k, v in master.items()}
        return LoadedModel(components=components, revision="random", notes=[])

    return PipelineManager(ModelSource("black-forest-labs/FLUX.1-Depth-dev"), variant=variant, placement=placement,
                           loader=loader, cache_root="/tmp/fluxdepth-bench-cache",
                           vram_budget="follow" if placement == "auto" else None)


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
    ap.add_argument("--cards", nargs="+", type=float, required=True, help="card sizes in GiB, smallest first")
    ap.add_argument("--squeeze", type=float, default=0.0, help="GiB another program takes between two images")
    ap.add_argument("--squeeze-at", type=float, help="on which card (GiB) the other program takes memory")
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

    # 2. The defaults on smaller cards: loaded on the first (smallest), re-planned up for the others (the other
    #    program gives memory back; it can only take what this process does not hold).
    other = OtherProgram()
    manager = manager_over(master, args.variant, "auto")
    failures = {"oom": 0}

    def attempt(label: str, seeds: tuple[int, ...], extra: dict) -> dict:
        messages: list = []
        torch.cuda.reset_peak_memory_stats()
        row = {"step": label, **extra}
        try:
            times = []
            for seed in seeds:
                seconds, pixels, placement = image(manager, control, seed, args.steps, messages)
                times.append(seconds)
        except Exception as exc:  # noqa: BLE001 - a failure is a result row
            failures["oom"] += "out of" in str(exc).lower()
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:300]}", messages=messages)
        else:
            row.update(ok=True, placement=placement, plan=manager.status()["memory_plan"],
                       seconds=[round(t, 2) for t in times], x_resident=round(times[-1] / resident_s, 3),
                       peak_reserved_gib=round(torch.cuda.max_memory_reserved() / GIB, 2),
                       host_rss_gib=round(host_rss_gib(), 1), same_pixels=bool(np.array_equal(pixels, reference)),
                       max_abs_diff=float(np.abs(pixels - reference).max()), messages=messages)
        print(json.dumps(row), flush=True)
        out["rows"].append(row)
        save()
        return row

    try:
        for index, card in enumerate(args.cards):
            leave_card(other, card)
            attempt("loaded" if index == 0 else "re-planned", (1, 2), {"card_gib": card})
            # 3. Another program takes memory between two frames of a sequence, then gives it back.
            if card == args.squeeze_at and args.squeeze:
                before = card_total_gib() - card - 0.6
                taken = leave_card(other, card - args.squeeze, settle=True) - before
                attempt(f"{taken:.2f} GiB taken by another program (asked {args.squeeze:g})", (2,),
                        {"card_gib": card - taken, "taken_gib": round(taken, 2),
                         "free_before_gib": round(torch.cuda.mem_get_info()[0] / GIB, 2)})
                leave_card(other, card)
                attempt("given back", (2,), {"card_gib": card})
    finally:
        out["out_of_memory_failures"] = failures["oom"]
        save()
        manager.unload()
        other.close()
    oom = failures["oom"]
    print(f"out-of-memory failures: {oom}", flush=True)


if __name__ == "__main__":
    main()
