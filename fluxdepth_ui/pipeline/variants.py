"""Precision tiers (bf16, qint8, qint4, fp8) and the on-disk cache of quantized weights.

optimum-quanto quantizes (its scales, groups and rounding); the result is then held by the dense-path linears of
`dense.py`, which run at near bf16 speed on big inputs. The cache stores that layout as a plain safetensors state
dict plus `layout.json` (which modules are int8 / int4 and their shapes), keyed by model, revision, component and
weight type, with a fingerprint of everything the weights depend on. A cache whose fingerprint does not match is
rebuilt, never silently used. Loading builds the module on the meta device (no full-precision weights in memory),
swaps in empty dense linears and assigns the tensors: seconds, where quanto's `requantize` of qint4 took minutes.

fp8 (Hopper / Ada GPUs) goes through torchao on the GPU at load time; it is not cached (quantizing takes ~1 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import types
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import torch

from .speed import BLOCK_LISTS

# Where a tensor read from a cache goes: a device, PINNED (page-locked host memory, what diffusers' streams copy from,
# budget.py), or a function of the tensor's name giving one of those (a memory plan's homes, budget.tensor_homes).
PINNED = "pinned"
TensorHome = Union[str, torch.device, Callable[[str], Union[str, torch.device]]]

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 1 was quanto's own serialization


@dataclass(frozen=True)
class Variant:
    name: str
    transformer: str | None  # quanto weight type for the transformer, None = unquantized
    text_encoder_2: str | None  # the T5 encoder
    label: str  # what the UI shows next to the choice
    fp8: bool = False  # transformer in fp8 through torchao, quantized on the GPU at load (Ada / Hopper only)


# Labels say what each tier is for; the app adds the step time measured on the machine it runs on
# (pipeline/timings.py). Figures from the lent H100/H200 are in docs/benchmarks.md, "Tiers".
VARIANTS: dict[str, Variant] = {
    "bf16": Variant("bf16", None, None, "bf16 · best quality, most memory"),
    "qint8": Variant("qint8", "qint8", "qint8", "qint8 · about half the memory"),
    "qint4": Variant("qint4", "qint4", "qint8", "qint4 · least memory"),
    "fp8": Variant("fp8", None, "qint8", "fp8 · fastest (Ada/Hopper), compiles once", fp8=True),
}

# Modules kept in full precision: the input/output projections and the final modulation are small and sensitive.
# quanto matches these names exactly (fnmatch on the module path), so a container name such as "norm_out" would not
# exclude its Linear child: name the Linear itself.
TRANSFORMER_EXCLUDE = ("proj_out", "x_embedder", "context_embedder", "norm_out.linear")


from ..defaults import VARIANT_NAMES  # noqa: E402

assert tuple(VARIANTS) == VARIANT_NAMES, "defaults.VARIANT_NAMES lists the tiers of VARIANTS"


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        from .errors import PipelineError

        raise PipelineError(f"unknown variant {name!r}; choose one of: {', '.join(VARIANTS)}") from None


def use_torch_unpack() -> None:
    """Route quanto's int4 unpack through plain PyTorch, on the CPU and on CUDA.

    quanto otherwise JIT-builds a C++ (CPU) or CUDA extension on first qint4 use (~50 s on the CPU, minutes with
    nvcc; needs a compiler and writes into site-packages, which fails on read-only installs). This function is
    bit-identical to those kernels. The CUDA extension's other kernels (AWQ, Marlin) serve float16 and fp8 weights,
    which no tier here makes (bf16 scales), so a call to one would fail loudly instead of building.
    """
    from optimum.quanto.library.extensions import cpp as qcpp
    from optimum.quanto.library.extensions.extension import get_extension, is_extension_available

    def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:  # split each byte into 8 // bits values, low first
        mask = [(packed & (2 ** (bits * (i + 1)) - 1)) >> (bits * i) for i in range(8 // bits)]
        return torch.cat(mask).to(torch.uint8)

    extensions = [qcpp.ext] + ([get_extension("quanto_cuda")] if is_extension_available("quanto_cuda") else [])
    for extension in extensions:
        if extension._lib is None:
            extension._lib = types.SimpleNamespace(unpack=unpack)


def quantize_module(module: torch.nn.Module, weights: str, exclude: tuple[str, ...] = ()) -> torch.nn.Module:
    from optimum.quanto import freeze, qint4, qint8, quantize

    qtype = {"qint8": qint8, "qint4": qint4}[weights]
    if weights == "qint4":
        use_torch_unpack()
    quantize(module, weights=qtype, exclude=list(exclude) or None)
    freeze(module)
    return module


# The block lists of each quantized component: on a GPU they are quantized one block at a time (quantize_component).
QUANTIZED_BLOCK_LISTS = {"transformer": BLOCK_LISTS, "text_encoder_2": ("encoder.block",)}


def quantize_component(module: torch.nn.Module, weights: str, component: str,
                       device: torch.device | None = None,
                       on_block: Callable[[int, int], None] | None = None) -> torch.nn.Module:
    """quanto quantizes, then the dense-path linears take its tensors (same values, faster at FLUX sizes).

    With a `device`, each block of the component's block lists goes there, is quantized and comes back, one at a
    time: the card holds one full-precision block at most. quanto's qint4 on the CPU took over 300 s for the FLUX
    transformer on the lent machine's 16 cores (docs/benchmarks.md, "Session 34"). A block that does not fit the
    card (another program holds it) is finished on the CPU, and so is the rest. What is left outside the block
    lists (embedders, norms; a few MB) is quantized on the CPU. `on_block(done, total)` is told after each block.
    """
    from .dense import densify

    if device is not None:
        _quantize_blocks_on(module, weights, component, torch.device(device), on_block or (lambda done, total: None))
    quantize_module(module, weights, exclude_for(component))
    densify(module)
    return module


def _quantize_blocks_on(module: torch.nn.Module, weights: str, component: str, device: torch.device,
                        on_block: Callable[[int, int], None]) -> None:
    from optimum.quanto import freeze

    from .dense import densify
    from .placement import release_device_memory

    blocks = [block for path in QUANTIZED_BLOCK_LISTS.get(component, ()) for block in module.get_submodule(path)]
    for done, block in enumerate(blocks):
        try:
            block.to(device)
            quantize_module(block, weights)  # no exclusions apply inside a block (exclude_for names top-level layers)
            densify(block)
        except torch.OutOfMemoryError:
            block.to("cpu")
            freeze(block)  # whatever quanto wrapped before the card ran out, quantized here instead
            densify(block)
            release_device_memory()
            log.warning("quantizing %s: the GPU ran out of memory; the other blocks are quantized on the CPU "
                        "(slower; close other GPU programs to speed up a first start)", component)
            return
        block.to("cpu")
        on_block(done + 1, len(blocks))
    release_device_memory()  # the allocator's cache would otherwise count as used when the memory plan is made


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
    # An entry's files; the fingerprint is written last, so an entry without one is incomplete and ignored.
    WEIGHTS = "weights.safetensors"
    FINGERPRINT = "fingerprint.json"

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
             device: TensorHome = "cpu") -> torch.nn.Module | None:
        """The cached module, or None when there is no cache or it does not match `expected` (then it is removed)."""
        module = self.open(folder, expected, build_empty)
        return None if module is None else self.fill(folder, module, device)

    def open(self, folder: str, expected: dict, build_empty: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """The cached module's skeleton on the meta device, in its cached layout: its sizes are known before a byte
        of its weights is read (the memory plan is made from them, pipeline/manager.py). None as for `load`."""
        meta_path = os.path.join(folder, self.FINGERPRINT)
        if not os.path.exists(meta_path):
            return None
        try:
            with open(meta_path) as fh:
                found = json.load(fh)
        except (OSError, ValueError):
            found = None
        if found != expected:
            return _reject(folder, "is stale (fingerprint differs)")
        from .dense import apply_dense_layout

        try:
            with open(os.path.join(folder, "layout.json")) as fh:
                layout = json.load(fh)
            module = build_empty()
            apply_dense_layout(module, layout["modules"], getattr(torch, layout["dtype"]))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            return _reject(folder, f"is unreadable ({exc})")
        return module

    def fill(self, folder: str, module: torch.nn.Module, home: TensorHome = "cpu") -> torch.nn.Module | None:
        """`open`'s skeleton with the cached weights read into it, each tensor straight to its home (`read_tensors`).
        None when the file cannot be read or does not fit (the entry is removed)."""
        from safetensors import SafetensorError

        try:
            state = read_tensors(os.path.join(folder, self.WEIGHTS), home)
            with open(os.path.join(folder, "aliases.json")) as fh:
                for alias, kept in json.load(fh).items():
                    state[alias] = state[kept]
        except (OSError, ValueError, KeyError, AttributeError, SafetensorError) as exc:
            return _reject(folder, f"is unreadable ({exc})")
        try:
            # strict: a tensor missing from the file would stay uninitialised memory; refuse that too.
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            return _reject(folder, f"does not fit the model ({' '.join(str(exc).split())[:300]})")
        left_empty = meta_tensor_names(module)
        if left_empty:  # a non-persistent buffer the state dict cannot carry: the module would not run
            return _reject(folder, f"cannot restore {left_empty[0]}")
        module.eval()
        return module

    def save(self, folder: str, fingerprint: dict, module: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        from .dense import dense_layout

        tmp = folder + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            state, aliases = _dedupe_tied(module.state_dict())
            save_file(state, os.path.join(tmp, self.WEIGHTS))
            with open(os.path.join(tmp, "aliases.json"), "w") as fh:
                json.dump(aliases, fh)
            with open(os.path.join(tmp, "layout.json"), "w") as fh:
                json.dump({"dtype": str(_module_dtype(module)).removeprefix("torch."),
                           "modules": dense_layout(module)}, fh)
            # The fingerprint is written last: a half-written cache has none and is ignored.
            with open(os.path.join(tmp, self.FINGERPRINT), "w") as fh:
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


def _module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The float dtype the module computes in (its scales and kept-precision layers)."""
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def meta_tensor_names(module: torch.nn.Module) -> list[str]:
    """The parameters and buffers of a skeleton its weights did not reach (still on the meta device)."""
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]


def _reject(folder: str, why: str) -> None:
    log.warning("quantized cache %s %s: rebuilding it", folder, why)
    shutil.rmtree(folder, ignore_errors=True)
    return None


READ_WINDOW = 256 << 20  # bytes of the file mapped at once while a cache is read (read_tensors)


def read_tensors(path: str, home: TensorHome, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, each in its own freshly allocated (aligned) memory at its home: a device,
    PINNED, or a function of the tensor's name giving one (a memory plan's homes, budget.tensor_homes). `dtype`:
    floating-point tensors are cast to it first, as `from_pretrained(dtype=...)` does.

    Tensors viewed straight out of the file sit at arbitrary byte offsets, and CPU matmul kernels take other code
    paths for unaligned memory: the last bits of the output would then differ from the run that wrote the cache.
    The file is mapped again for every READ_WINDOW bytes copied: the pages read through a mapping count in the
    process's resident memory until it is closed, so one mapping for the whole file held the cache's bytes twice
    (measured: 4.2 GiB peak for a 2 GiB file; docs/benchmarks.md "Session 33").
    """
    from safetensors import safe_open

    home_of = home if callable(home) else (lambda key: home)
    with safe_open(path, framework="pt", device="cpu") as fh:
        pending = list(fh.keys())
    pending.reverse()
    out = {}
    while pending:
        with safe_open(path, framework="pt", device="cpu") as fh:
            copied = 0
            pinned = []  # this window's tensors for pinned memory: one page-locked block for them all
            while pending and copied < READ_WINDOW:
                key = pending.pop()
                tensor = fh.get_tensor(key)
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                where = home_of(key)
                if where == PINNED:
                    pinned.append((key, tensor))
                else:
                    out[key] = _copy_home(tensor, where)
                copied += tensor.numel() * tensor.element_size()
                del tensor
            out.update(_pinned_copies(pinned))
            del pinned
    return out


PAGE = 4096
PINNED_ALIGN = 512  # bytes between tensors in one pinned block: every dtype's alignment, and the copy engine's


def _pinned_copies(items: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Each tensor copied into one page-locked block of exactly their size (`_registered_host_block`); per tensor
    through PyTorch's pinned allocator where that block cannot be had. That allocator rounds every allocation up to
    a power of two (a 36 MiB weight holds 64 MiB), which left a later start under a budget 1.5-2.2 GiB of host memory
    over the streamed weights + 4 GiB (docs/benchmarks.md "Session 35")."""
    if not items:
        return {}
    offsets, total = [], 0
    for _key, tensor in items:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // PINNED_ALIGN) * PINNED_ALIGN
    block = _registered_host_block(total)
    if block is None:
        return {key: _copy_home(tensor, PINNED) for key, tensor in items}
    out = {}
    for (key, tensor), offset in zip(items, offsets):
        size = tensor.numel() * tensor.element_size()
        view = block[offset:offset + size].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        out[key] = view
    return out


class _RegisteredHostMemory(np.ndarray):
    """Host memory page-locked with cudaHostRegister, unregistered when the last tensor over it goes (the tensors
    hold it through `torch.frombuffer`; `__del__` runs before numpy frees the memory)."""

    def __del__(self):
        if getattr(self, "registered", False):
            try:
                torch.cuda.cudart().cudaHostUnregister(self.ctypes.data)
            except Exception:  # noqa: BLE001 - at interpreter exit CUDA may be gone; the process frees it anyway
                pass


def _registered_host_block(nbytes: int) -> torch.Tensor | None:
    """`nbytes` of page-locked host memory as a uint8 tensor (CUDA copies from it without staging, and
    `Tensor.is_pinned()` holds for it, so diffusers' streaming takes it as it is), or None where CUDA cannot
    register it."""
    if not torch.cuda.is_available():
        return None
    # Whole pages of its own: a page shared with other memory could be registered twice, which CUDA refuses.
    size = -(-max(nbytes, 1) // PAGE) * PAGE
    raw = np.empty(size + PAGE, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE
    memory = raw[start:start + size].view(_RegisteredHostMemory)
    if int(torch.cuda.cudart().cudaHostRegister(memory.ctypes.data, memory.nbytes, 0)) != 0:
        log.info("cudaHostRegister refused %d bytes: pinning tensor by tensor", memory.nbytes)
        return None
    memory.registered = True
    return torch.frombuffer(memory, dtype=torch.uint8)[:nbytes]


def _copy_home(tensor: torch.Tensor, home: str | torch.device) -> torch.Tensor:
    if home == PINNED:
        return tensor.pin_memory()  # a copy into page-locked memory (diffusers takes it as it is)
    device = torch.device(home)
    return tensor.clone() if device.type == "cpu" else tensor.to(device)
