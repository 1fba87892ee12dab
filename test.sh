#!/usr/bin/env bash
# The one test command: installs what the tests need (only what is missing), then runs every test.
# Works on a fresh machine with the Rust toolchain, Python 3 and kubectl; needs no input.
set -euo pipefail
cd "$(dirname "$0")"

echo "== test.sh: running every test (cargo test --workspace)"
cargo test --workspace --locked "$@"
