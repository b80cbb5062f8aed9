#!/usr/bin/env bash
# N processes of `python -m vsr1_jax.main` on this machine, joined into one JAX job (jax.distributed over localhost).
#
#   launch/local.sh [options] -- --config=configs/<name>.py [--config.x.y=...]
#
# Options:
#   -n, --nproc N          processes (default: one per GPU that nvidia-smi lists, else 2)
#   --gpus-per-process K   GPUs each process uses (default 1): process i gets GPUs i*K .. i*K+K-1
#   --cpu-devices D        CPU only (no GPU): D simulated CPU devices per process (the CPU test vehicle)
#   --port P               coordinator port on localhost (default: a free one)
#   --log-dir DIR          process i writes DIR/process_i.log (default: every process writes to this terminal)
#   --python PY            interpreter (default: $PYTHON, else ./.venv/bin/python when present, else python)
#   --module M             run `python -m M` instead of vsr1_jax.main (e.g. tests.multihost_worker)
#
# Each process gets VSR1_COORDINATOR, VSR1_NUM_PROCESSES, VSR1_PROCESS_ID (and VSR1_LOCAL_DEVICE_IDS on GPUs), which
# vsr1_jax/distributed.py reads. When one process fails, the others are stopped; Ctrl-C, SIGTERM or the end of this
# script stops and reaps all of them (SIGTERM first: training saves a checkpoint; SIGKILL after $VSR1_KILL_GRACE s,
# default 60). The exit status is the first failure's, else 0.
set -uo pipefail

nproc="" gpus_per=1 cpu_devices="" port="" log_dir="" module=vsr1_jax.main
python_bin="${PYTHON:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--nproc) nproc="$2"; shift 2 ;;
    --gpus-per-process) gpus_per="$2"; shift 2 ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --log-dir) log_dir="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --module) module="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 && "$module" == vsr1_jax.main ]]; then
  echo "usage: $0 [options] -- --config=configs/<name>.py [--config.x.y=...]" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$python_bin" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python_bin="$root/.venv/bin/python"; else python_bin=python; fi
fi
n_gpus=0
if [[ -z "$cpu_devices" ]] && command -v nvidia-smi >/dev/null 2>&1; then
  n_gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if [[ -z "$nproc" ]]; then
  if [[ "$n_gpus" -gt 0 ]]; then nproc=$(( n_gpus / gpus_per )); else nproc=2; fi
fi
if ! [[ "$nproc" =~ ^[0-9]+$ ]] || [[ "$nproc" -lt 1 ]]; then
  echo "error: --nproc must be a positive integer, got '$nproc'" >&2; exit 2
fi
if [[ "$n_gpus" -gt 0 && $(( nproc * gpus_per )) -gt "$n_gpus" ]]; then
  echo "error: $nproc processes x $gpus_per GPUs > the $n_gpus GPUs of this machine" >&2; exit 2
fi
if [[ -z "$port" ]]; then
  port=$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ -n "$log_dir" ]] && mkdir -p "$log_dir"

# The children are the shell's background jobs (`jobs -p`), not a list appended after each start: a signal that
# arrives between a child's start and that append would otherwise leave the child running.
stop_all() {  # SIGTERM every child still running, wait for them, SIGKILL what is left after the grace period
  local grace="${VSR1_KILL_GRACE:-60}" pid t
  local pids=($(jobs -p))
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for (( t = 0; t < grace * 10; t++ )); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive -eq 0 ]] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
}
on_signal() { echo "launch/local.sh: stopping $(jobs -p | wc -l) processes" >&2; stop_all; exit 130; }
trap on_signal INT TERM
trap 'stop_all' EXIT

cd "$root"
for (( i = 0; i < nproc; i++ )); do
  (
    export VSR1_COORDINATOR="127.0.0.1:$port" VSR1_NUM_PROCESSES="$nproc" VSR1_PROCESS_ID="$i"
    if [[ -n "$cpu_devices" ]]; then
      export JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$cpu_devices"
    elif [[ "$n_gpus" -gt 0 ]]; then
      ids=$(seq -s, $(( i * gpus_per )) $(( i * gpus_per + gpus_per - 1 )))
      export VSR1_LOCAL_DEVICE_IDS="$ids"
    fi
    if [[ -n "$log_dir" ]]; then
      exec "$python_bin" -m "$module" "$@" >"$log_dir/process_$i.log" 2>&1
    fi
    exec "$python_bin" -m "$module" "$@"
  ) &
done

status=0
remaining=$nproc
while [[ $remaining -gt 0 ]]; do
  wait -n
  rc=$?
  remaining=$(( remaining - 1 ))
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    echo "launch/local.sh: a process exited with status $rc; stopping the others" >&2
    stop_all
    break
  fi
done
exit $status
