"""A package is loaded and run once in a short-lived child process before the app loads it (aot.py).

Why: on the lent H200 every AOTInductor package, even one of a single Linear, crashed the loading process with
SIGSEGV inside `aoti_load_package` (docs/fast-tier.md, issue 23): the image's compiler wrapper builds the package's
shared object with its own static copy of the C++ runtime. A crash of the app is the worst failure we can ship, so
native code we built ourselves first runs where a crash costs nothing: this child loads the package, binds random
weights of the shapes the block has, runs one call on random inputs of the shapes it was compiled for, and exits 0.
Anything else (a signal, an error, a hang) is a failed check; the parent records it beside the package and never
loads that package.

    python -m fluxdepth_ui.pipeline.aot_check PACKAGE SPEC_JSON DEVICE_INDEX
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
from torch.utils import _pytree as pytree

# A full-size FLUX block package loads and runs in seconds; the rest is the child's start (importing torch).
CHECK_TIMEOUT_S = 300


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reason: str  # "" when passed; what went wrong otherwise (a signal number, an exit code, a time-out)


def tensor_spec(value) -> dict | None:
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch."),
                "device": value.device.type}
    return None


def write_spec(path: str, args: tuple, kwargs: dict, weights: dict) -> None:
    """What the child needs to rebuild inputs and weights of the right shapes: no tensor data, a few KB."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    described = [tensor_spec(leaf) or {"value": leaf} for leaf in leaves]
    data = {"treespec": pytree.treespec_dumps(spec), "leaves": described,
            "weights": {name: tensor_spec(t) for name, t in weights.items() if isinstance(t, torch.Tensor)}}
    from ..atomic import write_text

    write_text(path, json.dumps(data))


def _random(spec: dict, device: torch.device, generator: torch.Generator) -> torch.Tensor:
    dtype = getattr(torch, spec["dtype"])
    where = device if spec["device"] != "cpu" else torch.device("cpu")
    if dtype.is_floating_point:
        values = torch.randn(spec["shape"], generator=generator, device="cpu") * 0.02
        return values.to(where, dtype)
    return torch.zeros(spec["shape"], dtype=dtype, device=where)


def run_check(package: str, spec_path: str, device_index: int) -> None:
    """The child's work. Raises (exit code 1) on any failure; a crash ends the process by itself."""
    with open(spec_path, encoding="utf-8") as fh:
        spec = json.load(fh)
    if not any(leaf.get("device") == "cuda" for leaf in spec["leaves"]):
        device = torch.device("cpu")
    elif device_index >= 0:
        device = torch.device("cuda", device_index)
    else:  # -1: the current device, as aoti_load_package takes it
        device = torch.device("cuda")
    generator = torch.Generator("cpu").manual_seed(0)
    runner = torch._inductor.aoti_load_package(package, device_index=device_index)
    names = runner.get_constant_fqns()
    missing = [n for n in names if n not in spec["weights"]]
    if missing:
        raise SystemExit(f"the package expects weights the block does not have ({missing[0]})")
    runner.load_constants({n: _random(spec["weights"][n], device, generator) for n in names},
                          check_full_update=True, user_managed=True)
    leaves = [_random(leaf, device, generator) if "shape" in leaf else leaf["value"] for leaf in spec["leaves"]]
    args, kwargs = pytree.tree_unflatten(leaves, pytree.treespec_loads(spec["treespec"]))
    with torch.no_grad():
        out = runner(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not outputs:
        raise SystemExit("the package returned no tensors")


def check_command(package: str, spec_path: str, device_index: int) -> list[str]:
    return [sys.executable, "-m", "fluxdepth_ui.pipeline.aot_check", package, spec_path, str(device_index)]


def check_in_child(package: str, spec_path: str, device_index: int, timeout: float = CHECK_TIMEOUT_S) -> CheckResult:
    """Run the check in a new process and say how it went. Never raises for what happens in the child."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        done = subprocess.run(check_command(package, spec_path, device_index), env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"the check did not finish within {timeout:.0f} s")
    except OSError as exc:
        return CheckResult(False, f"the check could not start ({exc.strerror or type(exc).__name__})")
    if done.returncode == 0:
        return CheckResult(True, "")
    if done.returncode < 0:
        return CheckResult(False, f"the check process crashed (signal {-done.returncode})")
    last = (done.stderr.strip().splitlines() or ["no message"])[-1][:200]
    return CheckResult(False, f"the check failed (exit {done.returncode}: {last})")


def main(argv: list[str]) -> int:
    # A crash here must not spend minutes writing a core file of a process that maps the CUDA libraries.
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):
        pass
    package, spec_path, device_index = argv[0], argv[1], int(argv[2])
    run_check(package, spec_path, device_index)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
