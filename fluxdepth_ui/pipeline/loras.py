"""Style LoRAs on every tier: the low-rank update runs beside each target layer, whatever that layer holds.

diffusers reads the file (`FluxLoraLoaderMixin.lora_state_dict`: diffusers/PEFT, Kohya and ComfyUI key formats, with
their alphas) and works out each layer's rank and alpha exactly as its own loader does (`_create_lora_config`). We
do not hand the adapter to PEFT: PEFT wraps only plain `nn.Linear` layers, and our qint8/qint4 tiers hold dense
quantized layers (dense.py) and fp8 holds torchao's. Instead each target layer gets a forward hook that adds
`B(A(x)) * scale * alpha / r`, the same sum in the same order as PEFT's LoRA layer, so on the bf16 tier the image
equals diffusers' own LoRA path (tests/test_loras.py), and on every tier:
- changing a scale changes one number: no reload, no re-quantizing, and a compiled transformer keeps its graph
  (the scale is a tensor, not a constant baked into the graph);
- the LoRA weights stay on the GPU beside a transformer that streams under a VRAM budget (a few MB to 100s of MB).
docs/loras.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import PipelineError


@dataclass(frozen=True)
class LoraLayer:
    down: torch.Tensor  # A: (rank, in_features)
    up: torch.Tensor  # B: (out_features, rank)
    scaling: float  # alpha / r (or alpha / sqrt(r) for rsLoRA), as PEFT computes it


@dataclass(frozen=True)
class LoraFile:
    name: str
    digest: str
    layers: dict[str, LoraLayer]  # transformer module name -> update
    notes: tuple[str, ...] = ()


def read_lora(path: str, name: str, digest: str, transformer) -> LoraFile:
    """Read a style LoRA for this transformer; a file that is not one raises a one-line PipelineError."""
    from diffusers import FluxControlPipeline
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.utils.other import get_pattern_key

    try:
        state, alphas, metadata = FluxControlPipeline.lora_state_dict(path, return_alphas=True,
                                                                      return_lora_metadata=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is one message about this file
        raise PipelineError(f"style LoRA {name!r} could not be read as a FLUX LoRA ({type(exc).__name__}); "
                            "check that it is a FLUX.1 LoRA in .safetensors") from None
    notes = []
    others = sorted({key.split(".", 1)[0] for key in state if not key.startswith("transformer.")})
    if others:
        notes.append(f"{name}: only its transformer part is used ({', '.join(others)} left out)")
    state = {k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")}
    if not state:
        raise PipelineError(f"style LoRA {name!r} has no layers for the FLUX transformer; is it a FLUX.1 LoRA?")
    unknown = sorted(k for k in state if ".lora_A." not in k and ".lora_B." not in k)
    if unknown:
        raise PipelineError(f"style LoRA {name!r} holds more than low-rank layers (e.g. {unknown[0][:60]}): "
                            "control or full-weight LoRAs are not style LoRAs; use --depth-lora for the Depth LoRA")
    if any(".lora_B.bias" in k or ".lora_A.bias" in k for k in state):
        raise PipelineError(f"style LoRA {name!r} has LoRA biases, which this studio does not apply")
    # diffusers pads the input side of a LoRA made for FLUX.1-dev (64 input channels) to Control's 128. It reads
    # the layers' plain weights, so it gets only the narrower plain nn.Linear layers (x_embedder is never quantized);
    # every other mismatch is refused below, in one line.
    modules = dict(transformer.named_modules())
    narrow = {k.split(".lora_A.")[0] for k, v in state.items() if ".lora_A." in k
              and isinstance(modules.get(k.split(".lora_A.")[0]), torch.nn.Linear)
              and v.ndim == 2 and v.shape[1] < modules[k.split(".lora_A.")[0]].in_features}
    plain = {k: v for k, v in state.items() if k.split(".lora_")[0] in narrow}
    expanded = FluxControlPipeline._maybe_expand_lora_state_dict(
        transformer, {f"transformer.{k}": v for k, v in plain.items()})
    state.update({k[len("transformer."):]: v for k, v in expanded.items()})
    alphas = {k[len("transformer."):]: v for k, v in (alphas or {}).items() if k.startswith("transformer.")}
    metadata = {k[len("transformer."):]: v for k, v in metadata.items()
                if k.startswith("transformer.")} if metadata else None
    ranks = {f"^{k}": v.shape[1] for k, v in state.items() if ".lora_B." in k and v.ndim > 1}
    config = _create_lora_config(state, alphas or None, metadata or None, ranks)
    layers = {}
    for key in sorted(k for k in state if ".lora_A." in k):
        target = key.split(".lora_A.")[0]
        down, up = state[key], state.get(key.replace(".lora_A.", ".lora_B."))
        module = modules.get(target)
        if up is None or module is None:
            raise PipelineError(f"style LoRA {name!r} names a layer FLUX.1 does not have ({target[:60]}); is it "
                                "a FLUX.1 LoRA?")
        shape_in, shape_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if down.shape[1] != shape_in or up.shape[0] != shape_out or up.shape[1] != down.shape[0]:
            raise PipelineError(f"style LoRA {name!r} does not fit layer {target} ({tuple(down.shape)} x "
                                f"{tuple(up.shape)} for {shape_in} -> {shape_out}); is it a FLUX.1 LoRA?")
        rank = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), target), config.r)
        alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), target), config.lora_alpha)
        scaling = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        layers[target] = LoraLayer(down.detach().cpu(), up.detach().cpu(), float(scaling))
    return LoraFile(name, digest, layers, tuple(notes))


class _Beside:
    """The forward hook on one layer: its output plus each active LoRA's update, in order, as PEFT adds them."""

    def __init__(self):
        self.entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (A, B, scale tensor)

    def __call__(self, module, args, output):
        if not self.entries:
            return output
        x = args[0]
        result = output
        for down, up, scale in self.entries:
            result = result + F.linear(F.linear(x.to(down.dtype), down), up) * scale
        return result.to(output.dtype)


@dataclass
class LoraStack:
    """The style LoRAs active on one transformer. `apply` makes a list of (LoraFile, scale) active: layers that
    need it get a hook once; scales are tensors updated in place."""

    device: torch.device
    dtype: torch.dtype
    _hooks: dict = field(default_factory=dict)  # module name -> (_Beside, handle)
    _weights: dict = field(default_factory=dict)  # (digest, module name) -> (A, B) on the device
    _scales: dict = field(default_factory=dict)  # (digest, module name) -> 0-d tensor on the device
    active: tuple = ()  # ((name, digest, scale), ...)

    def apply(self, transformer, loras: list[tuple[LoraFile, float]]) -> bool:
        """Make these LoRAs active. Returns True when the set of files changed (not only scales): a compiled
        transformer must then be traced again (pipeline/manager.py)."""
        wanted = tuple((f.name, f.digest, float(s)) for f, s in loras)
        if wanted == self.active:
            return False
        changed = [(n, d) for n, d, _ in wanted] != [(n, d) for n, d, _ in self.active]
        modules = dict(transformer.named_modules())
        entries: dict[str, list] = {}
        for lora, scale in loras:
            for target, layer in lora.layers.items():
                key = (lora.digest, target)
                if key not in self._weights:
                    self._weights[key] = (layer.down.to(self.device, self.dtype), layer.up.to(self.device, self.dtype))
                    self._scales[key] = torch.zeros((), dtype=torch.float32, device=self.device)
                self._scales[key].fill_(scale * layer.scaling)
                entries.setdefault(target, []).append((*self._weights[key], self._scales[key]))
        for target, (hook, _) in self._hooks.items():
            hook.entries = []
        for target, items in entries.items():
            if target not in self._hooks:
                hook = _Beside()
                self._hooks[target] = (hook, modules[target].register_forward_hook(hook))
            self._hooks[target][0].entries = items
        used = {lora.digest for lora, _ in loras}  # drop weights of LoRAs no longer active
        for key in [k for k in self._weights if k[0] not in used]:
            del self._weights[key], self._scales[key]
        self.active = wanted
        return changed

    def clear(self) -> None:
        for hook, handle in self._hooks.values():
            handle.remove()
        self._hooks.clear()
        self._weights.clear()
        self._scales.clear()
        self.active = ()
