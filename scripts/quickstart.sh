#!/usr/bin/env bash
# The main job on the bundled default, on a fresh machine:
#   1. set-up (.venv with the whole stack; skipped when already done),
#   2. a short MaskablePPO run on Deploy-v0 (configs/train/quickstart.yaml: Azure conv, Llama-2-70B, 16 H100s),
#   3. evaluate.py: the trained agent against vllm_static and OServe on the held-out validation window,
#      printing the table (files and plots in reports/eval/quickstart).
# About a minute on 2 cores once installed; ~3.5 minutes on a fresh machine, set-up included (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
RUN=runs/quickstart
$PY train.py --config configs/train/quickstart.yaml --logdir runs --run-name quickstart --overwrite  # re-runs replace it
$PY evaluate.py --cluster h100x16 --model llama-2-70b --trace azure-conv --rate-scale 2 --start 2400 --duration 1200 \
  --predictor ewma --policies "vllm_static,oserve,maskable_ppo:$RUN/model.zip" --out reports/eval/quickstart
echo
echo "TensorBoard (training curves; agent vs heuristics under eval/<metric>/<policy>):"
echo "  .venv/bin/tensorboard --logdir $RUN/tb"
