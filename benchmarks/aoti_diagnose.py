"""Why does loading an AOTInductor package crash on the lent GPU (issue 23)? Each probe runs in its own child process,
so a segfault is an exit code, not the end of the run; the JSON is rewritten after every probe.

    python benchmarks/aoti_diagnose.py --json aoti_diagnose.json [--gdb]

Probes, smallest first: the toolchain and the libraries a package's .so resolves to (gcc, nvcc, ldd, readelf); a
package of one Linear on the CPU and on the GPU (compiled in one child, loaded in another); the same CUDA package
loaded single-threaded and with its kernels embedded in the .so; a FLUX-like block (attention through SDPA) at a small
width. `--gdb` runs the first crashing load under cuda-gdb for a native backtrace (the Python stack ends at the
loader's C++ call).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile

CHILD = r'''
import faulthandler, os, resource, sys, time
faulthandler.enable()
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash is an exit code here, not minutes of core dump
what, path = sys.argv[1], sys.argv[2]
opts = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a)
if "cxx" in opts:
    os.environ["CXX"] = opts["cxx"]
import torch
device = "cuda" if "cuda" in what else "cpu"
torch.manual_seed(0)

def model():
    if what.startswith("block"):
        from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
        return FluxTransformerBlock(dim=256, num_attention_heads=2, attention_head_dim=128).to(device, torch.bfloat16).eval()
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU()).to(device).eval()

def inputs():
    g = torch.Generator(device).manual_seed(1)
    if what.startswith("block"):
        b = dict(dtype=torch.bfloat16, device=device)
        return (), dict(hidden_states=torch.randn(1, 256, 256, generator=g, **b),
                        encoder_hidden_states=torch.randn(1, 32, 256, generator=g, **b),
                        temb=torch.randn(1, 256, generator=g, **b),
                        image_rotary_emb=(torch.randn(288, 128, device=device), torch.randn(288, 128, device=device)))
    return (torch.randn(8, 64, generator=g, device=device),), {}

m = model()
args, kwargs = inputs()
if opts.get("phase") == "compile":
    with torch.no_grad():
        ep = torch.export.export(m, args, kwargs)
    cfg = {"aot_inductor.package_constants_in_so": opts.get("in_so", "0") == "1"}
    if opts.get("embed") == "1":
        cfg["aot_inductor.embed_kernel_binary"] = True
    t = time.time()
    torch._inductor.aoti_compile_and_package(ep, package_path=path, inductor_configs=cfg)
    print("COMPILED", round(time.time() - t, 1), os.path.getsize(path), flush=True)
    sys.exit(0)
print("LOADING", flush=True)
runner = torch._inductor.aoti_load_package(path, run_single_threaded=opts.get("single") == "1")
print("LOADED", flush=True)
if opts.get("in_so", "0") != "1":
    sd = m.state_dict()
    runner.load_constants({n: sd[n] for n in runner.get_constant_fqns()}, check_full_update=True, user_managed=True)
    print("BOUND", flush=True)
with torch.no_grad():
    out = runner(*args, **kwargs)
    ref = m(*args, **kwargs)
if device == "cuda":
    torch.cuda.synchronize()
o = out[0] if isinstance(out, (list, tuple)) else out
r = ref[0] if isinstance(ref, (list, tuple)) else ref
print("RAN relerr", float((o.float() - r.float()).norm() / r.float().norm()), flush=True)
'''


def sh(cmd: str, timeout: int = 60) -> str:
    try:
        p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()[-4000:]
    except subprocess.TimeoutExpired:
        return f"timeout after {timeout} s"


def child(script: str, argv: list[str], timeout: int, env: dict | None = None) -> dict:
    t = time.time()
    try:
        p = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        rc, out = p.returncode, (p.stdout + p.stderr)
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else str(exc.stdout)
    return {"rc": rc, "s": round(time.time() - t, 1), "tail": out.strip()[-2500:]}


def so_facts(pt2: str, work: str) -> dict:
    """What the package's shared object needs, and where the dynamic linker finds it."""
    facts = {}
    try:
        with zipfile.ZipFile(pt2) as z:
            names = z.namelist()
            facts["members"] = names[:40]
            sos = [n for n in names if n.endswith(".so")]
            if sos:
                z.extract(sos[0], work)
                so = os.path.join(work, sos[0])
                facts["ldd"] = sh(f"ldd {so}")
                facts["readelf_dynamic"] = sh(f"readelf -d {so} | grep -E 'NEEDED|RPATH|RUNPATH'")
                facts["so_bytes"] = os.path.getsize(so)
                facts["glibcxx_needed"] = sh(f"objdump -T {so} | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -3")
                facts["undefined"] = sh(f"nm -D --undefined-only {so} | wc -l")
    except Exception as exc:  # noqa: BLE001
        facts["error"] = repr(exc)
    return facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--gdb", action="store_true")
    ap.add_argument("--gdb-timeout", type=int, default=150)
    ap.add_argument("--probes", default="linear_cpu,linear_cuda,linear_cuda:single=1,linear_cuda:embed=1,"
                    "linear_cuda:in_so=1,block_cuda", help="what[:key=value...], comma-separated")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="aoti-diag-")
    script = os.path.join(work, "child.py")
    with open(script, "w") as fh:
        fh.write(CHILD)
    report: dict = {"env": {}, "probes": []}

    def save():
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)

    import torch

    report["env"] = {
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "python": sys.version.split()[0], "executable": sys.executable,
        "gcc": sh("gcc --version | head -1"), "gxx": sh("g++ --version | head -1"),
        "cxx_env": os.environ.get("CXX"), "cuda_home": os.environ.get("CUDA_HOME"),
        "nvcc": sh("nvcc --version | tail -2"), "driver": sh("nvidia-smi --query-gpu=name,driver_version --format=csv"),
        "uname": sh("uname -a"), "tmp_mount": sh("mount | grep -E ' /tmp | / '"),
        "ldconfig": sh("ldconfig -p | grep -E 'libcuda.so|libcudart|libgomp|libstdc'"),
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
        "torch_lib": sh(f"ls {os.path.dirname(torch.__file__)}/lib | head -50"),
        "opt_gcc": sh("/opt/gcc/bin/g++ --version | head -1; ls /opt/gcc; ls /opt/gcc/lib64 | head; "
                      "readlink -f /opt/gcc/bin/g++; file /opt/gcc/bin/g++"),
        "libstdcxx_versions": sh("strings /lib/x86_64-linux-gnu/libstdc++.so.6 | grep -E '^GLIBCXX_3.4.3' | tail -3"),
        "cpp_compiler": sh(f"{sys.executable} -c 'from torch._inductor import cpp_builder as c; "
                           "print(c.get_cpp_compiler())'"),
    }
    save()
    crashed = None
    probes = []
    for spec in args.probes.split(","):
        what, *pairs = spec.split(":")
        probes.append((what, dict(p.split("=", 1) for p in pairs)))
    for what, opts in probes:
        name = what + "".join(f"-{k}{os.path.basename(v)}" for k, v in opts.items())
        path = os.path.join(work, name + ".pt2")
        flat = [f"{k}={v}" for k, v in opts.items()]
        row = {"probe": name, "compile": child(script, [what, path, "phase=compile", *flat], 300)}
        if row["compile"]["rc"] == 0:
            row["so"] = so_facts(path, os.path.join(work, name))
            row["load"] = child(script, [what, path, *flat], 120)
            if row["load"]["rc"] != 0 and crashed is None:
                crashed = (what, path, flat)
        report["probes"].append(row)
        print(json.dumps({"probe": name, "compile_rc": row["compile"]["rc"],
                          "load_rc": row.get("load", {}).get("rc"),
                          "load_tail": row.get("load", {}).get("tail", "")[-300:]}), flush=True)
        save()
    if args.gdb and crashed is not None:
        what, path, flat = crashed
        cmd = (f"cuda-gdb -batch -q -ex 'set pagination off' -ex 'set confirm off' -ex 'handle SIGUSR1 nostop noprint' "
               f"-ex run -ex 'bt 40' --args {sys.executable} {script} {what} {path} "
               + " ".join(flat))
        report["gdb"] = sh(cmd, timeout=args.gdb_timeout)[-8000:]
        print(report["gdb"][-3000:], flush=True)
        save()


if __name__ == "__main__":
    main()
