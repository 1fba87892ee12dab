#!/usr/bin/env bash
# Builds alcove-inference with the `cuda` feature on a machine without a CUDA toolkit: nvcc, the
# CUDA headers (CCCL's thrust and cub included) and the CUDA libraries come from NVIDIA's wheels
# on PyPI, installed into a virtualenv outside the repository. No GPU is needed to build.
#
#   inference-image/build-cuda.sh            # → dist/cuda/alcove-inference, dist/cuda/lib/
#   CUDA_COMPUTE_CAP=89 inference-image/build-cuda.sh
#
# Only the CUDA 13 wheels ship the nvcc driver itself (the -cu12 ones hold ptxas and libnvvm
# alone), so this is a CUDA 13 build: the GPU's driver must be 580 or newer. The Dockerfile, which
# builds on NVIDIA's CUDA 12 images instead, is the way for older drivers.
#
# candle links the CUDA libraries it uses (cuBLAS, cuBLASLt, cuRAND, the runtime) from the same
# wheels; they go into dist/cuda/lib beside the binary (about 730 MB, mostly cuBLASLt), which
# finds them there, so the bundle needs only the GPU driver on the node. The driver's libcuda is
# not on PyPI: the link uses a stub of it made here (the symbols cudarc calls, as NVIDIA's own
# stubs provide), and the node's real libcuda.so.1 is what runs.
#
# Knobs: CUDA_COMPUTE_CAP (default 90: H100/H200; 89: L4/L40S; 80: A100), CUDA_VENV (where the
# wheels go, default ~/.cache/alcove/cuda/venv), CUDA_TARGET_DIR (cargo's target directory,
# default $CARGO_TARGET_DIR-cuda, or target-cuda), OUT (default dist/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

# NVIDIA's meta-package pins matching versions of each part.
TOOLKIT="cuda-toolkit[nvcc,cudart,cccl,nvrtc,curand,cublas]==13.4.3"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
VENV="${CUDA_VENV:-$HOME/.cache/alcove/cuda/venv}"
OUT="${OUT:-dist/cuda}"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-target}-cuda}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ "$("$VENV/bin/pip" show cuda-toolkit 2>/dev/null | sed -n 's/^Version: //p')" != 13.4.3 ]; then
  echo "== build-cuda.sh: installing the CUDA 13.4 wheels into $VENV (about 1.2 GB)" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$TOOLKIT"
fi

# The wheels lay the toolkit out as one tree (bin, include, lib, nvvm), which nvcc's own profile
# expects; it lacks only the unversioned names that `-l` links against.
CUDA_HOME="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
export CUDA_HOME NVCC="$CUDA_HOME/bin/nvcc" PATH="$CUDA_HOME/bin:$PATH"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
  ln -sf "$lib" "$CUDA_HOME/lib/${lib%.so.*}.so"
done
mkdir -p "$CUDA_HOME/lib/stubs"
export LIBRARY_PATH="$CUDA_HOME/lib:$CUDA_HOME/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
"$NVCC" --version | tail -1 >&2

echo "== build-cuda.sh: cargo build --features cuda (compute capability $CUDA_COMPUTE_CAP) into $CARGO_TARGET_DIR" >&2
start=$(date +%s)
cargo build --release --locked -p alcove-inference --features cuda --lib

# libcuda's stub: every driver function (cu + a capital) that the built crates leave undefined,
# under the driver's soname, so the binary asks for libcuda.so.1 and the node's driver answers.
stub="$CUDA_HOME/lib/stubs"
for rlib in "$CARGO_TARGET_DIR"/release/deps/*.rlib; do
  nm -u --format=just-symbols "$rlib" 2>/dev/null || true
done | grep -E '^cu[A-Z][A-Za-z0-9_]*$' | sort -u | sed 's/.*/void &(void) {}/' >"$stub/libcuda.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/libcuda.c"

# The binary finds the libraries in lib/ beside it (rpath $ORIGIN/lib); only the final link
# differs from a plain `cargo build`, so the rpath is given to that crate alone.
cargo rustc --release --locked -p alcove-inference --bin alcove-inference --features cuda \
  -- -C 'link-arg=-Wl,-rpath,$ORIGIN/lib'
echo "== build-cuda.sh: built in $(($(date +%s) - start)) s" >&2

rm -rf "$OUT"
mkdir -p "$OUT/lib"
install -m 0755 "$CARGO_TARGET_DIR/release/alcove-inference" "$OUT/alcove-inference"
# The wheels' libraries the binary loads, directly or through another (cuBLAS needs cuBLASLt).
LD_LIBRARY_PATH="$CUDA_HOME/lib" ldd "$OUT/alcove-inference" \
  | awk -v dir="$CUDA_HOME/lib/" 'index($3, dir) == 1 { print $3 }' \
  | while read -r lib; do install -m 0644 "$(readlink -f "$lib")" "$OUT/lib/$(basename "$lib")"; done
du -sh "$OUT" >&2
echo "$OUT/alcove-inference"
