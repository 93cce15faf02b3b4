"""Ahead-of-time packages at FLUX.1's real block width (3072, 24 heads of 128), without the whole model.

    python benchmarks/aot_blocks.py --json aot_blocks.json [--tokens 256] [--device cpu|cuda]

Two double and two single blocks with random bf16 weights go through AotBlocks (pipeline/aot.py) into an empty
folder, then through a second AotBlocks over the same folder (a later start). Recorded: seconds to compile and to
load each kind, the package sizes (they must not carry the blocks' weights), and the relative L2 error of the four
blocks' output against eager PyTorch on the same inputs, and the seconds of a call (eager, and packaged after the
first call). Runs on a CPU (AOTInductor writes C++ there) in about a
minute with 256 image tokens; on a GPU it checks the Triton path the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fluxdepth_ui.pipeline.aot import AotBlocks  # noqa: E402

DIM, HEADS, HEAD_DIM, TEXT_TOKENS = 3072, 24, 128, 64


class Blocks(torch.nn.Module):
    """The two block lists of FluxTransformer2DModel, two of each, at FLUX.1's width."""

    def __init__(self):
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock

        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(
            FluxTransformerBlock(dim=DIM, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM) for _ in range(2))
        self.single_transformer_blocks = torch.nn.ModuleList(
            FluxSingleTransformerBlock(dim=DIM, num_attention_heads=HEADS, attention_head_dim=HEAD_DIM)
            for _ in range(2))

    def forward(self, hidden, text, temb, rotary):
        for block in (*self.transformer_blocks, *self.single_transformer_blocks):
            text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb,
                                 image_rotary_emb=rotary, joint_attention_kwargs=None)
        return hidden


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--tokens", type=int, default=256, help="image tokens (4096 = 1024x1024)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = Blocks().to(device, torch.bfloat16).eval()
    g = torch.Generator(device).manual_seed(1)
    inputs = (torch.randn(1, args.tokens, DIM, device=device, dtype=torch.bfloat16, generator=g),
              torch.randn(1, TEXT_TOKENS, DIM, device=device, dtype=torch.bfloat16, generator=g),
              torch.randn(1, DIM, device=device, dtype=torch.bfloat16, generator=g),
              tuple(torch.randn(args.tokens + TEXT_TOKENS, HEAD_DIM, device=device, generator=g) for _ in range(2)))
    t0 = time.perf_counter()
    with torch.no_grad():
        reference = model(*inputs).float()
    if device.type == "cuda":
        torch.cuda.synchronize()
    eager_s = round(time.perf_counter() - t0, 2)
    folder = tempfile.mkdtemp(prefix="fluxdepth-aot-blocks-")
    rows = []
    for phase in ("fresh folder", "later start"):
        aot = AotBlocks(model, folder, "bf16", device)
        aot.install()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(*inputs).float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rows.append({
            "phase": phase,
            "first_call_s": round(first, 2),
            "second_call_s": round(time.perf_counter() - t0, 2),
            "events": [[e.kind, e.block, round(e.seconds, 2)] for e in aot.events],
            "rel_err_vs_eager": round(float((out - reference).norm() / reference.norm()), 5),
        })
        aot.remove()
        print(json.dumps(rows[-1]), flush=True)
    weights = {kind: sum(p.numel() * p.element_size() for p in getattr(model, kind)[0].parameters())
               for kind in ("transformer_blocks", "single_transformer_blocks")}
    packages = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                if name.endswith(".pt2")}
    report = {"command": " ".join(sys.argv), "device": str(device), "torch": torch.__version__,
              "tokens": args.tokens, "eager_call_s": eager_s, "rows": rows, "block_weight_bytes": weights, "package_bytes": packages}
    print(json.dumps({"block_weight_bytes": weights, "package_bytes": packages}))
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
