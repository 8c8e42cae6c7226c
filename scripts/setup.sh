#!/usr/bin/env bash
# Idempotent set-up: a .venv with oserve-rl installed (editable) and its test tools.
# torch is pinned to the local CPU build: a looser spec can pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.oserve-setup-$(cat pyproject.toml scripts/setup.sh constraints.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0" || echo "note: torch==2.13.0 not available; GPU-profiling tests will skip" >&2
  # The whole stack (RL, RLlib, export, live adapter); versions pinned in constraints.txt.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,rl,rllib,export,live]"
  rm -f .venv/.oserve-setup-*
  touch "$stamp"
fi
# The compiled simulator core (setup.py) is rebuilt when its sources changed since it was built (an edited
# engine.py would otherwise run as pure Python: oserve_rl/_native.py never runs a stale build).
if ! .venv/bin/python -W ignore -c "import sys, oserve_rl._native as n; sys.exit(1 if n.check_builds()[1] else 0)"; then
  echo "rebuilding the compiled simulator core (its sources changed)" >&2
  .venv/bin/python -m pip install -q --no-deps -e .
fi
# The bundled forecaster is trained here, not committed: deterministic (seeded), about a minute.
if [ ! -f oserve_rl/forecast/data/lstm/weights.pt ]; then
  echo "training the bundled per-type LSTM forecaster (about a minute)" >&2
  .venv/bin/python -m oserve_rl forecast train --source servegen:m-large --days 0-6 \
    --out oserve_rl/forecast/data/lstm >/dev/null
fi
