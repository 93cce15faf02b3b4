"""Houdini PDG / TOPs: render a ROP's depth frames with FluxDepth Studio on the farm's schedulers.

The same two steps as every farm path (docs/farm.md): one work item computes the sequence's stats file (one
normalization range and one seed for all frames), then one work item per chunk of frames runs
`fluxdepth sequence --stats ... --frames A-B`. Frames are byte-identical to one long run, whichever scheduler
(Local, HQueue, Deadline, Tractor) runs the items.

In a TOP network, after the ROP Fetch / ROP Karma TOP that writes the depth AOV:
- a Python Script TOP (generate when: "Each upstream item is cooked", or on a single upstream item) with
      import sys; sys.path.append("/path/to/fluxdepth/examples/houdini")
      import fluxdepth_pdg
      fluxdepth_pdg.add_work_items(item_holder, pattern="$HIP/render/sh010.depth.$F4.exr", first=1001, last=1048,
                                   out="$HIP/fluxdepth/sh010", prompt="a flooded cathedral, god rays")
  which adds the stats item and the chunk items as command-line items (each with a `command` attribute), then
- a Generic Generator TOP / "Command Chain" that runs `@command`, or `build_network(topnet, ...)` below, which makes
  two Generic Generator TOPs (stats, then chunks after it) from hython.

FluxDepth Studio must be installed where the work items run (`fluxdepth` on PATH, or pass `fluxdepth=` the full
path); nothing is installed by the items. `commands()` is plain Python and is what the repository's tests run.
"""

from __future__ import annotations

import shlex


def chunk_ranges(first: int, last: int, chunk: int) -> list[tuple[int, int]]:
    if chunk < 1 or last < first:
        raise ValueError("need first <= last and a chunk of 1 frame or more")
    return [(start, min(start + chunk - 1, last)) for start in range(first, last + 1, chunk)]


def commands(pattern: str, first: int, last: int, out: str, prompt: str, chunk: int = 8, seed: int = 1,
             fluxdepth: str = "fluxdepth", extra: list[str] | None = None) -> tuple[str, list[str]]:
    """(the stats command, one command per chunk), as shell command lines."""
    base = [*shlex.split(fluxdepth), "sequence", pattern, "--prompt", prompt, "--seed", str(seed), "--out", out,
            "--stats", f"{out.rstrip('/')}/sequence_stats.json", *(extra or [])]
    stats = shlex.join([*base, "--stats-only"])
    chunks = [shlex.join([*base, "--frames", f"{a}-{b}"]) for a, b in chunk_ranges(first, last, chunk)]
    return stats, chunks


def add_work_items(item_holder, pattern: str, first: int, last: int, out: str, prompt: str, **kw) -> None:
    """For a Python Script / Python Processor TOP: the stats item, then the chunk items, each with `command`."""
    stats, chunks = commands(pattern, first, last, out, prompt, **kw)
    item = item_holder.addWorkItem(index=0)
    item.setStringAttrib("command", stats)
    item.setStringAttrib("fluxdepth_step", "stats")
    for index, line in enumerate(chunks, start=1):
        work = item_holder.addWorkItem(index=index)
        work.setStringAttrib("command", line)
        work.setStringAttrib("fluxdepth_step", "render")


def build_network(topnet, pattern: str, first: int, last: int, out: str, prompt: str, **kw):
    """From hython: two Generic Generator TOPs in `topnet` (a hou.Node), stats first, chunks after it."""
    stats, chunks = commands(pattern, first, last, out, prompt, **kw)
    stats_node = topnet.createNode("genericgenerator", "fluxdepth_stats")
    stats_node.parm("itemcount").set(1)
    stats_node.parm("itemcommand").set(stats)
    render = topnet.createNode("genericgenerator", "fluxdepth_render")
    render.setInput(0, stats_node)
    render.parm("itemcount").set(len(chunks))
    # One command line per work item, picked by the item's index.
    render.parm("itemcommand").set("`chs(\"./fluxdepth_chunk\" + @pdg_index)`")
    group = render.parmTemplateGroup()
    import hou  # type: ignore  # only inside Houdini

    for index, line in enumerate(chunks):
        group.append(hou.StringParmTemplate(f"fluxdepth_chunk{index}", f"chunk {index}", 1, default_value=(line,)))
    render.setParmTemplateGroup(group)
    topnet.layoutChildren()
    return stats_node, render


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="print the PDG command lines for a depth sequence")
    ap.add_argument("pattern")
    ap.add_argument("--first", type=int, required=True)
    ap.add_argument("--last", type=int, required=True)
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    s, c = commands(args.pattern, args.first, args.last, args.out, args.prompt, args.chunk, args.seed)
    print("\n".join([s, *c]))
