#!/usr/bin/env bash
# Train RLAE on a Cloud TPU VM pod slice (e.g. v5e-32: 8 hosts × 4 chips). Every worker runs the same
# command; `--config.distributed=True` makes each call jax.distributed.initialize(), which finds the
# coordinator and its process id from the TPU metadata. See launch/MULTIHOST.md.
#
#   TPU_NAME=my-pod ZONE=us-west4-a REPO_URL=https://github.com/<owner>/rlae_jax.git \
#   CONFIG=configs/gsm8k_qwen_llama.py MESH_DATA=16 MESH_MODEL=2 WORKDIR=/gcs/my-bucket/rlae/gsm8k \
#   launch/tpu_pod.sh --config.rl.batch_size=64
#
# MESH_DATA × MESH_MODEL must equal the slice's chip count; MESH_MODEL must divide every member's
# heads, kv heads, intermediate size and vocabulary, and MESH_DATA the batch size (checked at start).
set -euo pipefail

TPU_NAME=${TPU_NAME:?set TPU_NAME to the TPU VM name}
ZONE=${ZONE:?set ZONE to the TPU zone}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
REPO_URL=${REPO_URL:?set REPO_URL to the git URL of this repository}
CONFIG=${CONFIG:-configs/train.py}
BRANCH=${BRANCH:-main}
MESH_DATA=${MESH_DATA:?set MESH_DATA (data-parallel size)}
MESH_MODEL=${MESH_MODEL:-1}
WORKDIR=${WORKDIR:?set WORKDIR to a directory every host sees (e.g. a gcsfuse mount)}

# Flags after the script name go to launch.train after these ones (later flags win), quoted for the remote shell.
EXTRA_FLAGS=""
if [ $# -gt 0 ]; then EXTRA_FLAGS=$(printf ' %q' "$@"); fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --worker=all --command="
set -euo pipefail
[ -d rlae_jax ] || git clone -q '$REPO_URL' rlae_jax
cd rlae_jax && git fetch -q origin && git checkout -q '$BRANCH' && git pull -q
pip install -q -e '.[tpu]'
python -m launch.train --config='$CONFIG' --config.distributed=True --config.mesh_data=$MESH_DATA --config.mesh_model=$MESH_MODEL \
  --config.workdir='$WORKDIR' $EXTRA_FLAGS
"
