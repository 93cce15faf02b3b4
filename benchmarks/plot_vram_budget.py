"""Table and plot of benchmarks/vram_budget.py runs for docs/benchmarks.md, with each row projected to a PCIe 4.0 x16
card (about 25 GB/s host -> GPU from pinned memory).

    python benchmarks/plot_vram_budget.py docs/results/vram_budget_*_h100.json --png docs/vram_budget_h100.png
    python benchmarks/plot_vram_budget.py docs/results/vram_budget_bf16_h100.json docs/results/vram_budget_*s40.json --layouts --png docs/vram_layouts_h100.png

--layouts plots each row's ratio to the same tier resident, one line per tier and stream layout (session 40 compared
them: docs/vram.md "Which blocks stay"), with issue 26's targets marked.

Projection: the streamed bytes of every step cross the bus at 25 GB/s instead of the pinned bandwidth measured in
the same run; a step is bound by its copies when it streams (measured: the streamed runs move their bytes at close
to the measured bandwidth), so the image time grows by steps x bytes x (1/25 - 1/measured).
"""

from __future__ import annotations

import argparse
import json

PCIE4 = 25.0  # GB/s
GIB = 2**30
# vram_budget.py's row modes, as they ran: a row without one ran the count layout (sessions 5-39); "even+h1" is the
# default since session 40 (the even layout with 6% / 1 GiB of allocator headroom).
LAYOUTS = {None: "count, 12% headroom (an earlier run)", "": "count, 12% headroom", "count": "count, 12% headroom", "even": "even, 12% headroom",
           "even+h1": "even, 6% headroom (default)"}
TARGETS = {"bf16": {24: 1.10, 16: 1.5, 12: 1.8}, "qint8": {12: 1.10}, "qint4": {8: 1.10}}  # issue 26


def rows(paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        with open(path) as fh:
            run = json.load(fh)
        bandwidth = run["bandwidth_gb_s"]["pinned"]
        resident = next((r for r in run["rows"] if r["budget_gib"] is None and r.get("ok")), None)
        for row in run["rows"]:
            if row["budget_gib"] is None or not row.get("ok"):
                continue
            streamed_gb = row["streamed_gib_per_step"] * GIB / 1e9
            extra = run["steps"] * streamed_gb * (1 / PCIE4 - 1 / bandwidth)
            out.append({"tier": run["variant"], "budget": float(row["budget_gib"]), "plan": row["plan"],
                        "streaming": row.get("streaming", "sync"), "layout": LAYOUTS.get(row.get("mode"), ""),
                        "peak": row["peak_gib"], "reserved": row["peak_reserved_gib"], "seconds": row["image2_s"],
                        "resident_s": resident["image2_s"] if resident else None, "x": row.get("x_resident"),
                        "gb_step": round(streamed_gb, 2), "host": row["host_rss_gib"], "bw": bandwidth,
                        "pcie4_s": round(row["image2_s"] + extra, 1), "same": row.get("same_pixels_as_resident")})
    return sorted(out, key=lambda r: (r["tier"], -r["budget"], r["streaming"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--png")
    ap.add_argument("--layouts", action="store_true", help="ratio to resident by tier and stream layout")
    args = ap.parse_args()
    table = rows(args.files)
    if args.layouts:
        plot_layouts(table, args.png)
        return
    print("| tier | budget GiB | streaming | plan | peak GiB live (reserved) | s / image | × resident | GB streamed / step "
          "| host GiB | PCIe 4.0 x16 projection | same pixels |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['tier']} | {r['budget']:g} | {r['streaming']} | {r['plan']} | {r['peak']} ({r['reserved']}) | {r['seconds']} | "
              f"{r['x']} | {r['gb_step']} | {r['host']} | {r['pcie4_s']} s | {r['same']} |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for tier in sorted({r["tier"] for r in table}):
            sel = [r for r in table if r["tier"] == tier and r["streaming"] != "sync"]
            ax.plot([r["budget"] for r in sel], [r["seconds"] for r in sel], "o-", label=f"{tier} (H100, measured)")
            ax.plot([r["budget"] for r in sel], [r["pcie4_s"] for r in sel], "o--", alpha=0.6,
                    label=f"{tier} (PCIe 4.0 x16, projected)")
            if sel[0]["resident_s"]:
                ax.axhline(sel[0]["resident_s"], ls=":", lw=1, color=ax.lines[-1].get_color())
        finish(fig, ax, "seconds per 1024² image, 28 steps",
               "FLUX.1-Depth-dev under a VRAM budget (dotted: resident on 80 GB)", args.png)


def finish(fig, ax, ylabel: str, title: str, png: str) -> None:
    """Budget on the x axis, largest first, as both plots have it; saved to `png`."""
    ax.set_xlabel("VRAM budget (GiB)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def plot_layouts(table: list[dict], png: str | None) -> None:
    print("| tier | budget GiB | layout | plan | x resident | peak reserved GiB |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['tier']} | {r['budget']:g} | {r['layout']} | {r['plan']} | {r['x']} | {r['reserved']} |")
    if not png:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {LAYOUTS[None]: "s:", LAYOUTS["count"]: "D", LAYOUTS["even"]: "^--", LAYOUTS["even+h1"]: "o-"}
    for tier in sorted({r["tier"] for r in table}):
        for layout, style in styles.items():
            sel = sorted((r for r in table if r["tier"] == tier and r["layout"] == layout and r["streaming"] != "sync"
                          and r["x"]), key=lambda r: r["budget"])
            if sel:
                ax.plot([r["budget"] for r in sel], [r["x"] for r in sel], style, label=f"{tier}, {layout}")
        for budget, target in TARGETS.get(tier, {}).items():
            ax.plot([budget], [target], "rx", ms=9)
    ax.plot([], [], "rx", label="issue 26 target (at most)")
    finish(fig, ax, "second image / same tier resident",
           "Streamed under a budget, H100 (28 steps, 1024²): which blocks stay", png)


if __name__ == "__main__":
    main()
