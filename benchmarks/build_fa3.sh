#!/bin/bash
# Build Flash-Attention 3 (Hopper) for the fp8 attention probe (issue 23): forward only, head dim 128, bf16 and fp8
# e4m3, sm_90a. No wheel of it installs on the lent GPU machine (docs/benchmarks.md "Session 34"), and the machine
# cannot download; this builds one on the dev machine, without a GPU, in about 3 minutes on 2 cores.
#
#   benchmarks/build_fa3.sh FLASH_ATTENTION_CHECKOUT [OUT_DIR]
#
# FLASH_ATTENTION_CHECKOUT: Dao-AILab/flash-attention (built at 0251105a) with its csrc/cutlass submodule
# (NVIDIA/cutlass 7127592); README.md beside hopper/ is read by its setup.py. Needs nvcc >= 13.0 (/usr/local/cuda;
# CUDA 13 uses the system nvcc and its CCCL headers) and this venv's torch (>= 2.9: the extension is built for
# torch's stable ABI, target 2.9, and Python's limited API, so the wheel (cp310-abi3) loads in the GPU machine's
# torch 2.11 / Python 3.12 as well). A CPU-only torch has no CUDA_HOME of its own: it is set here, and the link
# gets empty stand-ins for libc10_cuda / libtorch_cuda, kept as needed libraries (--no-as-needed): at run time the
# real ones, which torch has loaded, give the CUDA stream getter of the stable ABI (aoti_torch_get_current_cuda_stream).
# The wheel goes to OUT_DIR (default .whl-extra/, untracked); the GPU run installs it like the others:
#   pip install --no-deps --target /tmp/site .whl-extra/flash_attn_3-*.whl
set -euo pipefail
SRC=$(realpath "$1")
OUT=$(realpath "${2:-.whl-extra}")
VENV_BIN=$(dirname "$(command -v python)")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$SRC/hopper" "$WORK/hopper"
cp "$SRC/README.md" "$WORK/README.md"
mkdir -p "$WORK/csrc" "$WORK/stubs"
ln -s "$SRC/csrc/cutlass" "$WORK/csrc/cutlass"
# torch's cpp_extension sets CUDA_HOME only in a CUDA build of torch
sed -i '/^from torch.utils.cpp_extension import .*CUDA_HOME$/a import torch.utils.cpp_extension as _cx\n_cx.CUDA_HOME = CUDA_HOME = CUDA_HOME or os.environ.get("CUDA_HOME")' "$WORK/hopper/setup.py"
echo "" > "$WORK/stubs/empty.c"
for lib in torch_cuda c10_cuda; do
  gcc -shared -fPIC -Wl,-soname,lib$lib.so -o "$WORK/stubs/lib$lib.so" "$WORK/stubs/empty.c"
done
export FLASH_ATTENTION_DISABLE_BACKWARD=TRUE FLASH_ATTENTION_DISABLE_SPLIT=TRUE FLASH_ATTENTION_DISABLE_PAGEDKV=TRUE \
  FLASH_ATTENTION_DISABLE_APPENDKV=TRUE FLASH_ATTENTION_DISABLE_LOCAL=TRUE FLASH_ATTENTION_DISABLE_SOFTCAP=TRUE \
  FLASH_ATTENTION_DISABLE_PACKGQA=TRUE FLASH_ATTENTION_DISABLE_FP16=TRUE FLASH_ATTENTION_DISABLE_VARLEN=TRUE \
  FLASH_ATTENTION_DISABLE_CLUSTER=TRUE FLASH_ATTENTION_DISABLE_HDIM64=TRUE FLASH_ATTENTION_DISABLE_HDIM96=TRUE \
  FLASH_ATTENTION_DISABLE_HDIM192=TRUE FLASH_ATTENTION_DISABLE_HDIM256=TRUE FLASH_ATTENTION_DISABLE_SM80=TRUE \
  FLASH_ATTENTION_DISABLE_HDIMDIFF64=TRUE FLASH_ATTENTION_DISABLE_HDIMDIFF192=TRUE \
  FLASH_ATTENTION_OFFLINE_BUILD=TRUE FLASH_ATTENTION_FORCE_BUILD=TRUE \
  CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} NVCC_THREADS=1 \
  LDFLAGS="-L$WORK/stubs -Wl,--no-as-needed"
export PATH="$CUDA_HOME/bin:$VENV_BIN:$PATH"
(cd "$WORK/hopper" && python setup.py -q bdist_wheel)
mkdir -p "$OUT"
cp "$WORK"/hopper/dist/flash_attn_3-*.whl "$OUT/"
ls -la "$OUT"/flash_attn_3-*.whl
