#!/usr/bin/env bash
# Concurrency benchmark: alcove-inference's server beside llama.cpp's (`llama-server --parallel
# N`) on the same `small` GGUF file and thread count, with 1, 4, 8 and 16 concurrent streaming
# requests. Prints, per N, aggregate generated tokens/s and p50/p99 time to first token of both,
# and the ratio alcove ÷ llama.cpp (goal: ≥ 1.0); then alcove's resident memory over 1,000
# requests (goal: no growth after warm-up).
#
#   inference-image/bench/streams.sh
#   STREAMS="1 4" GEN_TOKENS=64 inference-image/bench/streams.sh
#   AVX2_ONLY=1 inference-image/bench/streams.sh   # both as on a CPU without AVX-512/VNNI
#
# llama-server is not a program on these machines: it is built once, here, from the llama.cpp
# sources that the llama-cpp-python sdist on PyPI ships (tools/server), with Debian's cmake, and
# kept under BENCH_DIR. Nothing of it is in the repository. Prompt reuse is off on both servers
# (--prefix-cache-mib 0; cache_prompt false), and every stream has its own prompt.
#
# Knobs: QUANT, THREADS, STREAMS, GEN_TOKENS, PROMPT_CHARS, REQUESTS (0 skips the memory check),
# BENCH_DIR, AVX2_ONLY.
set -euo pipefail
cd "$(dirname "$0")/../.."

QUANT=${QUANT:-q8_0}
THREADS=${THREADS:-$(nproc)}
STREAMS=${STREAMS:-1 4 8 16}
GEN_TOKENS=${GEN_TOKENS:-128}
PROMPT_CHARS=${PROMPT_CHARS:-600}
REQUESTS=${REQUESTS:-1000}
WORK=${BENCH_DIR:-$HOME/.cache/alcove/bench}
LLAMA_VERSION=0.3.36
mkdir -p "$WORK"

source inference-image/bench/common.sh
read -r -a LLAMA_CMAKE <<< "$(llama_cmake_flags $FLAVOUR)"
# The flags name the build: one made with other flags is not reused.
SERVER="$WORK/llama-server-$LLAMA_VERSION-$FLAVOUR-$(echo "${LLAMA_CMAKE[*]}" | md5sum | cut -c1-8)/bin/llama-server"
if [ ! -x "$SERVER" ]; then
  if ! command -v cmake >/dev/null; then
    echo "== installing cmake (apt-get)" >&2
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cmake >&2
  fi
  SRC="$WORK/llama_cpp_python-$LLAMA_VERSION"
  if [ ! -d "$SRC/vendor/llama.cpp/tools/server" ]; then
    echo "== fetching the llama-cpp-python $LLAMA_VERSION sdist (llama.cpp's sources)" >&2
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
      --dest "$WORK/sdist" "llama-cpp-python==$LLAMA_VERSION" >&2
    tar -xzf "$WORK/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$WORK"
  fi
  echo "== building llama-server ($FLAVOUR; several minutes)" >&2
  BUILD="$WORK/llama-server-build-$FLAVOUR"
  rm -rf "$BUILD"
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
    "${LLAMA_CMAKE[@]}" >&2
  cmake --build "$BUILD" --target llama-server -j "$(nproc)" >&2
  mkdir -p "$(dirname "$SERVER")"
  cp "$BUILD/bin/llama-server" "$SERVER"
fi

head -c "$PROMPT_CHARS" inference-image/src/testmodel/corpus.txt > "$WORK/streams-prompt.txt"
echo -n "bench-key" > "$WORK/streams-key"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=""
stop() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap stop EXIT
wait_ready() {
  for _ in $(seq 600); do
    if curl -sf -o /dev/null "http://127.0.0.1:$PORT/$1"; then return 0; fi
    sleep 0.2
  done
  echo "the server did not come up" >&2
  return 1
}
client() { python3 inference-image/bench/streams.py --port "$PORT" --prompt-file "$WORK/streams-prompt.txt" --gen-tokens "$GEN_TOKENS" "$@"; }

RESULTS="$WORK/streams.jsonl"
: > "$RESULTS"
for N in $STREAMS; do
  echo "== alcove-inference: $N streams" >&2
  "$BIN" --threads "$THREADS" serve --model "$MODEL" --model-id model --port "$PORT" \
    --api-key-file "$WORK/streams-key" --parallel "$N" --max-queue 64 --prefix-cache-mib 0 \
    --log-format json 2> "$WORK/alcove-server.log" &
  PID=$!
  wait_ready readyz
  echo "{\"engine\": \"alcove\", \"result\": $(client --key bench-key --streams "$N")}" >> "$RESULTS"
  stop
  echo "== llama-server: $N streams" >&2
  # Each slot gets its share of --ctx-size: room for the prompt and the generation.
  "$SERVER" --model "$MODEL" --host 127.0.0.1 --port "$PORT" --threads "$THREADS" \
    --threads-batch "$THREADS" --parallel "$N" --ctx-size $((N * 1024)) --no-webui \
    > "$WORK/llama-server.log" 2>&1 &
  PID=$!
  wait_ready health
  echo "{\"engine\": \"llama.cpp\", \"result\": $(client --streams "$N" --extra '{"cache_prompt": false}')}" >> "$RESULTS"
  stop
done

if [ "$REQUESTS" -gt 0 ]; then
  echo "== alcove-inference: resident memory over $REQUESTS requests" >&2
  "$BIN" --threads "$THREADS" serve --model "$MODEL" --model-id model --port "$PORT" \
    --api-key-file "$WORK/streams-key" --parallel 4 --max-queue 64 \
    --log-format json 2> "$WORK/alcove-server.log" &
  PID=$!
  wait_ready readyz
  echo "{\"engine\": \"alcove-memory\", \"result\": $(client --key bench-key --streams 4 --gen-tokens 16 --requests "$REQUESTS" --every 100 --pid "$PID")}" >> "$RESULTS"
  stop
fi

python3 - "$RESULTS" "$MODEL" "$QUANT" "$THREADS" "$GEN_TOKENS" "$BIN" <<'PY'
import json, subprocess, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"cpu: {cpu}")
print(f"model: {sys.argv[2]} ({sys.argv[3]}), {sys.argv[4]} threads, {sys.argv[5]} tokens per stream, greedy, prompt reuse off")
print(f"{'streams':>8}{'alcove tok/s':>14}{'llama.cpp tok/s':>17}{'ratio':>7}{'alcove TTFT p50/p99 ms':>25}{'llama.cpp TTFT p50/p99 ms':>28}")
by = {}
for r in rows:
    by.setdefault(r["result"].get("streams"), {})[r["engine"]] = r["result"]
for n, e in sorted((k, v) for k, v in by.items() if k is not None):
    a, l = e.get("alcove"), e.get("llama.cpp")
    if not a or not l:
        continue
    print(f"{n:>8}{a['tokens_per_s']:14.1f}{l['tokens_per_s']:17.1f}{a['tokens_per_s']/l['tokens_per_s']:7.2f}"
          f"{a['ttft_p50_ms']:>14.0f} / {a['ttft_p99_ms']:<8.0f}{l['ttft_p50_ms']:>16.0f} / {l['ttft_p99_ms']:<8.0f}")
    print(f"{'':8}(tokens generated: alcove {a['tokens']}, llama.cpp {l['tokens']})")
mem = [r["result"]["rss_kib"] for r in rows if r["engine"] == "alcove-memory"]
if mem:
    s = mem[0]
    print("alcove resident memory (MiB) after N requests: " + ", ".join(f"{n}: {k/1024:.0f}" for n, k in s))
    if len(s) > 2:
        print(f"growth after warm-up (request {s[1][0]} to {s[-1][0]}): {(s[-1][1]-s[1][1])/1024:+.1f} MiB")
PY
