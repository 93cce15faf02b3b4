"""GPU probe (issue 23): would fp8 attention through cuDNN make the fast tier's step faster, and how wrong is it?

    python benchmarks/fp8_attention_probe.py --json out.json

One FLUX attention call at the fast tier's sizes (24 heads of 128; 4096 image + 512 text tokens at 1024x1024, 9216 +
512 for a 2048x1152 plate pass), random bf16 inputs with FLUX-like spread:
- bf16 through torch's SDPA, cuDNN and Flash backends (what the compiled tier runs now: cuDNN, docs/benchmarks.md);
- Flash-Attention 3, bf16 and fp8 (e4m3, per-head scales), where its extension is installed (built from source
  for Hopper by benchmarks/build_fa3.sh; no wheel of it installs here);
- fp8 (e4m3) through cuDNN's own fp8 SDPA (NVIDIA's `nvidia-cudnn-frontend` Python graph API, a wheel in
  `.whl-extra/` of the dev checkout; not a dependency of the app), per-tensor scales, output in bf16 where cuDNN takes
  that, else fp8 scaled back: the attention alone, and with the quantization of q, k, v the model would add.
Each timed as the median of `--iters` calls between CUDA events; the relative L2 error of each against float32
attention. Every variant runs in its own try: one that cuDNN refuses is recorded with its error, the rest go on.
No image is made: this decides whether an fp8 attention path is worth building (the kernel budget is in
docs/benchmarks.md "Issue 23").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

E4M3_MAX = 448.0


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def per_tensor_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as e4m3 with one scale, and the float32 descale (1 x 1 x 1 x 1) that gives x back."""
    amax = x.abs().amax().float().clamp(min=1e-12)
    return (x.float() * (E4M3_MAX / amax)).to(torch.float8_e4m3fn), (amax / E4M3_MAX).reshape(1, 1, 1, 1)


class CudnnFp8Attention:
    """cuDNN's fp8 SDPA forward for one shape, built once."""

    def __init__(self, shape: tuple, out_bf16: bool, scale_s: float = 256.0):
        import cudnn

        self.cudnn, self.shape, self.out_bf16 = cudnn, shape, out_bf16
        b, h, s, d = shape
        stride = [h * s * d, s * d, d, 1]
        self.handle = cudnn.create_handle()
        graph = cudnn.pygraph(io_data_type=cudnn.data_type.FP8_E4M3, intermediate_data_type=cudnn.data_type.FLOAT,
                              compute_data_type=cudnn.data_type.FLOAT, handle=self.handle)
        self.q, self.k, self.v = (graph.tensor(name=n, dim=list(shape), stride=stride,
                                               data_type=cudnn.data_type.FP8_E4M3) for n in "qkv")
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        self.scales = {n: graph.tensor(name=n, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1],
                                       data_type=cudnn.data_type.FLOAT) for n in names}
        o, _stats, amax_s, amax_o = graph.sdpa_fp8(
            q=self.q, k=self.k, v=self.v, **self.scales, is_inference=True, attn_scale=d ** -0.5,
            use_causal_mask=False)
        o.set_output(True).set_dim(list(shape)).set_stride(stride).set_data_type(
            cudnn.data_type.BFLOAT16 if out_bf16 else cudnn.data_type.FP8_E4M3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(cudnn.data_type.FLOAT)
        self.o, self.amax_s, self.amax_o = o, amax_s, amax_o
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph = graph
        self.workspace = torch.empty(graph.get_workspace_size(), device="cuda", dtype=torch.uint8)
        one = torch.ones(1, 1, 1, 1, device="cuda", dtype=torch.float32)
        self.scale_s, self.descale_s = one * scale_s, one / scale_s
        self.out = torch.empty(shape, device="cuda", dtype=torch.bfloat16 if out_bf16 else torch.float8_e4m3fn)
        self.amax_buffers = (torch.empty_like(one), torch.empty_like(one))

    def __call__(self, q8, k8, v8, dq, dk, dv) -> torch.Tensor:
        scale_o = (1 / dv) if not self.out_bf16 else torch.ones_like(dv)
        pack = {self.q: q8, self.k: k8, self.v: v8, self.o: self.out, self.amax_s: self.amax_buffers[0],
                self.amax_o: self.amax_buffers[1]}
        pack.update({self.scales["descale_q"]: dq, self.scales["descale_k"]: dk, self.scales["descale_v"]: dv,
                     self.scales["descale_s"]: self.descale_s, self.scales["scale_s"]: self.scale_s,
                     self.scales["scale_o"]: scale_o})
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return self.out if self.out_bf16 else (self.out.float() * dv).to(torch.bfloat16)


def probe(tokens: int, iters: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    shape = (1, 24, tokens, 128)
    torch.manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 2 for _ in range(3))
    with sdpa_kernel(SDPBackend.MATH):
        ref = sdpa(q.float(), k.float(), v.float())
    row: dict = {"tokens": tokens, "shape": list(shape)}
    for name, backend in (("bf16_cudnn", SDPBackend.CUDNN_ATTENTION), ("bf16_flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                row[f"{name}_ms"] = round(timed(lambda: sdpa(q, k, v), iters), 4)
                row[f"{name}_rel_err"] = round(rel_error(sdpa(q, k, v), ref), 5)
        except Exception as exc:  # noqa: BLE001 - a probe records what failed and goes on
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    quantized = [per_tensor_fp8(t) for t in (q, k, v)]
    row["quantize_qkv_ms"] = round(timed(lambda: [per_tensor_fp8(t) for t in (q, k, v)], iters), 4)
    (q8, dq), (k8, dk), (v8, dv) = quantized
    for out_bf16 in (True, False):
        name = "fp8_cudnn_out_bf16" if out_bf16 else "fp8_cudnn_out_fp8"
        try:
            attention = CudnnFp8Attention(shape, out_bf16)
            row[f"{name}_ms"] = round(timed(lambda: attention(q8, k8, v8, dq, dk, dv), iters), 4)
            row[f"{name}_rel_err"] = round(rel_error(attention(q8, k8, v8, dq, dk, dv), ref), 5)
        except Exception as exc:  # noqa: BLE001
            row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    fa3_rows(row, q, k, v, ref, iters)
    print(json.dumps(row), flush=True)
    return row


def per_head_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, heads, tokens, dim) as e4m3 in FA3's layout (batch, tokens, heads, dim), one scale per head, and
    the float32 descale (batch, heads) that gives it back."""
    amax = x.abs().amax(dim=(2, 3)).float().clamp(min=1e-12)
    scaled = x.float() * (E4M3_MAX / amax)[:, :, None, None]
    return scaled.to(torch.float8_e4m3fn).transpose(1, 2).contiguous(), (amax / E4M3_MAX).contiguous()


def fa3_rows(row: dict, q, k, v, ref, iters: int) -> None:
    """Flash-Attention 3 (Hopper), bf16 and fp8 e4m3 with per-head scales, when its extension is installed (built
    for this machine by benchmarks/build_fa3.sh; not a dependency of the app)."""
    try:
        from flash_attn_interface import flash_attn_func
    except ImportError as exc:
        row["fa3"] = f"not importable: {exc}"
        return
    to_fa3 = [t.transpose(1, 2).contiguous() for t in (q, k, v)]  # (batch, tokens, heads, dim)

    def back(out):
        return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

    try:
        row["fa3_bf16_ms"] = round(timed(lambda: flash_attn_func(*to_fa3), iters), 4)
        row["fa3_bf16_rel_err"] = round(rel_error(back(flash_attn_func(*to_fa3)), ref), 5)
    except Exception as exc:  # noqa: BLE001
        row["fa3_bf16_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:
        (q8, dq), (k8, dk), (v8, dv) = (per_head_fp8(t) for t in (q, k, v))
        row["quantize_qkv_per_head_ms"] = round(timed(lambda: [per_head_fp8(t) for t in (q, k, v)], iters), 4)

        def fp8():
            return flash_attn_func(q8, k8, v8, q_descale=dq, k_descale=dk, v_descale=dv)

        row["fa3_fp8_ms"] = round(timed(fp8, iters), 4)
        row["fa3_fp8_rel_err"] = round(rel_error(back(fp8()), ref), 5)
    except Exception as exc:  # noqa: BLE001
        row["fa3_fp8_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", nargs="+", type=int, default=[4608, 9728])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("error: the fp8 attention probe needs a CUDA GPU (Hopper for cuDNN's fp8 SDPA)", file=sys.stderr)
        raise SystemExit(2)
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "cudnn_backend": torch.backends.cudnn.version(), "rows": []}
    try:
        import cudnn

        report["cudnn_frontend"] = getattr(cudnn, "__version__", "?")
    except ImportError as exc:
        report["cudnn_frontend"] = f"not importable: {exc}"
    for tokens in args.tokens:
        report["rows"].append(probe(tokens, args.iters))
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
