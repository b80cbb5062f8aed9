#!/usr/bin/env bash
# Create ./.venv and install vsr1_jax with its test extra. torch is installed first and pinned (constraints.txt):
# on CPU-only machines only the 2.13.0 CPU wheel exists locally, and an unpinned request would pull CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
