"""Where the fast tier's step time goes, part by part (issue 23), in one process:

    python benchmarks/fast_tier_parts.py --json parts.json [--profile]

- attention at FLUX's 1024x1024 shape (1 x 24 heads x 4608 tokens x 128, bf16) through each SDPA backend torch has
  here (flash, cuDNN, memory-efficient), and SageAttention's Triton kernels where the package imports; ms (median,
  triton.testing.do_bench), TFLOP/s, relative error against the flash backend;
- fp8 rowwise GEMMs (torch._scaled_mm, what torchao's fp8 tier calls) against bf16 at FLUX's linear shapes (4608 rows),
  and with one scale per tensor;
- --profile: the kernels of one compiled fp8 transformer call (the app's own fp8 path, untuned), summed by kind, so the
  attention / GEMM / elementwise split of a step is measured, not guessed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

TOKENS, HEADS, HEAD_DIM = 4608, 24, 128
LINEARS = [(3072, 3072), (3072, 9216), (3072, 12288), (12288, 3072), (15360, 3072), (3072, 21504)]  # (in, out)


def attention(report: dict) -> None:
    import torch
    import triton.testing
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=g)
               for _ in range(3))
    flops = 4 * TOKENS * TOKENS * HEAD_DIM * HEADS
    rows = []
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v).float()
    candidates = {
        "flash": (SDPBackend.FLASH_ATTENTION, None),
        "cudnn": (SDPBackend.CUDNN_ATTENTION, None),
        "efficient": (SDPBackend.EFFICIENT_ATTENTION, None),
    }
    for name, (backend, _) in candidates.items():
        try:
            def fn(b=backend):
                with sdpa_kernel(b):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v)
            out = fn().float()
            ms = triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
            rows.append({"backend": name, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                         "rel_err_vs_flash": round(float((out - ref).norm() / ref.norm()), 5)})
        except Exception as exc:  # noqa: BLE001
            rows.append({"backend": name, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
    try:
        from sageattention import sageattn

        def sage():
            return sageattn(q, k, v, tensor_layout="HND", is_causal=False)
        out = sage().float()
        ms = triton.testing.do_bench(sage, warmup=50, rep=300, return_mode="median")
        rows.append({"backend": "sageattention", "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                     "rel_err_vs_flash": round(float((out - ref).norm() / ref.norm()), 5)})
    except Exception as exc:  # noqa: BLE001
        rows.append({"backend": "sageattention", "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    report["attention"] = rows
    for r in rows:
        print(json.dumps(r), flush=True)


def gemms(report: dict) -> None:
    import torch
    import triton.testing

    g = torch.Generator("cuda").manual_seed(0)
    rows = []
    for k, n in LINEARS:
        x = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16, generator=g)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
        xs = x.abs().amax(dim=1, keepdim=True).float() / 448
        ws = w.abs().amax(dim=1, keepdim=True).float() / 448
        x8 = (x / xs).to(torch.float8_e4m3fn)
        w8 = (w / ws).to(torch.float8_e4m3fn)
        flops = 2 * TOKENS * k * n
        bf = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w), return_mode="median")
        f8 = triton.testing.do_bench(lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs, scale_b=ws.t(),
                                                              out_dtype=torch.bfloat16), return_mode="median")
        # One scale per tensor: cuBLAS's own fp8 kernels (rowwise scales take CUTLASS's), the other way to the 0.45x
        xt, wt = x.abs().amax().float() / 448, w.abs().amax().float() / 448
        xt8, wt8 = (x / xt).to(torch.float8_e4m3fn), (w / wt).to(torch.float8_e4m3fn)
        ft = triton.testing.do_bench(lambda: torch._scaled_mm(xt8, wt8.t(), scale_a=xt, scale_b=wt,
                                                              out_dtype=torch.bfloat16), return_mode="median")
        rows.append({"in": k, "out": n, "bf16_us": round(bf * 1e3, 1), "bf16_tflops": round(flops / bf / 1e9, 1),
                     "fp8_rowwise_us": round(f8 * 1e3, 1), "fp8_tflops": round(flops / f8 / 1e9, 1),
                     "fp8_tensorwise_us": round(ft * 1e3, 1), "fp8_tensorwise_tflops": round(flops / ft / 1e9, 1)})
        print(json.dumps(rows[-1]), flush=True)
    report["gemms"] = rows


def profile(report: dict) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    from pipeline_gpu import build_transformer, step_inputs
    from fluxdepth_ui.pipeline.speed import compile_transformer, fp8_quantize_transformer
    from fluxdepth_ui.pipeline.variants import TRANSFORMER_EXCLUDE

    os.environ["FLUXDEPTH_COMPILE_TUNING"] = "0"
    transformer = build_transformer()
    fp8_quantize_transformer(transformer, torch.device("cuda"), TRANSFORMER_EXCLUDE)
    compile_transformer(transformer, "/tmp")
    kw = step_inputs()
    t = time.perf_counter()
    with torch.no_grad():
        transformer(**kw)
        torch.cuda.synchronize()
        report["profile_compile_s"] = round(time.perf_counter() - t, 1)
        transformer(**kw)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            transformer(**kw)
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    top = []
    for e in prof.key_averages():
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        if not us:
            continue
        name = e.key.lower()
        if any(s in name for s in ("flash", "fmha", "cudnn", "attention", "sdpa")):
            kind = "attention"
        elif any(s in name for s in ("gemm", "sm90", "cutlass", "scaled_mm", "matmul", "nvjet", "xmma", "cublas")):
            kind = "gemm"
        elif "triton" in name:
            kind = "triton (fused elementwise, quantize)"
        else:
            kind = "other"
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e3
        top.append((us / 1e3, e.key[:120], e.count))
    top.sort(reverse=True)
    report["profile_ms_by_kind"] = {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    report["profile_top"] = [{"ms": round(ms, 2), "kernel": name, "calls": n} for ms, name, n in top[:25]]
    print(json.dumps(report["profile_ms_by_kind"]), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    import torch

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    def save():
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)

    for part in (attention, gemms) + ((profile,) if args.profile else ()):
        try:
            part(report)
        except Exception as exc:  # noqa: BLE001 - keep the other parts' numbers
            report[f"{part.__name__}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(report[f"{part.__name__}_error"], flush=True)
        save()


if __name__ == "__main__":
    main()
