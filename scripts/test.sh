#!/usr/bin/env bash
# Install into ./.venv and run the whole test suite on the CPU: two pytest workers, one test file each at a time
# (pytest-xdist --dist loadfile keeps a file's session fixtures in one worker); about 13 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
set +e
JAX_PLATFORMS=cpu .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests "$@"
rc=$?
set -e
# pytest exit 5 means no test ran: that is a failure, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
