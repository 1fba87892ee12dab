#!/usr/bin/env bash
# Generation benchmark: alcove-inference (candle) beside llama.cpp (llama-cpp-python, built here
# from PyPI) on the same `small` GGUF file, the same prompt token ids and the same thread count.
# Prints both and the ratio candle / llama.cpp (goal: ≥ 1.0 for decode speed).
#
#   inference-image/bench/compare.sh            # q8_0, 2 threads (this machine's cores)
#   QUANT=q4_k THREADS=2 inference-image/bench/compare.sh
#   PROMPT_TOKENS=1024 inference-image/bench/compare.sh
#   AVX2_ONLY=1 inference-image/bench/compare.sh  # both engines as on a CPU without AVX-512/VNNI
#
# Knobs: QUANT (q8_0 | q4_0 | q4_k | f16), THREADS, PROMPT_TOKENS, GEN_TOKENS, RUNS, BENCH_DIR,
# AVX2_ONLY. With AVX2_ONLY=1, candle is told to use its AVX2 kernels (MISTRALRS_FORCE_AVX2=1,
# candle's own switch) and llama.cpp is built without AVX-512 and VNNI, in its own virtualenv, so
# an AVX-512 machine measures what an AVX2-only one runs. The CPU line and the kernels each
# engine chose are printed with the figures.
set -euo pipefail
cd "$(dirname "$0")/../.."

QUANT=${QUANT:-q8_0}
THREADS=${THREADS:-$(nproc)}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
GEN_TOKENS=${GEN_TOKENS:-128}
RUNS=${RUNS:-3}
WORK=${BENCH_DIR:-$HOME/.cache/alcove/bench}
mkdir -p "$WORK"

source inference-image/bench/common.sh
LLAMA_CMAKE="$(llama_cmake_flags $FLAVOUR) -DLLAVA_BUILD=OFF"
# The flavour's flags name the virtualenv: one built with other flags is not reused.
VENV="$WORK/venv-$FLAVOUR-$(echo "$LLAMA_CMAKE" | md5sum | cut -c1-8)"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "== installing llama-cpp-python (compiles llama.cpp; several minutes)" >&2
  # --no-cache-dir: a wheel pip cached from a native build would otherwise be reused as it is.
  CMAKE_ARGS="$LLAMA_CMAKE" "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir llama-cpp-python==0.3.36 >&2
fi

echo "== candle: $THREADS threads" >&2
"$BIN" --threads "$THREADS" bench --model "$MODEL" --prompt-tokens "$PROMPT_TOKENS" --gen-tokens "$GEN_TOKENS" --runs "$RUNS" \
  --prompt-ids-out "$WORK/prompt-ids.json" > "$WORK/candle.json"
echo "== llama.cpp: $THREADS threads" >&2
"$VENV/bin/python" inference-image/bench/llamacpp.py --model "$MODEL" --prompt-ids "$WORK/prompt-ids.json" \
  --gen-tokens "$GEN_TOKENS" --runs "$RUNS" --threads "$THREADS" > "$WORK/llamacpp.json"

python3 - "$WORK/candle.json" "$WORK/llamacpp.json" "$QUANT" <<'PY'
import json, sys
c, l = (json.load(open(p)) for p in sys.argv[1:3])
print(f"cpu: {c['cpu']}")
print(f"candle kernels: {c['kernels']}")
print(f"llama.cpp: {l['system_info']}")
print(f"model: {c['model']} ({sys.argv[3]}), {c['prompt_tokens']} prompt tokens, {c['gen_tokens']} generated, {c['threads']} threads, median of {c['runs']} runs")
print(f"{'':24}{'candle':>12}{'llama.cpp':>12}{'ratio':>8}")
print(f"{'decode tokens/s':24}{c['decode_tokens_per_s']:12.1f}{l['decode_tokens_per_s']:12.1f}{c['decode_tokens_per_s']/l['decode_tokens_per_s']:8.2f}")
print(f"{'time to first token ms':24}{c['ttft_ms']:12.1f}{l['ttft_ms']:12.1f}{l['ttft_ms']/c['ttft_ms']:8.2f}")
print(f"{'prefill tokens/s':24}{c['prefill_tokens_per_s']:12.1f}{l['prefill_tokens_per_s']:12.1f}{c['prefill_tokens_per_s']/l['prefill_tokens_per_s']:8.2f}")
print(f"prefix cache: turn 2 ({c['turn2_prompt_tokens']} tokens, {c['turn2_reused_tokens']} reused) first token in {c['turn2_ttft_ms']:.1f} ms, {c['turn2_uncached_ttft_ms']:.1f} ms computed from scratch, turn 1 {c['ttft_ms']:.1f} ms")
print("ratio: candle ÷ llama.cpp for speeds, llama.cpp ÷ candle for time (above 1.0: candle is faster)")
PY
