#!/usr/bin/env bash
# The main job on the bundled default: set-up, then the most complete pipeline available today:
# the performance model's validation report, then a simulated hour of the Azure conversation
# trace on Llama-2-70B as 4 x TP2 on an 8 x H100 node, switching to 2 x TP4 half-way.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m oserve_rl perf validate --out reports/perf
if .venv/bin/python -m oserve_rl simulate --help >/dev/null 2>&1; then
  .venv/bin/python -m oserve_rl simulate --cluster h100x8 --model llama-2-70b --deployment 4xTP2 --switch 1800:2xTP4 \
    --trace azure-conv --out reports/sim/quickstart
fi
