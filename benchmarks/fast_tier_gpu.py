"""The fast tier's step-time options, each measured in its own child process (issue 23).

    python benchmarks/fast_tier_gpu.py --variants bf16,fp8+cudnn,fp8+cudnn+qkv --warm fp8+cudnn+qkv --json out.json

A variant is `bf16` (eager, diffusers' default attention, and the same with cuDNN attention) or `fp8` plus options:
`cudnn` (SDPA's cuDNN backend through diffusers' `set_attention_backend("_native_cudnn")`), `qkv` (diffusers'
`fuse_qkv_projections` before quantizing: one GEMM and one activation quantization instead of three), `tune`
(torchao's inductor options: coordinate-descent tuning), `graphs` (CUDA graphs: `mode="reduce-overhead"`), `fa3`
(bf16 attention through Flash-Attention 3, diffusers' `_flash_3` backend; `bf16+fa3` times it eager too), `fp8attn`
(fp8 attention: torchao's `apply_low_precision_attention`, FP8_FA3), `graphed` (the whole compiled call in one
CUDA graph, `GraphedCall`), `pertensor` (one fp8 scale per weight and per activation: cuBLAS's kernels instead of
the rowwise ones). `fa3` and `fp8attn` need the Flash-Attention 3 wheel that benchmarks/build_fa3.sh builds
(`.whl-extra/`). Each child
gets new, empty inductor and Triton caches (a cold compile), builds the FLUX.1-Depth-dev-shaped random-weight
transformer on the GPU, records the bf16 eager output, applies the variant through the app's own functions
(speed.py), and times: the first call (the compile), ms per step at 1024x1024 (CUDA events, median of 10), the relative
error of one call against bf16 eager. `--warm V` runs V again in a fresh process with empty caches that first loads
the compile artifacts the cold child saved (torch.compiler.save/load_cache_artifacts): the first image on a machine
that was handed our cache folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


class GraphedCall:
    """The whole (compiled) transformer call captured in one CUDA graph per input shape and replayed: the launch gaps
    between its kernels (about 10 ms of an fp8 step, docs/benchmarks.md "Issue 23") go. The inputs are copied into
    the graph's own buffers; the output is the graph's buffer, valid until the next call (the denoising loop uses it
    before then). Per-block graphs (`mode="reduce-overhead"`) failed: each block's output was overwritten by the
    next block's replay."""

    def __init__(self, module):
        self.module, self.graphs = module, {}

    def __call__(self, **kw):
        import torch

        from fluxdepth_ui.pipeline.graphs import capture_cuda_graph, input_key

        key = input_key(kw)
        if key not in self.graphs:  # a plain call first (it compiles), then the app's capture (pipeline/graphs.py)
            static = {k: v.clone() if torch.is_tensor(v) else v for k, v in kw.items()}
            with torch.no_grad():
                self.module(**static)
            self.graphs[key] = (*capture_cuda_graph(lambda inputs: self.module(**inputs), static), static)
        replay, out, static = self.graphs[key]
        for k, v in kw.items():
            if torch.is_tensor(v):
                static[k].copy_(v)
        replay()
        return out


def run_child(variant: str, artifacts: str, load: bool) -> dict:
    import torch

    from pipeline_gpu import build_transformer, step_inputs, step_times, sync
    from tiers_gpu import rel_error, summary

    t_all = time.perf_counter()
    if load:
        t = time.perf_counter()
        with open(artifacts, "rb") as fh:
            torch.compiler.load_cache_artifacts(fh.read())
        load_s = time.perf_counter() - t
    opts = set(variant.split("+")[1:])
    base = variant.split("+")[0]
    transformer = build_transformer()
    sync()
    row: dict = {"variant": variant, "warm_artifacts": load, "build_s": round(time.perf_counter() - t_all, 1)}
    if load:
        row["artifacts_load_s"] = round(load_s, 2)
    kw = step_inputs()
    with torch.no_grad():
        ref = transformer(**kw)[0].float()

    def steps() -> dict:
        return summary(step_times(transformer, 10))

    def rel_err() -> float:
        return round(rel_error(transformer, ref), 4)

    if base == "bf16":
        row["step_ms"] = steps()
        transformer.set_attention_backend("_native_cudnn")
        row["cudnn_step_ms"] = steps()
        row["cudnn_rel_err"] = rel_err()
        if "fa3" in opts:
            transformer.set_attention_backend("_flash_3")
            row["fa3_step_ms"] = steps()
            row["fa3_rel_err"] = rel_err()
        return row
    from fluxdepth_ui.pipeline.speed import compile_transformer, fp8_quantize_transformer
    from fluxdepth_ui.pipeline.variants import TRANSFORMER_EXCLUDE

    if "qkv" in opts:
        transformer.fuse_qkv_projections()
    if "cudnn" in opts:
        transformer.set_attention_backend("_native_cudnn")
    if "fa3" in opts:  # bf16 attention through Flash-Attention 3 (benchmarks/build_fa3.sh)
        transformer.set_attention_backend("_flash_3")
    os.environ["FLUXDEPTH_COMPILE_TUNING"] = "1" if "tune" in opts else "0"
    t = time.perf_counter()
    fp8_quantize_transformer(transformer, torch.device("cuda"), TRANSFORMER_EXCLUDE, per_tensor="pertensor" in opts)
    sync()
    row["quantize_s"] = round(time.perf_counter() - t, 1)
    if "fp8attn" in opts:  # fp8 attention: torchao's FP8_FA3 wraps the model (before compiling)
        from torchao.prototype.attention import apply_low_precision_attention

        wrapped = apply_low_precision_attention(transformer)
        steps = lambda: summary(step_times(wrapped, 10))  # noqa: E731
        rel_err = lambda: round(rel_error(wrapped, ref), 4)  # noqa: E731
    if "graphs" in opts:
        transformer.compile_repeated_blocks(fullgraph=True, mode="reduce-overhead")
    else:
        compile_transformer(transformer, tempfile.gettempdir())
    if "graphed" in opts:  # one CUDA graph of the whole call, over the compiled blocks
        graphed = GraphedCall(wrapped if "fp8attn" in opts else transformer)
        steps = lambda: summary(step_times(graphed, 10))  # noqa: E731
        rel_err = lambda: round(rel_error(graphed, ref), 4)  # noqa: E731
    t = time.perf_counter()
    row["rel_err"] = rel_err()
    sync()
    row["first_call_s"] = round(time.perf_counter() - t, 1)
    row["step_ms"] = steps()
    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if not load:
        data = torch.compiler.save_cache_artifacts()
        if data is not None:
            with open(artifacts, "wb") as fh:
                fh.write(data[0])
            row["artifacts_bytes"] = len(data[0])
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="bf16,fp8+cudnn,fp8+cudnn+qkv")
    ap.add_argument("--warm", default="", help="variants to start again from their saved compile artifacts")
    ap.add_argument("--json", required=True)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--child", default="")
    ap.add_argument("--artifacts", default="")
    ap.add_argument("--load", action="store_true")
    args = ap.parse_args()
    if args.child:
        row = run_child(args.child, args.artifacts, args.load)
        print("ROW " + json.dumps(row), flush=True)
        return
    import torch

    from pipeline_gpu import versions

    report = {**versions(), "rows": []}
    try:
        import torchao

        report["torchao"] = torchao.__version__
    except ImportError:
        pass
    work = tempfile.mkdtemp(prefix="fast-tier-")
    jobs = [(v, False) for v in args.variants.split(",") if v] + [(v, True) for v in args.warm.split(",") if v]
    bf16 = None
    for variant, load in jobs:
        name = variant.replace("+", "_")
        caches = os.path.join(work, f"{name}-{'warm' if load else 'cold'}")
        shutil.rmtree(caches, ignore_errors=True)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": os.path.join(caches, "inductor"),
               "TRITON_CACHE_DIR": os.path.join(caches, "triton"), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, __file__, "--json", "-", "--child", variant,
               "--artifacts", os.path.join(work, f"{name}.artifacts")] + (["--load"] if load else [])
        t = time.time()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("ROW ")]
            row = json.loads(lines[-1][4:]) if lines else {"variant": variant, "rc": p.returncode,
                                                             "tail": (p.stdout + p.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            row = {"variant": variant, "warm_artifacts": load, "error": f"timeout {args.timeout} s"}
        row["process_s"] = round(time.time() - t, 1)
        if variant.split("+")[0] == "bf16" and "step_ms" in row:  # bf16 eager, whatever its options add
            bf16 = row["step_ms"]["median"]
        if bf16 and "step_ms" in row:
            row["x_bf16_eager"] = round(row["step_ms"]["median"] / bf16, 3)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    del torch


if __name__ == "__main__":
    main()
