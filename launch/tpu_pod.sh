#!/usr/bin/env bash
# Runs a lima_jax training command on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE [PROJECT] -- --config configs/lima_65b.py \
#       --config.model.init_from=gs://bucket/llama-65b --config.workdir=gs://bucket/lima_65b
#
# Every worker gets the same checkout (copied from this machine), installs it with the
# TPU extra, and runs the same `python -m lima_jax.train ...`; jax.distributed finds the
# other workers by itself on a pod (config.distributed.initialize=auto), each worker
# feeds its share of the global batch, and only worker 0 writes logs and metrics.
# Checkpoints and workdirs should live on storage every worker sees (gs://, a shared disk).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,12p' "$0"; exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_FLAG=()
if [[ $# -gt 0 && $1 != "--" ]]; then PROJECT_FLAG=(--project "$1"); shift; fi
[[ ${1:-} == "--" ]] && shift
TRAIN_ARGS=$(printf '%q ' "$@")

REPO=$(cd "$(dirname "$0")/.." && pwd)
ARCHIVE=$(mktemp /tmp/lima_jax.XXXXXX.tar.gz)
tar -C "$REPO" --exclude=.git --exclude='*.egg-info' -czf "$ARCHIVE" .

gcloud compute tpus tpu-vm scp "$ARCHIVE" "$TPU_NAME":/tmp/lima_jax.tar.gz \
  --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_FLAG[@]}" --worker=all \
  --command "set -e; mkdir -p ~/lima_jax && tar -xzf /tmp/lima_jax.tar.gz -C ~/lima_jax && cd ~/lima_jax \
    && python3 -m pip install -q -e '.[tpu]' && python3 -m lima_jax.train $TRAIN_ARGS"
