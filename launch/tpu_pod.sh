#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice (v5p-64, v6e-16, ...): copy this checkout to all
# workers, install it, and run `python -m launch.train ...` on all of them at once. Each worker is
# one JAX process; jax.distributed discovers the slice itself (VLM3R_DISTRIBUTED_AUTO=1).
# See docs/launch.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [options] -- TRAIN_ARGS...

Copies the repository to every worker of TPU VM NAME, installs it into a venv there and runs
`python -m launch.train TRAIN_ARGS...` on all workers (gcloud compute tpus tpu-vm ssh --worker=all).

options:
  --tpu NAME           TPU VM (queued resource) name                         (required)
  --zone ZONE          its zone, e.g. us-east5-a                             (required)
  --project PROJECT    gcloud project (default: gcloud's configured project)
  --remote-dir DIR     checkout location on the workers (default: vlm3r_jax, under the remote home)
  --workdir DIR        shared output dir passed as --workdir (use a gs:// bucket or a shared
                       filesystem: every worker must see the same checkpoints)
  --no-sync            do not copy the repository (it is already there)
  --no-install         do not (re)install the venv on the workers
  --detach             start training with nohup and return; logs in REMOTE_DIR/logs/train.log
  --stop               kill a detached run on all workers and exit
  --dry-run            print the gcloud commands instead of running them
  -h, --help           this help

everything after `--` goes to launch.train, e.g.
  launch/tpu_pod.sh --tpu my-v5p-64 --zone us-east5-a --workdir gs://bucket/run1 -- \
      --config configs/vlm3r_7b.py --config.train.steps=10000
EOF
}

TPU="" ZONE="" PROJECT="" REMOTE_DIR="vlm3r_jax" WORKDIR="" SYNC=1 INSTALL=1 DETACH=0 STOP=0 DRY=0
TRAIN_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) TPU="${2:?--tpu needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --remote-dir) REMOTE_DIR="${2:?--remote-dir needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --no-sync) SYNC=0; shift ;;
    --no-install) INSTALL=0; shift ;;
    --detach) DETACH=1; shift ;;
    --stop) STOP=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$TPU" ] || [ -z "$ZONE" ]; then
  echo "tpu_pod.sh: --tpu and --zone are required (see --help)" >&2
  exit 2
fi
if [ "$STOP" -eq 0 ] && [ "${#TRAIN_ARGS[@]}" -eq 0 ]; then
  echo "tpu_pod.sh: give the training arguments after --, e.g. -- --config configs/vlm3r_7b.py" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD=(gcloud compute tpus tpu-vm)
LOC=(--zone "$ZONE")
if [ -n "$PROJECT" ]; then LOC+=(--project "$PROJECT"); fi

run() {
  if [ "$DRY" -eq 1 ]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

on_all_workers() {  # $1: shell command run on every worker, in parallel
  run "${GCLOUD[@]}" ssh "$TPU" "${LOC[@]}" --worker=all --command "$1"
}

if [ "$STOP" -eq 1 ]; then
  on_all_workers "pkill -f -- '-m launch.train' || true; rm -f /tmp/libtpu_lockfile"
  exit 0
fi

if [ "$SYNC" -eq 1 ]; then
  TARBALL="$(mktemp -t vlm3r_jax.XXXXXX.tar.gz)"
  trap 'rm -f "$TARBALL"' EXIT
  # Tracked + untracked-but-not-ignored files: what `git status` shows, no venv or outputs.
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar -czf "$TARBALL" --null -T -)
  run "${GCLOUD[@]}" scp "$TARBALL" "$TPU:/tmp/vlm3r_jax.tar.gz" "${LOC[@]}" --worker=all
  on_all_workers "mkdir -p $REMOTE_DIR && tar -xzf /tmp/vlm3r_jax.tar.gz -C $REMOTE_DIR"
fi

if [ "$INSTALL" -eq 1 ]; then
  on_all_workers "cd $REMOTE_DIR && (test -x .venv/bin/python || python3 -m venv .venv) && \
.venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu]'"
fi

QUOTED=""
for a in "${TRAIN_ARGS[@]}"; do QUOTED+=" $(printf '%q' "$a")"; done
if [ -n "$WORKDIR" ]; then QUOTED+=" --workdir $(printf '%q' "$WORKDIR")"; fi
CMD="cd $REMOTE_DIR && export VLM3R_DISTRIBUTED_AUTO=1 && .venv/bin/python -m launch.train$QUOTED"
if [ "$DETACH" -eq 1 ]; then
  on_all_workers "mkdir -p $REMOTE_DIR/logs && nohup bash -c $(printf '%q' "$CMD") > $REMOTE_DIR/logs/train.log 2>&1 &"
  echo "started on all workers; logs: $REMOTE_DIR/logs/train.log on each worker (worker 0 writes metrics)"
else
  on_all_workers "$CMD"
fi
