#!/usr/bin/env bash
# One JAX process per node (all its GPUs) for multi-node GPU training, under SLURM or by hand.
# It only sets the jax.distributed variables and runs `python -m launch.train ...` in this
# checkout's .venv; start it once per node (srun, pdsh, a Kubernetes job, ...). See docs/launch.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/gpu_multihost.sh [options] -- TRAIN_ARGS...

Runs `python -m launch.train TRAIN_ARGS...` as one process of a multi-node JAX job.

Under SLURM (inside srun, one task per node) everything is read from SLURM_*:
  coordinator = first host of SLURM_JOB_NODELIST on --port, processes = SLURM_NTASKS,
  process id = SLURM_PROCID.
Otherwise give them (or set VLM3R_COORDINATOR_ADDRESS / VLM3R_NUM_PROCESSES / VLM3R_PROCESS_ID):

options:
  --coordinator HOST:PORT  address of process 0, reachable from every node
  --num-processes N        total number of processes (nodes)
  --process-id I           this process, 0..N-1 (0 runs the coordinator)
  --port PORT              coordinator port when derived from SLURM (default 12355)
  --local-devices IDS      GPUs this process uses, e.g. 0,1,2,3 (default: all visible)
  --python PATH            interpreter (default: .venv/bin/python of this checkout, else python3)
  --dry-run                print the environment and command instead of running
  -h, --help               this help

examples:
  # node 0 and node 1 of a 2-node job, by hand
  launch/gpu_multihost.sh --coordinator 10.0.0.1:12355 --num-processes 2 --process-id 0 -- \
      --config configs/vlm3r_7b.py --workdir /shared/run1
  launch/gpu_multihost.sh --coordinator 10.0.0.1:12355 --num-processes 2 --process-id 1 -- \
      --config configs/vlm3r_7b.py --workdir /shared/run1
  # SLURM: sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 --wrap \
  #   "srun launch/gpu_multihost.sh -- --config configs/vlm3r_7b.py --workdir /shared/run1"
EOF
}

COORD="${VLM3R_COORDINATOR_ADDRESS:-}" NPROC="${VLM3R_NUM_PROCESSES:-}" PID="${VLM3R_PROCESS_ID:-}"
PORT=12355 LOCAL_DEVICES="" PYTHON_BIN="" DRY=0
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator) COORD="${2:?--coordinator needs HOST:PORT}"; shift 2 ;;
    --num-processes) NPROC="${2:?--num-processes needs a value}"; shift 2 ;;
    --process-id) PID="${2:?--process-id needs a value}"; shift 2 ;;
    --port) PORT="${2:?--port needs a value}"; shift 2 ;;
    --local-devices) LOCAL_DEVICES="${2:?--local-devices needs ids}"; shift 2 ;;
    --python) PYTHON_BIN="${2:?--python needs a path}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) echo "gpu_multihost.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "${#TRAIN_ARGS[@]}" -eq 0 ]; then
  echo "gpu_multihost.sh: give the training arguments after --, e.g. -- --config configs/vlm3r_7b.py" >&2
  exit 2
fi

if [ -n "${SLURM_PROCID:-}" ] && [ -n "${SLURM_NTASKS:-}" ]; then
  NPROC="${NPROC:-$SLURM_NTASKS}"
  PID="${PID:-$SLURM_PROCID}"
  if [ -z "$COORD" ]; then
    HEAD="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}" | head -n 1)"
    COORD="$HEAD:$PORT"
  fi
fi

missing=()
[ -n "$COORD" ] || missing+=(--coordinator)
[ -n "$NPROC" ] || missing+=(--num-processes)
[ -n "$PID" ] || missing+=(--process-id)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "gpu_multihost.sh: missing ${missing[*]} (not under SLURM; see --help)" >&2
  exit 2
fi
case "$NPROC$PID" in
  *[!0-9]*) echo "gpu_multihost.sh: --num-processes and --process-id must be integers" >&2; exit 2 ;;
esac
if [ "$PID" -ge "$NPROC" ]; then
  echo "gpu_multihost.sh: --process-id $PID must be below --num-processes $NPROC" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "$PYTHON_BIN" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON_BIN="$ROOT/.venv/bin/python"; else PYTHON_BIN=python3; fi
fi

export VLM3R_COORDINATOR_ADDRESS="$COORD" VLM3R_NUM_PROCESSES="$NPROC" VLM3R_PROCESS_ID="$PID"
if [ -n "$LOCAL_DEVICES" ]; then export VLM3R_LOCAL_DEVICE_IDS="$LOCAL_DEVICES"; fi
# XLA's GPU defaults that matter at scale; override by exporting XLA_FLAGS yourself.
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true}"

cd "$ROOT"
if [ "$DRY" -eq 1 ]; then
  env | grep -E '^(VLM3R_|XLA_FLAGS=)' | sort
  printf '%q ' "$PYTHON_BIN" -m launch.train "${TRAIN_ARGS[@]}"; echo
  exit 0
fi
exec "$PYTHON_BIN" -m launch.train "${TRAIN_ARGS[@]}"
