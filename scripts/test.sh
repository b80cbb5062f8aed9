#!/usr/bin/env bash
# Install into ./.venv and run the whole test suite on the CPU (about 3-5 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
JAX_PLATFORMS=cpu .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
# pytest exit 5 means no test ran: that is a failure, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
