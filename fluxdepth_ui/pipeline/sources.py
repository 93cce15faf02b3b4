"""Where the model comes from (Hub id, local folder, FLUX.1-dev + Depth LoRA, tiny-random) and loading its parts.

Every failure a user can fix becomes a `ModelSourceError` with one line that says what to do: gated repo / licence,
offline with nothing cached, no disk space, a folder that is not a FLUX control pipeline.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch

from ..atomic import exclusive
from ..defaults import DEFAULT_MODEL  # noqa: F401 - re-exported
from .errors import ModelSourceError
from .variants import QuantizedCache, Variant, quantize_component

log = logging.getLogger(__name__)

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
DEPTH_LORA = "black-forest-labs/FLUX.1-Depth-dev-lora"
TINY = "tiny-random"
DEFAULT_LORA_SCALE = 0.85  # black-forest-labs/flux cli_control.py default for the depth LoRA
ALIASES = {
    "depth-dev": (DEFAULT_MODEL, None),
    "flux-dev+depth-lora": (FLUX_DEV, DEPTH_LORA),
}
# Bytes a download needs: transformer 23.8 GB + T5 9.5 GB + CLIP 0.25 GB + VAE 0.17 GB (diffusers layout, bf16).
DOWNLOAD_BYTES = {DEFAULT_MODEL: 34_000_000_000, FLUX_DEV: 34_000_000_000}
PIPELINE_FILES = ["*.json", "*.txt", "*.model", "transformer/*", "vae/*", "text_encoder/*", "text_encoder_2/*",
                  "tokenizer/*", "tokenizer_2/*", "scheduler/*"]


@dataclass(frozen=True)
class ModelSource:
    model: str = DEFAULT_MODEL  # Hub id, local diffusers folder, or "tiny-random"
    revision: str | None = None  # branch, tag or commit on the Hub
    depth_lora: str | None = None  # Depth LoRA (Hub id or local path) fused into a FLUX.1-dev base
    depth_lora_scale: float = DEFAULT_LORA_SCALE
    seed: int = 0  # tiny-random only

    @property
    def kind(self) -> str:
        if self.model == TINY:
            return "tiny"
        return "local" if os.path.isdir(os.path.expanduser(self.model)) else "hub"

    @property
    def key(self) -> str:
        base = f"tiny-random-seed{self.seed}" if self.kind == "tiny" else self.model.rstrip("/")
        if self.depth_lora:
            base += f"+{self.depth_lora}@{self.depth_lora_scale:g}"
        return base

    @property
    def public_key(self) -> str:
        """The key as results record it: a local folder by its own name, never the host's path (API visitors of a
        shared server read result metadata). Shot keys and caches keep the full `key`."""
        if self.kind != "local":
            return self.key
        return self.key.replace(self.model.rstrip("/"), os.path.basename(self.model.rstrip("/")), 1)

    @property
    def short_name(self) -> str:
        """For messages visitors see: a Hub id, a local folder's own name (never its path), or tiny-random."""
        if self.kind == "tiny":
            return TINY
        return os.path.basename(self.model.rstrip("/")) if self.kind == "local" else self.model

    @property
    def label(self) -> str:
        if self.kind == "tiny":
            from .tiny import TINY_NOTICE

            return TINY_NOTICE
        text = self.model + (f"@{self.revision}" if self.revision else "")
        return text + (f" + {self.depth_lora} (scale {self.depth_lora_scale:g})" if self.depth_lora else "")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.kind == "tiny" else torch.bfloat16


def parse_model_source(text: str | None, revision: str | None = None, depth_lora: str | None = None,
                       depth_lora_scale: float = DEFAULT_LORA_SCALE) -> ModelSource:
    text = (text or DEFAULT_MODEL).strip()
    if text in ALIASES:
        text, alias_lora = ALIASES[text]
        depth_lora = depth_lora or alias_lora
    if text != TINY and not text.startswith((".", "/", "~")) and text.count("/") != 1 and not os.path.isdir(text):
        raise ModelSourceError(
            f"model {text!r} is neither a Hub id (owner/name), an existing folder, nor tiny-random; "
            f"the default is {DEFAULT_MODEL}"
        )
    if text.startswith(("/", ".", "~")) and not os.path.isdir(os.path.expanduser(text)):
        raise ModelSourceError(f"model folder {text} does not exist; pass a diffusers folder or a Hub id")
    return ModelSource(os.path.expanduser(text) if text.startswith("~") else text, revision, depth_lora,
                       depth_lora_scale)


@dataclass
class LoadedModel:
    components: dict
    revision: str  # resolved commit (Hub), "local" or "tiny"
    notes: list[str] = field(default_factory=list)


ProgressFn = Callable[[float, str], None]
T = TypeVar("T")


def _noop(fraction: float, message: str) -> None:
    pass


# What `load_model` asks before it reads a quantized cache: given the components (a cached one still a skeleton on the
# meta device, its sizes known), a function (component, module) -> where each of its tensors goes as it is read
# (variants.TensorHome). The manager makes its memory plan there (pipeline/manager.py, budget.tensor_homes).
PlanHomes = Callable[[dict], Callable[[str, torch.nn.Module], object]]

# Held while a model is built: transformers' from_pretrained switches the process's default dtype and accelerate's
# init_empty_weights patches nn.Module for as long as they run. Two builds on two threads (the depth estimator's
# beside the pipeline's, in the app) could leave either switch in place for good, and every later image of the
# process would differ (tests/test_pipeline.py). Reentrant: a build that falls back to another build.
MODEL_BUILDING = threading.RLock()


def load_model(source: ModelSource, variant: Variant, cache: QuantizedCache, progress: ProgressFn = _noop,
               token: str | None = None, quantize_on: torch.device | None = None,
               plan_homes: PlanHomes | None = None) -> LoadedModel:
    """Load every component, with the variant's quantization applied (from the cache when it matches).

    On the CPU, unless `plan_homes` is given: then the weights of a cached component, and of a full-precision
    transformer or T5 from the model folder (`read_folder_to_homes`), are read last, each tensor straight to where
    `plan_homes` says (a GPU, pinned host memory): no host copy of the weights that live on the GPU.
    `quantize_on`: the GPU that quantizes (block by block) when there is no cache yet; None quantizes on the CPU.
    One build at a time in the process (MODEL_BUILDING)."""
    with MODEL_BUILDING:
        return _load_model(source, variant, cache, progress, token, quantize_on, plan_homes)


def _load_model(source: ModelSource, variant: Variant, cache: QuantizedCache, progress: ProgressFn,
                token: str | None, quantize_on: torch.device | None, plan_homes: PlanHomes | None) -> LoadedModel:
    if source.kind == "tiny":
        from .tiny import build_tiny_components

        progress(0.1, "building tiny-random components")
        components = build_tiny_components(source.seed, source.dtype)
        loaded = LoadedModel(components, "tiny", [])
        _quantize_in_place(loaded, source, variant, cache, source_id=f"tiny-seed{source.seed}", progress=progress,
                           quantize_on=quantize_on)
        return loaded

    _prefetch(_files_to_read(source, variant, cache))  # read ahead while diffusers and transformers import
    folder, revision = _resolve_folder(source, token, progress)
    _check_pipeline_folder(folder, source)
    source_id = revision if source.kind == "hub" else _folder_fingerprint(folder)
    overrides: dict = {}
    notes: list[str] = []
    skeletons: dict[str, torch.nn.Module] = {}  # components whose weights are read once the plan is made
    fills: dict[str, Callable] = {}  # (skeleton, its tensors' home) -> the component with its weights, or None
    fallbacks: dict[str, Callable] = {}  # () -> the component loaded another way, where its fill returned None
    progress(0.3, f"preparing {variant.name} weights")
    if variant.transformer or variant.text_encoder_2:
        entries = _cache_entries(folder, source, variant, cache, source_id, token)
        for component, entry in entries.items():
            skeleton = _cached_skeleton(cache, entry, progress) if plan_homes is not None else None
            if skeleton is not None:
                skeletons[component] = overrides[component] = skeleton
                fills[component] = functools.partial(_filled, cache, entry, progress=progress, notes=notes)
                fallbacks[component] = functools.partial(_cached_or_quantized, cache, entry, progress, notes,
                                                         quantize_on)
            else:
                overrides[component] = _cached_or_quantized(cache, entry, progress, notes, quantize_on)
    if plan_homes is not None and read_folder_to_homes():
        for component in _full_precision_components(source, variant):
            files = _folder_weight_files(folder, component)
            if files:
                skeletons[component] = overrides[component] = _empty_component(component, _config(folder, component),
                                                                               source.dtype)
                fills[component] = functools.partial(_read_from_folder, folder, source, component, files,
                                                     progress=progress)
                fallbacks[component] = functools.partial(_load_full_component, folder, source, component, token)
    progress(0.6, "loading the remaining components")
    from diffusers import FluxControlPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # progress is reported through `progress`, once

    with _hub_errors(source):
        pipe = FluxControlPipeline.from_pretrained(folder, dtype=source.dtype, local_files_only=True, **overrides)
    if source.depth_lora and "transformer" not in overrides:
        progress(0.8, f"fusing {source.depth_lora}")
        _fuse_lora(pipe, source, token)
    components = dict(pipe.components)
    del pipe
    if skeletons:
        homes = plan_homes(components)
        # Side by side: read ahead, each read is a copy to the GPU or into pinned memory, bound by one core's copy
        # speed rather than the disk's (docs/benchmarks.md "Session 35").
        with ThreadPoolExecutor(max_workers=len(skeletons), thread_name_prefix="fluxdepth-read") as pool:
            reads = {component: pool.submit(fills[component], skeleton, homes(component, skeleton))
                     for component, skeleton in skeletons.items()}
            for component, read in reads.items():
                components[component] = read.result()
        # After the reads, one at a time on this thread: quantizing again and from_pretrained switch process-wide
        # state (MODEL_BUILDING says which), so never beside a read in another thread.
        for component in [c for c in skeletons if components[c] is None]:
            components[component] = fallbacks[component]()
    progress(0.95, "components ready")
    return LoadedModel(components, revision, notes)


# --- reading ahead -----------------------------------------------------------------------------------------------

PREFETCH_CHUNK = 64 << 20


def _files_to_read(source: ModelSource, variant: Variant, cache: QuantizedCache) -> list[str]:
    """The big files this load reads, in the order it reads them: the quantized caches that exist, and from the
    model's folder (a local one, or a Hub model's in the local Hugging Face cache) the weights of the components no
    cache replaces (the tokenizers, CLIP and the VAE are small)."""
    paths = []
    folders: list[str | None] = []  # the model's folder, looked up once when a component reads from it
    for component, weights in _quantizable(variant):
        cached = ""
        if weights:
            cached = os.path.join(_cache_folder(cache, source, component, weights), cache.WEIGHTS)
        if os.path.isfile(cached):
            paths.append(cached)
            continue
        if not folders:
            folders.append(source.model if source.kind == "local" else _cached_snapshot(source))
        if folders[0]:
            paths += _folder_weight_files(folders[0], component) or []
    return paths


def _cached_snapshot(source: ModelSource) -> str | None:
    """A Hub model's folder in the local Hugging Face cache, found without asking the Hub; None when it is not there
    (then the load downloads it, and there is nothing to read ahead)."""
    if source.kind != "hub":
        return None
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(source.model, revision=source.revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, or not all of it: the load says what is missing
        return None


def warm_up(source: ModelSource, variant: Variant, cache: QuantizedCache) -> None:
    """What a load can do before it is asked: set the files it will read reading (`_prefetch`) and import what it
    imports (about 7 s of a later start on the lent GPU machine, docs/benchmarks.md "Session 35"). Nothing is loaded
    and nothing is held: the file pages stay in the OS cache only while no program needs the memory."""
    if source.kind != "tiny":
        _prefetch(_files_to_read(source, variant, cache), for_next_load=True)
    from diffusers import FluxControlPipeline, FluxTransformer2DModel  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    if variant.transformer or variant.text_encoder_2:
        import optimum.quanto  # noqa: F401


_warmed: set[tuple] = set()  # (path, size, mtime) a warm-up read ahead for the next load: that load skips them
_warmed_lock = threading.Lock()


def _prefetch(paths: list[str], for_next_load: bool = False) -> None:
    """Read these files once in a background thread, so that they are in the page cache when the load reads them.

    A later start spends about 11 s importing diffusers and transformers before it reads 11-17 GB of weights
    (docs/benchmarks.md "Session 34"); the disk can work during the imports. Plain sequential reads: the kernel's
    own read-ahead hint (posix_fadvise WILLNEED) read only a few MB of a 2 GB file here. The reads wait for
    nothing and hold nothing: pages the kernel evicts before they are used are read again. `for_next_load`: a
    warm-up's reads, which the next load's own request skips."""
    fresh, total = [], 0
    with _warmed_lock:
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                fresh.append(path)  # the reader goes past it; the load itself reports a file it cannot read
                continue
            key = (path, st.st_size, st.st_mtime_ns)
            if not for_next_load and key in _warmed:
                _warmed.discard(key)  # read by the warm-up for this load
                continue
            if for_next_load:
                _warmed.add(key)
            fresh.append(path)
            total += st.st_size
    paths = fresh
    if not paths or total > _available_memory() // 2:  # pages evicted before use would be read twice
        return

    def read_all() -> None:
        buffer = bytearray(PREFETCH_CHUNK)
        for path in paths:
            try:
                with open(path, "rb", buffering=0) as fh:
                    while fh.readinto(buffer):
                        pass
            except OSError:
                continue  # the load itself reports a file it cannot read

    threading.Thread(target=read_all, name="fluxdepth-prefetch", daemon=True).start()


def _available_memory() -> int:
    """Bytes the kernel can give without swapping (MemAvailable; 0 where there is no /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- quantization with the cache ---------------------------------------------------------------------------------


def _quantizable(variant: Variant) -> tuple[tuple[str, str | None], ...]:
    """(component, its quanto weight type or None) for the components a tier may quantize, in load order."""
    return ("transformer", variant.transformer), ("text_encoder_2", variant.text_encoder_2)


def _cache_folder(cache: QuantizedCache, source: ModelSource, component: str, weights: str) -> str:
    return cache.folder(source.key, source.revision or "default", component, weights)


def _fingerprint(cache: QuantizedCache, source: ModelSource, revision_id: str, component: str, weights: str,
                 config: dict) -> tuple[str, dict]:
    return _cache_folder(cache, source, component, weights), cache.fingerprint(
        source.key, source.revision or "default", revision_id, component, weights, config)


def _component_config(module: torch.nn.Module) -> dict:
    config = getattr(module, "config", None)
    if config is None:
        return {}
    return dict(config) if not hasattr(config, "to_dict") else config.to_dict()


@dataclass(frozen=True)
class _CacheEntry:
    """One quantized component's cache entry, and how to make the component when the entry is missing."""
    folder: str
    fingerprint: dict
    build_empty: Callable[[], torch.nn.Module]  # the module on the meta device (the cache's weights go into it)
    build_full: Callable[[], torch.nn.Module]  # the full-precision module, to quantize
    component: str
    weights: str  # quanto weight type: "qint8", "qint4"


def _quantize_in_place(loaded: LoadedModel, source: ModelSource, variant: Variant, cache: QuantizedCache,
                       source_id: str, progress: ProgressFn, quantize_on: torch.device | None = None) -> None:
    """tiny-random: the components already exist; quantize (or take the cache) for each quantized component."""
    for component, weights in _quantizable(variant):
        if not weights:
            continue
        module = loaded.components[component]
        folder, fp = _fingerprint(cache, source, source_id, component, weights, _component_config(module))
        entry = _CacheEntry(folder, fp, lambda m=module: _empty_like(m, source.dtype), lambda m=module: m, component,
                            weights)
        loaded.components[component] = _cached_or_quantized(cache, entry, progress, loaded.notes, quantize_on)


def _waiting(entry: _CacheEntry, progress: ProgressFn) -> Callable[[], None]:
    return lambda: progress(0.4, f"waiting for another process quantizing {entry.component} to {entry.weights} "
                                 "(then loading its cache)")


def _reading(entry: _CacheEntry, progress: ProgressFn) -> None:
    progress(0.35, f"reading {entry.component} ({entry.weights}) from the quantized cache")


def _cached_or_quantized(cache: QuantizedCache, entry: _CacheEntry, progress: ProgressFn, notes: list[str],
                         quantize_on: torch.device | None = None) -> torch.nn.Module:
    """The cached quantized component, else quantize the full one and cache it. Under the entry's lock: a second
    process starting the same tier waits for the first one's cache instead of quantizing again."""
    with exclusive(entry.folder, on_wait=_waiting(entry, progress)):
        if os.path.exists(os.path.join(entry.folder, cache.FINGERPRINT)):
            _reading(entry, progress)
        module = cache.load(entry.folder, entry.fingerprint, entry.build_empty)
        if module is not None:
            notes.append(f"{entry.component}: {entry.weights} weights from the cache")
            return module
        where = f" on {quantize_on}" if quantize_on is not None else ""
        what = (f"quantizing {entry.component} to {entry.weights}{where} (first start of this tier; cached "
                "afterwards)")
        progress(0.4, what)
        module = entry.build_full()
        quantize_component(module, entry.weights, entry.component, quantize_on,
                           on_block=lambda done, total: progress(0.4, f"{what}: block {done} of {total}"))
        cache.save(entry.folder, entry.fingerprint, module)
        return module


def _cached_skeleton(cache: QuantizedCache, entry: _CacheEntry, progress: ProgressFn) -> torch.nn.Module | None:
    """The cached component's skeleton (meta device, its sizes known, no weights read), or None without a cache."""
    with exclusive(entry.folder, on_wait=_waiting(entry, progress)):
        return cache.open(entry.folder, entry.fingerprint, entry.build_empty)


def _filled(cache: QuantizedCache, entry: _CacheEntry, skeleton: torch.nn.Module, home, *, progress: ProgressFn,
            notes: list[str]) -> torch.nn.Module | None:
    """The skeleton with the cached weights read into it, each tensor to its home; None where the cache turns out
    unreadable (it is removed; the caller quantizes the component again, on the host, as without a plan)."""
    with exclusive(entry.folder, on_wait=_waiting(entry, progress)):
        _reading(entry, progress)
        module = cache.fill(entry.folder, skeleton, home)
        if module is not None:
            notes.append(f"{entry.component}: {entry.weights} weights from the cache")
        return module


def _empty_like(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A module of the same class and config with its parameters on the meta device (no memory)."""
    return _empty_model(type(module), module.config, dtype)


def _empty_model(cls, config, dtype: torch.dtype) -> torch.nn.Module:
    """`cls` made from `config` on the meta device, in `dtype`: its sizes known, no memory."""
    from accelerate import init_empty_weights

    with init_empty_weights(), _quiet_dtype_cast():
        if hasattr(cls, "from_config") and hasattr(config, "keys"):  # diffusers model
            return cls.from_config(config).to(dtype)
        return cls(config).to(dtype)  # transformers model


def _cache_entries(folder: str, source: ModelSource, variant: Variant, cache: QuantizedCache, source_id: str,
                   token: str | None) -> dict[str, _CacheEntry]:
    """The cache entry of each component this tier quantizes, in load order."""
    out = {}
    for component, weights in _quantizable(variant):
        if not weights:
            continue
        config = _config(folder, component)
        if component == "transformer" and source.depth_lora:
            # The Depth LoRA widens x_embedder 64 -> 128; the output stays what the base had (None = in_channels).
            config = {**config, "in_channels": 128, "out_channels": config.get("out_channels") or config["in_channels"]}
        cache_folder, fp = _fingerprint(cache, source, source_id, component, weights, config)
        # Cast on the meta device: kept-precision layers (proj_out, x_embedder, ...) then load as the pipeline's
        # dtype, and quanto's scales come out in it too.
        out[component] = _CacheEntry(cache_folder, fp,
                                     functools.partial(_empty_component, component, config, source.dtype),
                                     functools.partial(_load_full_component, folder, source, component, token),
                                     component, weights)
    return out


def _config(folder: str, component: str) -> dict:
    with open(os.path.join(folder, component, "config.json")) as fh:
        return json.load(fh)


def _empty_component(component: str, config: dict, dtype: torch.dtype) -> torch.nn.Module:
    """The transformer or T5 of this config (the folder's config.json) as `_empty_model` makes it."""
    from diffusers import FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    if component == "transformer":
        return _empty_model(FluxTransformer2DModel, config, dtype)
    return _empty_model(T5EncoderModel, T5Config.from_dict(config), dtype)


# --- full-precision components read from the model folder into their homes -------------------------------------

# The weight files diffusers (the transformer) and transformers (T5) load from a component's folder, without a
# variant infix: one file, or an index of shards.
_FOLDER_WEIGHTS = {
    "transformer": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"),
    "text_encoder_2": ("model.safetensors", "model.safetensors.index.json"),
}


def read_folder_to_homes() -> bool:
    """Whether a full-precision transformer and T5 are read from the model folder straight to their homes, like a
    quantized cache; FLUXDEPTH_READ_FOLDER=0 loads them through `from_pretrained` on the host first, as before.
    Measured on the lent H100: bf16's peak host memory 1.99 GiB fully resident, 27.5 GiB under a 12 GiB budget
    (docs/benchmarks.md "Session 36", docs/vram.md)."""
    return os.environ.get("FLUXDEPTH_READ_FOLDER", "1") != "0"


def _full_precision_components(source: ModelSource, variant: Variant) -> list[str]:
    """The components this tier takes from the folder as they are: T5 unless quantized, the transformer unless
    quantized (fp8 quantizes it on the GPU from the host copy) or made by fusing the Depth LoRA."""
    out = []
    if variant.transformer is None and not variant.fp8 and not source.depth_lora:
        out.append("transformer")
    if variant.text_encoder_2 is None and source.dtype != torch.float16:  # fp16 keeps T5's `wo` in fp32
        out.append("text_encoder_2")
    return out


def _folder_weight_files(folder: str, component: str) -> list[str] | None:
    """The component's safetensors files in the folder, or None (then it loads through from_pretrained)."""
    single, index = _FOLDER_WEIGHTS[component]
    where = os.path.join(folder, component)
    try:
        if os.path.isfile(os.path.join(where, index)):
            with open(os.path.join(where, index)) as fh:
                names = sorted(set(json.load(fh)["weight_map"].values()))
            files = [os.path.join(where, name) for name in names]
            return files if all(os.path.isfile(f) for f in files) else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    path = os.path.join(where, single)
    return [path] if os.path.isfile(path) else None


def _read_from_folder(folder: str, source: ModelSource, component: str, files: list[str], skeleton: torch.nn.Module,
                      home, *, progress: ProgressFn) -> torch.nn.Module | None:
    """The skeleton with the folder's weights read into it, each tensor cast to the pipeline's dtype and put at its
    home (`variants.read_tensors`), as diffusers' and transformers' `from_pretrained` would load it but without a
    host copy of what lives on the GPU. None where the files do not match the skeleton exactly: the caller loads the
    component through `from_pretrained` after all (on the host, placed afterwards)."""
    from safetensors import SafetensorError

    from .variants import meta_tensor_names, read_tensors

    progress(0.35, f"reading {component} from the model folder")
    try:
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(read_tensors(path, home, dtype=source.dtype))
        unexpected = skeleton.load_state_dict(state, strict=False, assign=True).unexpected_keys
        del state
        if hasattr(skeleton, "tie_weights"):  # transformers: T5's encoder.embed_tokens is its `shared` embedding
            skeleton.tie_weights()
        left_empty = meta_tensor_names(skeleton)
        if unexpected or left_empty:
            raise ValueError(f"unexpected {unexpected[:2]}, not in the files {left_empty[:2]}")
    except torch.OutOfMemoryError:
        raise  # the card cannot hold what the plan put there: the manager reports it (from_pretrained would not help)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        log.warning("reading %s from %s failed (%s): loading it with from_pretrained", component, folder,
                    " ".join(str(exc).split())[:300])
        return None
    skeleton.eval()
    return skeleton


class _quiet_dtype_cast:
    """diffusers warns on any `.to(dtype)` of a model; casting an empty meta model is exactly what we mean."""

    def __enter__(self):
        self._logger = logging.getLogger("diffusers.models.modeling_utils")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False


def _load_full_component(folder: str, source: ModelSource, component: str, token: str | None) -> torch.nn.Module:
    from diffusers import FluxControlPipeline, FluxTransformer2DModel
    from transformers import T5EncoderModel

    with _hub_errors(source):
        if component == "text_encoder_2":
            return T5EncoderModel.from_pretrained(folder, subfolder=component, dtype=source.dtype)
        if not source.depth_lora:
            return FluxTransformer2DModel.from_pretrained(folder, subfolder=component, dtype=source.dtype)
        pipe = FluxControlPipeline.from_pretrained(folder, dtype=source.dtype, local_files_only=True,
                                                   text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                   tokenizer_2=None, vae=None)
    _fuse_lora(pipe, source, token)
    return pipe.transformer


def _fuse_lora(pipe, source: ModelSource, token: str | None) -> None:
    """Fuse the Depth LoRA into the base weights (quanto cannot follow the x_embedder 64 -> 128 expansion)."""
    with _hub_errors(ModelSource(source.depth_lora, None)):
        pipe.load_lora_weights(source.depth_lora, token=token, adapter_name="depth")
    pipe.fuse_lora(lora_scale=source.depth_lora_scale, components=["transformer"])
    pipe.unload_lora_weights()
    if pipe.transformer.config.in_channels != 128:
        raise ModelSourceError(
            f"{source.depth_lora} did not turn {source.model} into a depth model (x_embedder takes "
            f"{pipe.transformer.config.in_channels} channels, 128 expected); use {DEPTH_LORA}"
        )


# --- finding the files -------------------------------------------------------------------------------------------


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is set now (huggingface_hub reads it once, at import; a launcher or a test may set it
    later)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def from_cache_or_hub(load: Callable[[bool], T]) -> T:
    """`load(local_files_only)`: from the local Hugging Face cache first (instant, no network), then from the Hub
    unless offline. A failure raises the last attempt's error. One build at a time in the process (MODEL_BUILDING)."""
    with MODEL_BUILDING:
        try:
            return load(True)
        except Exception:  # noqa: BLE001 - not cached (or unreadable there): the Hub, when it may be asked
            if hub_offline():
                raise
            return load(False)


def _resolve_folder(source: ModelSource, token: str | None, progress: ProgressFn) -> tuple[str, str]:
    if source.kind == "local":
        return source.model, "local"
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    progress(0.05, f"looking for {source.model} (downloads on first use)")
    if not constants.HF_HUB_OFFLINE:  # offline nothing is downloaded: the cache lookup's own message is the right one
        _check_disk(source, constants.HF_HUB_CACHE)
    with _hub_errors(source):
        folder = DiffusionPipeline.download(
            source.model, revision=source.revision, token=token, local_files_only=constants.HF_HUB_OFFLINE,
        )
    return folder, os.path.basename(os.path.normpath(folder))


def _check_disk(source: ModelSource, cache_dir: str) -> None:
    """Refuse a download that cannot fit before it fills the disk halfway."""
    need = DOWNLOAD_BYTES.get(source.model)
    if need is None or _is_cached(source, cache_dir):
        return
    probe = cache_dir
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise ModelSourceError(
            f"not enough disk space to download {source.model}: it needs about {need / 1e9:.0f} GB in {cache_dir}, "
            f"{free / 1e9:.1f} GB are free; free space or set HF_HOME to a bigger disk"
        )


def _is_cached(source: ModelSource, cache_dir: str) -> bool:
    repo_folder = os.path.join(cache_dir, "models--" + source.model.replace("/", "--"), "snapshots")
    return os.path.isdir(repo_folder) and bool(os.listdir(repo_folder))


def _check_pipeline_folder(folder: str, source: ModelSource) -> None:
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise ModelSourceError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); save one with "
            "pipe.save_pretrained(folder) or pass a Hub id"
        )
    with open(index) as fh:
        class_name = json.load(fh).get("_class_name", "")
    try:
        with open(os.path.join(folder, "transformer", "config.json")) as fh:
            in_channels = json.load(fh).get("in_channels")
    except OSError:
        in_channels = None
    if "Flux" not in class_name or in_channels is None:
        raise ModelSourceError(f"{folder} holds a {class_name or 'unknown'} pipeline, not FLUX; pass a FLUX.1 folder")
    if in_channels == 64 and not source.depth_lora:
        raise ModelSourceError(
            f"{folder} is FLUX.1-dev (text-to-image, 64 input channels), not a depth model; use "
            f"{DEFAULT_MODEL}, or add the depth LoRA (--depth-lora {DEPTH_LORA})"
        )
    if in_channels not in (64, 128):
        raise ModelSourceError(f"{folder}: transformer takes {in_channels} channels; FLUX.1-Depth-dev takes 128")


def _folder_fingerprint(folder: str) -> str:
    """Name, size and mtime of every weight file: changes when the folder's weights are replaced."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith((".safetensors", ".bin", ".json")):
                st = os.stat(os.path.join(root, name))
                h.update(f"{os.path.relpath(os.path.join(root, name), folder)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return "local-" + h.hexdigest()[:16]


class _hub_errors:
    """Translate hub/diffusers loading failures into one actionable line."""

    def __init__(self, source: ModelSource):
        self.source = source

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ModelSourceError):
            return False
        message = translate_load_error(exc, self.source)
        if message is None:
            return False
        raise ModelSourceError(message) from exc


def translate_load_error(exc: BaseException, source: ModelSource) -> str | None:
    from huggingface_hub import errors as hub

    chain = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    name = source.model
    page = f"https://huggingface.co/{name}"
    for err in chain:
        if isinstance(err, hub.GatedRepoError):
            return (f"{name} is gated: accept its licence at {page} while logged in, then log in here with "
                    "`hf auth login` or set HF_TOKEN")
        if isinstance(err, hub.RevisionNotFoundError):
            return f"revision {source.revision!r} does not exist for {name}; use a branch, tag or commit of {page}"
        if isinstance(err, hub.RepositoryNotFoundError):
            return (f"{name} was not found on the Hub (check the id), or it is private and you are not logged in "
                    "(`hf auth login` or HF_TOKEN)")
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return f"the disk filled up while downloading {name}; free space or set HF_HOME to a bigger disk"
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)) for e in chain) or (
        "not fully cached" in text or "outgoing traffic has been disabled" in text or "offline" in text.lower()
    ):
        return (f"{name} is not in the local Hugging Face cache and this machine is offline: on a connected "
                f"machine run `hf download {name}` (about 34 GB; accept the licence at {page} first) and copy the "
                "cache folder (HF_HOME), or pass --model /path/to/a/saved/pipeline")
    if "401" in text or "403" in text or "Unauthorized" in text:
        return f"access to {name} was refused: log in with `hf auth login` or set HF_TOKEN, and accept {page}"
    return None
