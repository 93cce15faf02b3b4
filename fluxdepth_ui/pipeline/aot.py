"""Ahead-of-time compiled transformer blocks: torch.export + AOTInductor packages kept in the cache folder.

Why (docs/fast-tier.md): torch.compile traces and compiles in every new process, so the fast tier's first image
waited minutes after every restart. FLUX's transformer is 19 double and 38 single blocks of two shapes. At the first
image of a size, block 0 of each kind is exported with the inputs it was called with and compiled by AOTInductor
into a package *without weights* (a few MB); every block of that kind then runs through it with its own weights
(`load_constants(..., user_managed=True)`: no copy). Packages are keyed by what makes compiled code valid (GPU,
torch, diffusers, tier, block config, input shapes, inductor options), so a later start loads them in seconds.

Style LoRAs run as forward hooks on the layers (loras.py), which a package cannot see: the manager leaves this path
for torch.compile while LoRAs are active (manager.py).

Never crash (issue 23): a package is loaded by the app only after it passed a run in a short-lived child process
(aot_check.py); the verdict is kept beside the package. A package that fails is never loaded; it is compiled again
with the next C++ compiler this machine has (on the lent H200 the image's `CXX` wrapper built shared objects that
crashed the loader, the system g++ built ones that ran), and when none passes, the machine is marked (`unusable.json`)
and every later start goes straight to torch.compile, with one line in the status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils import _pytree as pytree

from ..atomic import atomic_path, exclusive, write_text
from .speed import BLOCK_LISTS

log = logging.getLogger(__name__)

FORMAT = 1
# The package carries code only; each block's weights are handed to it at load (see the module docstring).
PACKAGE_OPTIONS = {"aot_inductor.package_constants_in_so": False}
# Inductor options that change the code it writes: part of the key, so a package built with other settings (torchao's
# fp8 config turns on coordinate-descent tuning for the process) is not taken for this one.
KEYED_INDUCTOR_OPTIONS = ("coordinate_descent_tuning", "max_autotune", "epilogue_fusion", "freezing")

Notify = Callable[[str], None]


CHECK_FAILED = "compiled code failed its check on this GPU: using torch.compile"
# Compilers tried after the configured one (inductor's `cpp.cxx`, which follows $CXX), in order.
FALLBACK_COMPILERS = ("/usr/bin/g++", "/usr/bin/clang++")


class AotUnavailable(RuntimeError):
    """This transformer cannot take the AOT path (the manager falls back to torch.compile)."""


class AotCheckFailed(AotUnavailable):
    """No package built here passed its check in a child process: AOTInductor is not safe on this machine."""


@dataclass(frozen=True)
class AotEvent:
    kind: str  # "compiled" or "loaded"
    block: str
    seconds: float


def aot_folder(cache_root: str) -> str:
    return os.path.join(cache_root, "aot")


def device_label(device: torch.device) -> str:
    """What compiled code depends on: the GPU model and its compute capability, or the CPU's vector ISA."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm{major}{minor}"
    return f"{device.type} {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"


def inputs_signature(args: tuple, kwargs: dict) -> str:
    """Shapes, dtypes and devices of the tensors, and the values of everything else: one package per signature."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    parts = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            parts.append(f"{tuple(leaf.shape)}:{leaf.dtype}:{leaf.device.type}")
        else:
            parts.append(repr(leaf))
    return "|".join(parts)


def configured_compiler() -> str:
    """The C++ compiler inductor would use ($CXX, else g++), as a path."""
    from torch._inductor import cpp_builder

    try:
        name = cpp_builder.get_cpp_compiler()
    except Exception:  # noqa: BLE001 - none found: the export fails later with inductor's own message
        name = os.environ.get("CXX", "g++")
    return shutil.which(name) or name


def compiler_candidates() -> list[str]:
    """The configured compiler, then the system's own ones that are other programs (a wrapper script in $CXX is one
    program, the /usr/bin/g++ it may wrap another)."""
    seen, out = set(), []
    for name in (configured_compiler(), *FALLBACK_COMPILERS):
        path = shutil.which(name)
        if path is None or os.path.realpath(path) in seen:
            continue
        seen.add(os.path.realpath(path))
        out.append(path)
    return out or [configured_compiler()]


def package_key(block_kind: str, signature: str, tier: str, block_config: dict, device: torch.device,
                compiler: str = "") -> dict:
    import diffusers

    inductor = torch._inductor.config
    return {
        "format": FORMAT,
        "compiler": compiler,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": device_label(device),
        "tier": tier,
        "block": block_kind,
        "config": block_config,
        "inputs": signature,
        "inductor": {name: getattr(inductor, name, None) for name in KEYED_INDUCTOR_OPTIONS},
    }


def _key_name(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _drop_none(kwargs: dict) -> dict:
    # `joint_attention_kwargs=None` and the like: an exported program takes tensors, not optional Python values.
    return {k: v for k, v in kwargs.items() if v is not None}


def _uses_tensor_subclasses(module: torch.nn.Module) -> bool:
    return any(type(p) not in (torch.Tensor, torch.nn.Parameter) for p in module.parameters())


class AotBlocks:
    """Runs a FLUX transformer's repeated blocks through AOTInductor packages (one per block kind and input shape).

    `install()` puts a small dispatcher in place of each block's forward; the first call with new shapes loads the
    package from `folder`, or exports and compiles it there, then makes one runner per block bound to that block's
    weights. `remove()` puts the blocks' own forwards back (torch.compile or eager take over).
    """

    def __init__(self, transformer: torch.nn.Module, folder: str, tier: str, device: torch.device,
                 on_failure: Callable[[str], None] | None = None):
        self.transformer = transformer
        self.folder = folder
        self.tier = tier
        self.device = device
        self.events: list[AotEvent] = []
        self.notify: Notify | None = None  # set by the manager for the image in progress
        # Called (after the blocks have their own forwards back) when a package cannot be made or bound: the manager
        # compiles with torch.compile instead. The image in progress goes on uncompiled; nothing is lost.
        self.on_failure = on_failure
        self._runners: dict[tuple[str, str], list] = {}
        self._installed = False
        config = dict(getattr(transformer, "config", {}) or {})
        self._block_config = {k: v for k, v in sorted(config.items()) if not k.startswith("_")}

    @property
    def installed(self) -> bool:
        return self._installed

    def blocks(self, kind: str) -> torch.nn.ModuleList:
        return getattr(self.transformer, kind)

    def install(self) -> None:
        if self._installed:
            return
        for kind in BLOCK_LISTS:
            for index, block in enumerate(self.blocks(kind)):
                block.forward = self._dispatcher(kind, index)
        self._installed = True

    def remove(self) -> None:
        """The blocks' own forwards again; loaded runners are dropped (packages stay on disk)."""
        for kind in BLOCK_LISTS:
            for block in self.blocks(kind):
                block.__dict__.pop("forward", None)
        self._runners = {}
        self._installed = False

    def _dispatcher(self, kind: str, index: int):
        def forward(*args, **kwargs):
            kwargs = _drop_none(kwargs)
            signature = inputs_signature(args, kwargs)
            runners = self._runners.get((kind, signature))
            if runners is None:
                try:
                    runners = self._prepare(kind, signature, args, kwargs)
                except Exception as exc:
                    if isinstance(exc, torch.OutOfMemoryError):
                        raise
                    if isinstance(exc, AotCheckFailed):
                        log.warning("AOT packages for the %s failed their check (%s); using torch.compile", kind, exc)
                        message = CHECK_FAILED
                    else:
                        log.warning("AOT compile of the %s failed; using torch.compile instead", kind, exc_info=True)
                        message = f"ahead-of-time compile failed ({type(exc).__name__}); torch.compile used instead"
                    self.remove()
                    if self.on_failure is not None:
                        self.on_failure(message)
                    return self.blocks(kind)[index](*args, **kwargs)
            return runners[index](*args, **kwargs)

        return forward

    # --- packages ------------------------------------------------------------------------------------------------

    def package_path(self, kind: str, signature: str, compiler: str = "") -> tuple[str, dict]:
        key = package_key(kind, signature, self.tier, self._block_config, self.device, compiler)
        return os.path.join(self.folder, f"{kind}-{_key_name(key)}.pt2"), key

    def unusable_path(self, compilers: list[str]) -> str:
        """The mark that none of `compilers` made a package that passed its check, for this GPU and torch."""
        env = json.dumps({"torch": torch.__version__, "device": device_label(self.device),
                          "compilers": compilers}, sort_keys=True)
        return os.path.join(self.folder, f"unusable-{hashlib.sha256(env.encode()).hexdigest()[:16]}.json")

    def _prepare(self, kind: str, signature: str, args: tuple, kwargs: dict) -> list:
        compilers = compiler_candidates()
        unusable = self.unusable_path(compilers)
        if os.path.exists(unusable):
            raise AotCheckFailed("an earlier start found that no package built on this machine passes its check")
        blocks = self.blocks(kind)
        if any(_uses_tensor_subclasses(block) for block in blocks):
            # torchao's fp8 weights are tensor subclasses; torchao's own helper turns each into plain tensors behind
            # a parametrization, which export and load_constants take (same numbers, same kernels).
            from torchao.utils import unwrap_tensor_subclass

            for block in blocks:
                unwrap_tensor_subclass(block)
        reasons = []
        for compiler in compilers:
            path, key = self.package_path(kind, signature, compiler)
            waiting = f"waiting for another process compiling the same {_kind_label(kind)} (then loading them)"
            with exclusive(path, on_wait=lambda: self._say(waiting)):
                runners, reason = self._load_or_compile(kind, path, key, compiler, blocks, args, kwargs)
            if runners is not None:
                self._runners[(kind, signature)] = runners
                return runners
            reasons.append(f"{os.path.basename(compiler)}: {reason}")
        os.makedirs(self.folder, exist_ok=True)
        write_text(unusable, json.dumps({"reasons": reasons}, indent=1))
        raise AotCheckFailed("; ".join(reasons))

    def _load_or_compile(self, kind: str, path: str, key: dict, compiler: str, blocks, args: tuple,
                         kwargs: dict) -> tuple[list | None, str]:
        """Runners for `path` once it passed its check, or (None, why not). A package that failed is never loaded."""
        saved = os.path.exists(path)
        verdict = read_verdict(path) if saved else None
        if verdict is not None and not verdict["passed"]:
            return None, verdict["reason"]
        if saved:
            t0 = time.perf_counter()
            self._say(f"loading the compiled {_kind_label(kind)} for this size from the cache")
            if verdict is None:  # saved by a version that did not check, or the check was cut off
                verdict = self._check(path, args, kwargs, blocks[0])
                if not verdict["passed"]:
                    return None, verdict["reason"]
            try:
                runners = self._bind(path, blocks)
            except Exception as exc:  # noqa: BLE001 - a stale or damaged package is rebuilt, never fatal
                log.warning("AOT package %s could not be loaded (%s); compiling it again", path, exc)
            else:
                self.events.append(AotEvent("loaded", kind, time.perf_counter() - t0))
                return runners, ""
        t0 = time.perf_counter()
        self._say(f"compiling the {_kind_label(kind)} for this size (once; saved for later starts)")
        self._compile(path, key, compiler, blocks[0], args, kwargs)
        verdict = self._check(path, args, kwargs, blocks[0])
        if not verdict["passed"]:
            return None, verdict["reason"]
        runners = self._bind(path, blocks)
        self.events.append(AotEvent("compiled", kind, time.perf_counter() - t0))
        return runners, ""

    def _check(self, path: str, args: tuple, kwargs: dict, block: torch.nn.Module) -> dict:
        """Load and run the package once in a child process; the verdict is kept beside it."""
        from .aot_check import check_in_child, write_spec

        spec = os.path.splitext(path)[0] + ".spec.json"
        write_spec(spec, args, kwargs, block.state_dict())
        self._say("checking the compiled blocks in a separate process before loading them")
        result = check_in_child(path, spec, self._device_index())
        verdict = {"passed": result.passed, "reason": result.reason, "torch": torch.__version__}
        write_text(verdict_path(path), json.dumps(verdict, indent=1))
        if not result.passed:
            log.warning("AOT package %s failed its check: %s", path, result.reason)
        return verdict

    def _compile(self, path: str, key: dict, compiler: str, block: torch.nn.Module, args: tuple,
                 kwargs: dict) -> None:
        if _has_forward_hooks(block):
            raise AotUnavailable("a block has forward hooks (style LoRAs): a package would bake them in")
        own = block.__dict__.pop("forward", None)  # export the block's own forward, not the dispatcher
        try:
            exported = torch.export.export(block, args, kwargs)
        finally:
            if own is not None:
                block.forward = own
        os.makedirs(self.folder, exist_ok=True)
        t0 = time.perf_counter()
        options = dict(PACKAGE_OPTIONS)
        if compiler:
            options["cpp.cxx"] = (compiler,)
        with atomic_path(path) as tmp:
            torch._inductor.aoti_compile_and_package(exported, package_path=tmp, inductor_configs=options)
        try:
            os.unlink(verdict_path(path))  # a new package has not been checked
        except FileNotFoundError:
            pass
        write_text(os.path.splitext(path)[0] + ".json",
                   json.dumps({"key": key, "compile_s": round(time.perf_counter() - t0, 1)}, indent=1, default=str))

    def _device_index(self) -> int:
        """What aoti_load_package takes: the CUDA device's index, or -1 (the current device; the CPU)."""
        return self.device.index if self.device.type == "cuda" and self.device.index is not None else -1

    def _bind(self, path: str, blocks) -> list:
        runners = []
        index = self._device_index()
        for block in blocks:
            runner = torch._inductor.aoti_load_package(path, device_index=index)  # --device cuda:N
            names = runner.get_constant_fqns()
            weights = block.state_dict()
            missing = [name for name in names if name not in weights]
            if missing:
                raise AotUnavailable(f"the package expects weights the block does not have ({missing[0]})")
            runner.load_constants({name: weights[name] for name in names}, check_full_update=True,
                                  user_managed=True)
            runners.append(runner)
        return runners

    def _say(self, message: str) -> None:
        if self.notify is not None:
            self.notify(message)


def verdict_path(package: str) -> str:
    return os.path.splitext(package)[0] + ".check.json"


def read_verdict(package: str) -> dict | None:
    """{"passed": bool, "reason": str} from the package's check, or None when it was never checked."""
    try:
        with open(verdict_path(package), encoding="utf-8") as fh:
            verdict = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("passed"), bool):
        return None
    return {"passed": verdict["passed"], "reason": str(verdict.get("reason", ""))}


def _kind_label(kind: str) -> str:
    return "double blocks" if kind == "transformer_blocks" else "single blocks"


def _has_forward_hooks(module: torch.nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())

