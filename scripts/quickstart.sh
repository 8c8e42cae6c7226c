#!/usr/bin/env bash
# The main job on the bundled default: set-up, then the most complete pipeline available today:
# the performance model's validation report, then a simulated hour of the Azure conversation
# trace on a 4 x TP2 Llama-2-70B deployment (A100), with its metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m oserve_rl perf validate --out reports/perf
if .venv/bin/python -m oserve_rl simulate --help >/dev/null 2>&1; then
  .venv/bin/python -m oserve_rl simulate --cluster a100x8 --model llama-2-70b --deployment 4xTP2 \
    --trace azure-conv --out reports/sim/quickstart
fi
