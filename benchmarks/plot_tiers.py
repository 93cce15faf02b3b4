"""Table and plot of the tier runs (benchmarks/tiers_gpu.py JSON files) for docs/benchmarks.md.

    python benchmarks/plot_tiers.py docs/results/tiers_run2.json ... --png docs/tiers_h200.png

Each tier is taken from the last file given that measured it together with bf16 eager in the same process, so every
ratio printed is a same-run ratio. Offload rows and compile times come along. Prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os

ORDER = ["bf16", "bf16+compile", "qint8", "qint8+compile", "qint4", "qint4+compile", "fp8", "fp8-eager"]


def collect(paths: list[str]) -> tuple[dict, dict, dict]:
    tiers: dict[str, dict] = {}
    offload: dict[str, dict] = {}
    meta: dict = {}
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        meta = {k: run.get(k) for k in ("device", "torch", "diffusers", "optimum_quanto", "torchao", "python")}
        rows = [r for r in run.get("tiers", []) if "step_ms" in r]
        if not any(r["tier"] == "bf16" for r in rows):
            continue  # no same-run baseline: not used for ratios
        for row in rows:
            tiers[row["tier"]] = {**row, "file": os.path.basename(path)}
        for row in run.get("offload", []):
            if "peak_gib" in row:
                offload[row["tier"]] = {**row, "file": os.path.basename(path)}
    return tiers, offload, meta


def markdown(tiers: dict, offload: dict) -> str:
    lines = ["| tier | ms/step median (min–max) | × bf16 eager, same run | transformer weights GiB | peak GiB, whole "
             "pipeline, on GPU | peak GiB, model offload | 28 steps end to end | first call (compile) | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ORDER:
        if name not in tiers:
            continue
        r = tiers[name]
        s = r["step_ms"]
        base = name.split("+")[0]
        off = offload.get(base) if "+" not in name else None
        lines.append(
            f"| {name} | {s['median']} ({s['min']}–{s['max']}) | **{r['x_bf16']:.3f}** | "
            f"{r['transformer_weights_gib']} | {r.get('peak_gib', '–')} | {off['peak_gib'] if off else '–'} | "
            f"{str(r['e2e_s']) + ' s' if 'e2e_s' in r else '–'} | "
            f"{str(r['first_call_s']) + ' s' if r.get('compiled') else '–'} | {r['file']} |")
    return "\n".join(lines)


def plot(tiers: dict, offload: dict, meta: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in tiers]
    ratios = [tiers[n]["x_bf16"] for n in names]
    weights = [tiers[n]["transformer_weights_gib"] for n in names]
    colors = ["#4c72b0" if "compile" not in n and n != "fp8" else "#dd8452" for n in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    bars = left.barh(names[::-1], ratios[::-1], color=colors[::-1])
    left.axvline(1.0, color="black", lw=1)
    left.axvline(1.15, color="grey", lw=1, ls="--", label="quantized target (1.15×)")
    left.axvline(0.6, color="grey", lw=1, ls=":", label="fast-tier target (0.6×)")
    for bar, name in zip(bars, names[::-1]):
        left.text(bar.get_width() + 0.02, bar.get_y() + bar.get_height() / 2,
                  f"{tiers[name]['step_ms']['median']:.0f} ms", va="center", fontsize=8)
    left.set_xlabel("transformer step time ÷ bf16 eager (same run), lower is faster")
    left.set_xlim(0, max(ratios) * 1.4)
    left.legend(fontsize=8, loc="upper right")
    left.set_title("Step time at 1024×1024")

    gpu_peak = [tiers[n].get("peak_gib", 0) for n in names]
    off_peak = [offload[n]["peak_gib"] if n in offload else 0 for n in names]
    y = range(len(names))
    right.barh([i + 0.2 for i in y][::-1], gpu_peak[::-1], height=0.4, color="#55a868", label="whole pipeline on GPU")
    right.barh([i - 0.2 for i in y][::-1], off_peak[::-1], height=0.4, color="#c44e52", label="model offload")
    right.scatter(weights[::-1], list(y)[::-1], marker="|", s=200, color="black", label="transformer weights")
    right.set_yticks(list(y)[::-1], names[::-1])
    right.axvline(12, color="grey", lw=1, ls="--", label="12 GiB")
    right.set_xlabel("peak GPU memory, GiB (28-step generation incl. T5, CLIP, VAE)")
    right.legend(fontsize=8, loc="upper right")
    right.set_title("Memory")
    fig.suptitle(f"FLUX.1-Depth-dev-shaped pipeline, random weights · {meta.get('device')} · torch "
                 f"{meta.get('torch')} · diffusers {meta.get('diffusers')} · quanto {meta.get('optimum_quanto')} · "
                 f"torchao {meta.get('torchao')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--png", required=True)
    args = ap.parse_args()
    tiers, offload, meta = collect(args.runs)
    print(markdown(tiers, offload))
    plot(tiers, offload, meta, args.png)
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
