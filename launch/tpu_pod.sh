#!/usr/bin/env bash
# The same command on every worker of a Cloud TPU VM (a pod slice): `gcloud compute tpus tpu-vm ssh --worker=all`.
# Each worker runs one process; JAX finds the coordinator, the process count and its id itself (VSR1_DISTRIBUTED=jax:
# jax.distributed.initialize() with the Cloud TPU detection).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [--project P] [--repo DIR] [--python PY] -- --config=configs/<name>.py [...]
#
#   --repo DIR    the repository on the workers (default: ~/vsr1_jax); copy it there first, e.g.
#                 gcloud compute tpus tpu-vm scp --recurse --worker=all . TPU_NAME:~/vsr1_jax --zone ZONE
#   --python PY   interpreter on the workers (default: DIR/.venv/bin/python)
# The data folder and checkpoints must be reachable from every worker under the same path (a GCS bucket mounted
# with gcsfuse, or a copy on each worker for the data; checkpoints on a shared path).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 TPU_NAME ZONE [--project P] [--repo DIR] [--python PY] -- --config=configs/<name>.py [...]" >&2
  exit 2
fi
tpu="$1" zone="$2"
shift 2
project_args=() repo='~/vsr1_jax' py=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project) project_args=(--project "$2"); shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --python) py="$2"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "error: no arguments for vsr1_jax.main (pass at least --config=...)" >&2
  exit 2
fi
py="${py:-$repo/.venv/bin/python}"
args="$(printf '%q ' "$@")"
remote="cd $repo && VSR1_DISTRIBUTED=jax $py -m vsr1_jax.main $args"
echo "on every worker of $tpu: $remote" >&2
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" "${project_args[@]}" --worker=all --command "$remote"
