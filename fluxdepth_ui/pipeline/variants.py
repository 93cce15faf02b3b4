"""Precision tiers (bf16, qint8, qint4) with optimum-quanto, and the on-disk cache of quantized weights.

The cache holds quanto's own format (safetensors state dict + quantization map) keyed by model, revision, variant
and component, with a fingerprint of everything the weights depend on. A cache whose fingerprint does not match is
rebuilt, never silently used. Loading a cached component builds the module on the meta device (no full-precision
weights in memory) and lets quanto `requantize` it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import types
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Variant:
    name: str
    transformer: str | None  # quanto weight type for the transformer, None = unquantized
    text_encoder_2: str | None  # the T5 encoder
    label: str  # what the UI shows next to the choice (measured numbers are filled in by docs/benchmarks.md)


VARIANTS: dict[str, Variant] = {
    "bf16": Variant("bf16", None, None, "full precision: best quality, ~33 GB of weights"),
    "qint8": Variant("qint8", "qint8", "qint8", "8-bit weights: ~half the memory, near-bf16 quality"),
    "qint4": Variant("qint4", "qint4", "qint8", "4-bit transformer: fits 12-16 GB cards"),
}

# Modules kept in full precision: the input/output projections and the final modulation are small and sensitive.
# quanto matches these names exactly (fnmatch on the module path), so a container name such as "norm_out" would not
# exclude its Linear child: name the Linear itself.
TRANSFORMER_EXCLUDE = ("proj_out", "x_embedder", "context_embedder", "norm_out.linear")


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        from .errors import PipelineError

        raise PipelineError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None


def use_torch_unpack() -> None:
    """Route quanto's CPU int4 unpack through plain PyTorch.

    quanto otherwise JIT-builds a C++ extension on first qint4 use (~50 s, needs g++ and ninja, and writes into
    site-packages, which fails on read-only installs). This function is bit-identical to that extension.
    """
    from optimum.quanto.library.extensions import cpp as qcpp

    def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:  # split each byte into 8 // bits values, low first
        mask = [(packed & (2 ** (bits * (i + 1)) - 1)) >> (bits * i) for i in range(8 // bits)]
        return torch.cat(mask).to(torch.uint8)

    if qcpp.ext._lib is None:
        qcpp.ext._lib = types.SimpleNamespace(unpack=unpack)


def quantize_module(module: torch.nn.Module, weights: str, exclude: tuple[str, ...] = ()) -> torch.nn.Module:
    from optimum.quanto import freeze, qint4, qint8, quantize

    qtype = {"qint8": qint8, "qint4": qint4}[weights]
    if weights == "qint4":
        use_torch_unpack()
    quantize(module, weights=qtype, exclude=list(exclude) or None)
    freeze(module)
    return module


def exclude_for(component: str) -> tuple[str, ...]:
    return TRANSFORMER_EXCLUDE if component == "transformer" else ()


# --- the on-disk cache -------------------------------------------------------------------------------------------


def default_cache_root() -> str:
    root = os.environ.get("FLUXDEPTH_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return os.path.join(base, "fluxdepth")


@dataclass(frozen=True)
class QuantizedCache:
    root: str

    def folder(self, model_key: str, revision: str, component: str, weights: str) -> str:
        # Keyed by component and weight type, not tier: qint8 and qint4 share one qint8 T5.
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model_key}@{revision}")
        return os.path.join(self.root, "quantized", safe, f"{component}-{weights}")

    @staticmethod
    def fingerprint(model_key: str, revision: str, source_id: str, component: str, weights: str,
                    config: dict) -> dict:
        import optimum.quanto

        config_text = json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True,
                                 default=str)
        return {
            "format": CACHE_FORMAT,
            "model": model_key,
            "revision": revision,
            "source": source_id,
            "component": component,
            "weights": weights,
            "exclude": list(exclude_for(component)),
            "quanto": optimum.quanto.__version__,
            "torch": torch.__version__.split("+")[0],
            "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        }

    def load(self, folder: str, expected: dict, build_empty: Callable[[], torch.nn.Module],
             device: str | torch.device = "cpu") -> torch.nn.Module | None:
        """The cached module, or None when there is no cache or it does not match `expected` (then it is removed)."""
        meta_path = os.path.join(folder, "fingerprint.json")
        if not os.path.exists(meta_path):
            return None
        try:
            with open(meta_path) as fh:
                found = json.load(fh)
        except (OSError, ValueError):
            found = None
        if found != expected:
            log.warning("quantized cache %s is stale (fingerprint differs): rebuilding it", folder)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        from optimum.quanto import requantize
        from safetensors.torch import load_file

        try:
            state = load_file(os.path.join(folder, "weights.safetensors"))
            with open(os.path.join(folder, "quantization_map.json")) as fh:
                qmap = json.load(fh)
            with open(os.path.join(folder, "aliases.json")) as fh:
                for alias, kept in json.load(fh).items():
                    state[alias] = state[kept]
        except (OSError, ValueError) as exc:
            log.warning("quantized cache %s is unreadable (%s): rebuilding it", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        if expected["weights"] == "qint4":
            use_torch_unpack()
        module = build_empty()
        requantize(module, state, qmap, device=torch.device(device))
        # requantize loads with strict=False: a key it did not get would stay uninitialised memory. Refuse that.
        missing = set(module.state_dict()) - set(state)
        if missing:
            log.warning("quantized cache %s lacks %d tensors (e.g. %s): rebuilding it", folder, len(missing),
                        sorted(missing)[0])
            shutil.rmtree(folder, ignore_errors=True)
            return None
        module.eval()
        return module

    def save(self, folder: str, fingerprint: dict, module: torch.nn.Module) -> None:
        from optimum.quanto import quantization_map
        from safetensors.torch import save_file

        tmp = folder + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            state, aliases = _dedupe_tied(module.state_dict())
            save_file(state, os.path.join(tmp, "weights.safetensors"))
            with open(os.path.join(tmp, "aliases.json"), "w") as fh:
                json.dump(aliases, fh)
            with open(os.path.join(tmp, "quantization_map.json"), "w") as fh:
                json.dump(quantization_map(module), fh)
            # The fingerprint is written last: a half-written cache has none and is ignored.
            with open(os.path.join(tmp, "fingerprint.json"), "w") as fh:
                json.dump(fingerprint, fh, indent=1)
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(os.path.dirname(folder), exist_ok=True)
            os.replace(tmp, folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.warning("could not write the quantized cache to %s (%s): the next start quantizes again", folder, exc)


def _dedupe_tied(state: dict) -> tuple[dict, dict]:
    """safetensors refuses tensors that share memory (T5's shared / embed_tokens): keep one, remember the alias."""
    kept: dict[tuple, str] = {}
    out, aliases = {}, {}
    for key, tensor in state.items():
        ident = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.stride())
        if tensor.numel() and ident in kept:
            aliases[key] = kept[ident]
            continue
        kept[ident] = key
        out[key] = tensor.contiguous()
    return out, aliases
