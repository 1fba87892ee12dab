# What compare.sh and streams.sh share (sourced with QUANT and WORK set): the release binary
# (BIN), the `small` test model (MODEL), the CPU flavour measured (FLAVOUR: native, or avx2 with
# AVX2_ONLY=1), and llama.cpp's CMake flags for a flavour.

echo "== building alcove-inference (release)" >&2
cargo build --release --locked -p alcove-inference >&2
BIN="${CARGO_TARGET_DIR:-target}/release/alcove-inference"

MODEL="$WORK/small-$QUANT/model.gguf"
if [ ! -f "$MODEL" ]; then
  echo "== writing the small test model ($QUANT)" >&2
  "$BIN" make-test-model --out "$WORK/small-$QUANT" --format gguf --size small --quant "$QUANT" >&2
fi

FLAVOUR=native
if [ "${AVX2_ONLY:-0}" = 1 ]; then
  FLAVOUR=avx2
  # candle's own switch to its AVX2 kernels, which qgemm follows too.
  export MISTRALRS_FORCE_AVX2=1
fi

# llama.cpp's CMake flags for a flavour:
#
# native: every SIMD extension this CPU has, spelled out rather than -march=native, so as to leave
#   out AMX: llama.cpp's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the test
#   models on the Xeons these machines run on. Neither engine uses AMX, then.
# avx2: a CPU with AVX2 and FMA but no AVX-512 or VNNI (AVX2_ONLY=1).
llama_cmake_flags() {
  local flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  if [ "$1" = native ]; then
    local cpu
    cpu=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    has() { [[ "$cpu" == *" $1 "* ]]; }
    if has bmi2; then flags+=" -DGGML_BMI2=ON"; fi
    if has avx_vnni; then flags+=" -DGGML_AVX_VNNI=ON"; fi
    if has avx512f; then flags+=" -DGGML_AVX512=ON"; fi
    if has avx512vbmi; then flags+=" -DGGML_AVX512_VBMI=ON"; fi
    if has avx512_vnni; then flags+=" -DGGML_AVX512_VNNI=ON"; fi
    if has avx512_bf16; then flags+=" -DGGML_AVX512_BF16=ON"; fi
  else
    flags+=" -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF"
  fi
  echo "$flags"
}
