"""Probe (issue 26's fp8 row): can a transformer that streams under a VRAM budget also run compiled?

    python benchmarks/stream_compile_probe.py --variant fp8 --budget 12 --json fp8_stream_probe.json
    python benchmarks/stream_compile_probe.py --tiny --json /tmp/probe.json      # the wiring, on the CPU (bf16)

Today the app compiles nothing while the transformer streams (manager.py `_decide_compile`: an offload hook on every
block), and fp8 refuses to stream (budget.py UNSTREAMABLE_TIERS): streamed, it ran uncompiled at 4.66x its resident
time (docs/benchmarks.md "fp8 under a budget"). This probe times one transformer call at 1024x1024 (benchmarks/configs
shapes, random weights) in four ways, each in its own child process (a crash is a failed row, not the end of the run):

  resident            every block on the GPU, compiled the app's way (repeated blocks, fullgraph); the reference
  streamed-eager      the budget plan's blocks stream through diffusers' group offloading (budget.apply_memory_plan,
                      the app's code), uncompiled: what the app runs today for the other tiers
  streamed-under      each block's own forward compiled *before* the offload hooks wrap it: the hooks move the weights
                      in eager code, then call the compiled block (parameters are graph inputs, so new storage per
                      call should not recompile)
  streamed-over       the hooked blocks compiled afterwards with graph breaks allowed (nn.Module.compile, fullgraph
                      off): the hooks inside the compiled call

Per row: ms per call (median of --calls after a warm-up call that includes compiling), the warm-up's seconds, peak
reserved GiB, recompiles seen, the relative difference of the output to the resident row's, and the error line if it
failed. Not app code: what it finds decides whether the app's streamed plans can compile (then fp8 can stream).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

MODES = ("resident", "streamed-eager", "streamed-under", "streamed-over")
GIB = 2**30


def build(tiny: bool):
    import torch
    from diffusers import FluxTransformer2DModel

    if tiny:
        from fluxdepth_ui.pipeline.tiny import tiny_transformer_config

        torch.manual_seed(0)
        config = {**tiny_transformer_config(), "num_layers": 3, "num_single_layers": 5}
        return FluxTransformer2DModel(**config).eval(), config
    from pipeline_gpu import build_transformer, config

    return build_transformer(), config("transformer")


def inputs(config: dict, tiny: bool) -> dict:
    """The full-size call's inputs are the other GPU benchmarks' (pipeline_gpu.step_inputs); the tiny ones the same
    kinds of tensor at the tiny config's widths, in float32 on the CPU."""
    import torch

    if not tiny:
        from pipeline_gpu import step_inputs

        return step_inputs()
    g = torch.Generator().manual_seed(0)
    tokens, text = 64, 8
    return dict(hidden_states=torch.randn(1, tokens, config["in_channels"], generator=g),
                encoder_hidden_states=torch.randn(1, text, config["joint_attention_dim"], generator=g),
                pooled_projections=torch.randn(1, config["pooled_projection_dim"], generator=g),
                timestep=torch.full((1,), 0.5), guidance=torch.full((1,), 10.0),
                img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3), return_dict=False)


def plan_for(transformer, budget_gib: float, fp8: bool, tiny: bool):
    """The app's plan for this budget (budget.plan_memory), the transformer's part only; fp8 sized as the manager
    sizes it (half of bf16) and planned under another name, since plan_memory refuses to stream fp8. Tiny: every
    second block resident."""
    from fluxdepth_ui.pipeline.budget import MemoryPlan, plan_memory, transformer_block_sizes
    from fluxdepth_ui.pipeline.placement import ACTIVATION_BYTES_PER_MEGAPIXEL, module_bytes

    blocks = transformer_block_sizes(transformer)
    if tiny:
        keep = tuple(range(0, len(blocks), 2))
        return MemoryPlan(int(budget_gib * GIB), (), ("transformer",), keep, len(blocks),
                          sum(b for i, b in enumerate(blocks) if i not in keep), "probe")
    size = module_bytes(transformer)
    if fp8:
        blocks, size = [b // 2 for b in blocks], size // 2
    sizes = {"transformer": size, "text_encoder": int(0.23 * GIB), "vae": int(0.16 * GIB),
             "text_encoder_2": int(4.56 * GIB)}
    plan = plan_memory(int(budget_gib * GIB), sizes, ACTIVATION_BYTES_PER_MEGAPIXEL, blocks, "probe")
    return dataclasses.replace(plan, resident=(), streamed=("transformer",))


def run_mode(mode: str, args) -> dict:
    import torch

    from fluxdepth_ui.pipeline.budget import BLOCK_LISTS, apply_memory_plan
    from fluxdepth_ui.pipeline.speed import compile_transformer, fp8_quantize_transformer
    from fluxdepth_ui.pipeline.variants import TRANSFORMER_EXCLUDE

    device = torch.device("cpu" if args.tiny else "cuda")
    transformer, config = build(args.tiny)
    fp8 = args.variant == "fp8"
    streamed = mode != "resident"
    row: dict = {"mode": mode, "variant": args.variant}
    if fp8:
        fp8_quantize_transformer(transformer, device, TRANSFORMER_EXCLUDE, keep_on_gpu=not streamed)
    if streamed:
        plan = plan_for(transformer, args.budget, fp8, args.tiny)
        row["plan"] = plan.summary()
        if not fp8 and not args.tiny:
            transformer.to("cpu")
        blocks = [b for name in BLOCK_LISTS for b in getattr(transformer, name)]
        if mode == "streamed-under":
            for block in blocks:
                block.forward = torch.compile(block.forward, fullgraph=True)
        apply_memory_plan(types.SimpleNamespace(transformer=transformer), plan, device)
        if mode == "streamed-over":
            for block in blocks:
                block.compile(fullgraph=False)
    else:
        transformer.to(device)
        compile_transformer(transformer, tempfile.mkdtemp(prefix="probe-compile-"))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the bf16 build and the quantizing are not the call's peak
    counters = torch._dynamo.utils.counters
    graphs = lambda: counters["stats"]["unique_graphs"]  # noqa: E731
    kw = inputs(config, args.tiny)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        t = time.perf_counter()
        out = transformer(**kw)[0].float()
        sync()
        row["warmup_s"] = round(time.perf_counter() - t, 2)
        compiled = graphs()
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            transformer(**kw)
            sync()
            times.append((time.perf_counter() - t) * 1000)
    row["ms_per_call"] = round(statistics.median(times), 1)
    row["graphs_compiled"] = compiled
    row["graphs_after_warmup"] = graphs() - compiled  # > 0: recompiling on every call
    row["graph_breaks"] = sum(counters["graph_break"].values()) if "graph_break" in counters else 0
    if device.type == "cuda":
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    torch.save(out.cpu(), os.path.join(args.work, f"{mode}.pt"))
    return row


def child(mode: str, args) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--work", args.work, "--variant",
               args.variant, "--budget", str(args.budget), "--calls", str(args.calls)] + (["--tiny"] if args.tiny else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"mode": mode, "ok": False, "error": f"past {args.timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"mode": mode, "ok": False, "error": f"exit {done.returncode}: {tail[:400]}"}
    return {**json.loads(lines[-1]), "ok": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=("fp8", "bf16"), default="fp8")
    ap.add_argument("--budget", type=float, default=12.0, help="GiB, planned as the app plans it")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--timeout", type=int, default=240, help="seconds per mode")
    ap.add_argument("--tiny", action="store_true", help="tiny bf16 transformer on the CPU: checks the wiring only")
    ap.add_argument("--json")
    ap.add_argument("--child")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.tiny:
        args.variant = "bf16"
    if args.child:
        print(json.dumps(run_mode(args.child, args)), flush=True)
        return
    import torch

    args.work = tempfile.mkdtemp(prefix="stream-probe-")
    report = {"variant": args.variant, "budget_gib": args.budget, "tiny": args.tiny, "torch": torch.__version__,
              "rows": []}
    for mode in args.modes.split(","):
        row = child(mode, args)
        reference = os.path.join(args.work, "resident.pt")
        mine = os.path.join(args.work, f"{mode}.pt")
        if row["ok"] and mode != "resident" and os.path.exists(reference):
            ref, out = torch.load(reference), torch.load(mine)
            row["rel_diff_to_resident"] = round(float((out - ref).norm() / ref.norm()), 5)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=1)
    base = next((r["ms_per_call"] for r in report["rows"] if r["mode"] == "resident" and r["ok"]), None)
    for r in report["rows"]:
        ratio = f"{r['ms_per_call'] / base:.2f}x" if base and r["ok"] else ""
        print(f"{r['mode']:16} {'ok' if r['ok'] else 'FAIL':4} {r.get('ms_per_call', '')} ms {ratio} "
              f"{r.get('plan', '')} {r.get('error', '')}")


if __name__ == "__main__":
    main()
