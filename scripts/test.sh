#!/usr/bin/env bash
# The test command (README and .ci/run call exactly this): set-up, then the default suite.
# Long integration tests are marked and run separately: scripts/test.sh -m integration
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
