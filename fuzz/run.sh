#!/usr/bin/env bash
# Coverage-guided fuzzing of what the inference server parses from outside: model files (GGUF),
# OpenAI request bodies, and prompt text through the chat template and tokenizer.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Each target runs under libFuzzer from the seeds in fuzz/seeds/ (the GGUF seed is a test model
# made fresh) plus what earlier runs found, kept outside the repository. Prints each target's
# runs, coverage and crashes; exits 1 when any target crashed, leaving the input that did it.
# Needs nightly Rust (`rustup toolchain install nightly`); installs cargo-fuzz when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf openai_request prompt_text)
cache=${ALCOVE_CACHE:-$HOME/.cache/alcove}
export CARGO_TARGET_DIR=$cache/fuzz-target
work=$cache/fuzz
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# The GGUF seed: the tiny test model the tests use.
mkdir -p "$work/seeds/gguf"
if [ ! -s "$work/seeds/gguf/model.gguf" ]; then
    (cd "$here/.." && CARGO_TARGET_DIR=$cache/target cargo run -q -p alcove-inference -- \
        make-test-model --format gguf --out "$work/seeds/gguf" >/dev/null)
    find "$work/seeds/gguf" -type f ! -name model.gguf -delete
fi

cd "$here"
# Overflow checks and debug assertions on: an overflow is a finding, not a wrapped number.
cargo +nightly fuzz build --sanitizer none --release --debug-assertions 2>&1 | grep -E '^error' \
    && exit 2
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release
failed=0
printf '%-16s %10s %8s %8s %7s  %s\n' target seconds runs cov corpus crashes
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    artifacts=$work/artifacts/$t/
    mkdir -p "$corpus" "$artifacts"
    seeds=$here/seeds/$t
    [ "$t" = gguf ] && seeds=$work/seeds/gguf
    max_len=4096
    [ "$t" = gguf ] && max_len=262144
    log=$work/$t.log
    set +e
    "$bin/$t" "$corpus" "$seeds" -max_total_time="$seconds" -max_len="$max_len" -timeout=20 \
        -rss_limit_mb=4096 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo 0)
    size=$(find "$corpus" -type f | wc -l)
    crashes=$(find "$artifacts" -type f | wc -l)
    printf '%-16s %10s %8s %8s %7s  %s\n' "$t" "$seconds" "$runs" "$cov" "$size" "$crashes"
    if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        echo "  $t: see $log; inputs under $artifacts" >&2
        grep -m3 -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/  /' >&2 || true
    fi
done
exit $failed
