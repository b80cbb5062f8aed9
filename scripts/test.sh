#!/usr/bin/env bash
# Install into ./.venv (torch pinned to the CPU wheel first, so nothing pulls CUDA builds) and run the test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -c constraints.txt -e '.[test]'
set +e
JAX_PLATFORMS=cpu .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
# pytest exit 5 means no test ran: that is a failure, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
