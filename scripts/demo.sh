#!/usr/bin/env bash
# Install into ./.venv and run the demo: synthetic corpus + tiny random model, the 2-turn agent, metrics and report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} .venv/bin/python -m vsr1_jax.main --config=configs/toy.py "$@"
