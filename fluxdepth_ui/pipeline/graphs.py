"""One CUDA graph of the whole compiled transformer call, per input shape (the fp8 tier, issue 23).

The compiled fp8 step launches some 700 kernels; between them the GPU waits on Python and the launch queue. Captured
once in a CUDA graph and replayed, the call runs its kernels back to back: on the lent H100 the fp8 step went from
104.8 to 99.8 ms (docs/benchmarks.md "Session 36"; 0.584x -> 0.556x of bf16 eager), the same kernels, so the same
numbers.

A replay reads its inputs from the graph's own buffers and the weights from the addresses they had at capture, and
sees no Python: whatever changes what the call computes must drop the graphs. The pipeline manager clears them when
the set of style LoRAs changes (their scales are tensors updated in place, which a replay reads), when the memory plan
changes (weights move) and on unload; as a second guard each replay checks that the first and last blocks' weights
still live where they did. Only for a transformer that stays on the GPU (no offload hook moves it) and torch.compile
(not ahead-of-time packages, not ZeroGPU). Opt-in: `FLUXDEPTH_CUDA_GRAPHS=1` (see graphs_enabled).

The output is the graph's buffer, overwritten by the next replay: diffusers' denoising loop uses the noise prediction
before its next transformer call. A size is captured at its second call (the first compiles), after one warm-up on a
side stream (what torch.cuda.graphs asks for); at most MAX_GRAPHS sizes are kept (each holds the call's activations).
A capture that fails, or that would compile again (other code than the plain calls run), turns graphs off for the
rest of the load, with one line, and the step runs as before.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Callable

import torch

log = logging.getLogger(__name__)

MAX_GRAPHS = 2  # 1024x1024 and one plate or aspect size; each keeps a call's activations (about 1 GiB at 1 MP)


def graphs_enabled() -> bool:
    """Opt-in (FLUXDEPTH_CUDA_GRAPHS=1): on the lent H100 one image of four came out different with graphs than
    without (after the style LoRAs were removed; docs/benchmarks.md "Session 37"), so graphs stay off by default
    until that is understood."""
    return os.environ.get("FLUXDEPTH_CUDA_GRAPHS", "0") == "1"


def _address(tensor: torch.Tensor) -> int:
    """Where a weight's data lives (torchao's fp8 weights keep theirs in `qdata`)."""
    inner = getattr(tensor, "qdata", tensor)
    try:
        return inner.data_ptr()
    except RuntimeError:  # a tensor subclass without storage of its own
        return id(inner)


def weight_addresses(transformer: torch.nn.Module) -> tuple:
    """The first and last blocks' first weights and the output layer's: they move whenever the transformer does."""
    probes = [transformer.transformer_blocks[0], transformer.single_transformer_blocks[-1], transformer.proj_out]
    return tuple(_address(next(module.parameters())) for module in probes)


def input_key(kwargs: dict) -> tuple:
    """What a graph is captured for: each argument's shape, dtype and device, or its value."""
    def one(value):
        if torch.is_tensor(value):
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        return ("value", repr(value))

    return tuple((name, one(value)) for name, value in sorted(kwargs.items()))


def capture_cuda_graph(run: Callable[[dict], object], static: dict) -> tuple[Callable[[], None], object]:
    """(replay, output buffers): `run(static)` once on a side stream (cuBLAS and cuDNN set up their workspaces outside
    the capture), then captured."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        run(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's CUDA work (the page serving, a read-ahead) does not break this capture
    with torch.no_grad(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
        out = run(static)
    return graph.replay, out


class GraphedForward:
    """Replaces `transformer.forward`: plain calls while `wanted()` is False or a size is new, replays after."""

    def __init__(self, transformer: torch.nn.Module, wanted: Callable[[], bool],
                 capture: Callable = capture_cuda_graph, max_graphs: int = MAX_GRAPHS):
        self.transformer = transformer
        self.forward = transformer.forward  # the bound method the module had
        self.wanted = wanted
        self.capture = capture
        self.max_graphs = max_graphs
        self.graphs: OrderedDict = OrderedDict()  # key -> (replay, static inputs, output, weight addresses)
        self.seen: set = set()  # keys called once (compiled) and not yet captured
        self.failed: str | None = None  # why graphs are off for this load
        self.replays = 0
        transformer.forward = self

    def remove(self) -> None:
        self.clear()
        if self.transformer.__dict__.get("forward") is self:
            del self.transformer.forward

    def clear(self) -> None:
        """Forget every graph (and its memory): the next call of each size runs plain, the one after captures."""
        self.graphs.clear()
        self.seen.clear()

    def __call__(self, *args, **kwargs):
        if args or self.failed is not None or not self.wanted():
            return self.forward(*args, **kwargs)
        key = input_key(kwargs)
        if key in self.graphs:
            replay, static, out, addresses = self.graphs[key]
            if addresses == weight_addresses(self.transformer):
                for name, value in kwargs.items():
                    if torch.is_tensor(value):
                        static[name].copy_(value)
                replay()
                self.graphs.move_to_end(key)
                self.replays += 1
                return out
            log.info("the transformer's weights moved: CUDA graphs captured again")
            self.clear()
        if key not in self.seen:  # the first call at this size compiles: never inside a capture
            self.seen.add(key)
            return self.forward(**kwargs)
        return self._capture(key, kwargs)

    def _capture(self, key: tuple, kwargs: dict):
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        static = {name: value.clone() if torch.is_tensor(value) else value for name, value in kwargs.items()}
        try:
            # The graph must hold the compiled code the plain calls run: a guard that fails inside the warm-up or
            # the capture (a recompile) would record other code, so it stops the capture instead.
            with torch.compiler.set_stance("fail_on_recompile"):
                replay, out = self.capture(lambda inputs: self.forward(**inputs), static)
                replay()
        except Exception as exc:  # noqa: BLE001 - graphs are an optimisation: the step runs without them
            self.clear()
            self.failed = (f"CUDA graphs off for this load: capturing the transformer failed "
                           f"({type(exc).__name__}); steps run as before")
            log.warning("CUDA graph capture failed", exc_info=True)
            return self.forward(**kwargs)
        self.graphs[key] = (replay, static, out, weight_addresses(self.transformer))
        self.seen.discard(key)
        # The capture's own run read the cloned inputs; the first replay above computed this call's output
        # from them, which equal this call's inputs.
        return out
