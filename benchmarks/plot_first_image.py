"""Where a later start's time goes, and its host memory: a plot of benchmarks/first_image_disk.py runs for
docs/benchmarks.md (issue 26).

    python benchmarks/plot_first_image.py docs/results/first_image_disk_qint8_h100.json \\
        docs/results/first_image_disk_qint8_setaside_h100.json docs/results/first_image_disk_qint8_homes_h100.json \\
        --label "session 34" "set aside" "plan first" --budget 12 --png docs/first_image_disk_h100.png

One bar per later start under the budget (each run's rows with and without the read-ahead, cold machine or weights
only), split at the load's own progress lines: before the load's first line (the process, torch, the benchmark's
imports), preparing (the load's imports and skeletons), reading (the components and caches), placing, and the
image (28 steps, decode, PNG); the peak host RSS written at the end of each bar.
"""

from __future__ import annotations

import argparse
import json

PHASES = ("start", "preparing", "reading", "placing", "image")
COLOURS = ("#bbbbbb", "#e0a040", "#4080c0", "#c04040", "#50a050")


def split(row: dict) -> list[float]:
    """Seconds of each phase, from the row's progress lines (seconds since the process was launched)."""
    marks = row["phases"]

    def first(prefix: str, default: float) -> float:
        return next((t for t, message in marks if message.startswith(prefix)), default)

    load = marks[0][0]
    # the load's own reading starts at whichever comes first: the cache reads (before session 35) or the other
    # components (since, the caches are read after them)
    prepared = min(first("loading the remaining components", row["loaded_s"]), first("reading ", row["loaded_s"]))
    placing = first("placing ", row["loaded_s"])
    return [load, prepared - load, placing - prepared, row["loaded_s"] - placing,
            row["first_image_saved_s"] - row["loaded_s"]]


def bars(paths: list[str], labels: list[str], budget: str,
         rss_not_own: tuple = ()) -> list[tuple[str, list[float], float | None]]:
    out = []
    for path, label in zip(paths, labels):
        with open(path) as fh:
            run = json.load(fh)
        for row in run["rows"]:
            if row.get("phase") != "later start" or row.get("budget_gib") != budget or not row.get("ok"):
                continue
            what = [label, "cold machine" if row.get("dropped", "all") == "all" else "libraries cached"]
            if not row.get("read_ahead", True):
                what.append("no read-ahead")
            rss = None if label in rss_not_own else row["peak_host_rss_gib"]
            out.append((f"{row['tier']} {budget} GiB, " + ", ".join(what), split(row), rss))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--label", nargs="+", required=True, help="one per run")
    ap.add_argument("--budget", required=True, help="the budget (GiB) whose later starts are plotted")
    ap.add_argument("--png", required=True)
    ap.add_argument("--rss-not-own", nargs="*", default=[],
                    help="labels of runs whose RSS was the parent's mark (before session 34's VmHWM fix): not shown")
    args = ap.parse_args()
    if len(args.label) != len(args.runs):
        ap.error("one --label per run")
    rows = bars(args.runs, args.label, args.budget, tuple(args.rss_not_own))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 0.55 * len(rows) + 1.6))
    for y, (_name, parts, rss) in enumerate(rows):
        left = 0.0
        for part, colour, phase in zip(parts, COLOURS, PHASES):
            ax.barh(y, part, left=left, color=colour, label=phase if y == 0 else None)
            left += part
        memory = "RSS not measured" if rss is None else f"RSS {rss:.1f} GiB"
        ax.text(left + 0.4, y, f"{left:.1f} s, {memory}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [name for name, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(20, color="black", linestyle=":", linewidth=1)
    ax.set_xlabel("seconds from launch to the first saved image (dotted: the 20 s target)")
    ax.set_xlim(0, max(sum(p) for _, p, _ in rows) * 1.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
