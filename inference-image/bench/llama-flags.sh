# llama.cpp's CMake flags for the benchmarks (sourced by compare.sh and streams.sh).
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
