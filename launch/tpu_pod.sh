#!/usr/bin/env bash
# ResShift training on a Cloud TPU VM pod slice: the same command on every worker of the slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh configs/resshift/realsr_x4_v3.py gs://bucket/runs/v3 \
#       --config.data.source=tfds --config.data.tfds_name=imagenet2012 --config.data.tfds_data_dir=gs://bucket/tfds \
#       --config.autoencoder_checkpoint=gs://bucket/ckpt/vq_f4 --config.train.mesh_shape="(-1,4)"
#
# On TPU VMs jax.distributed.initialize() (called by the trainer through ircore.mesh.initialize_distributed)
# discovers the pod's workers by itself. REPO_DIR is the checkout on every worker (copy it first, e.g. with
# `gcloud compute tpus tpu-vm scp --worker=all`); set INSTALL=1 to pip-install it there before training.
# The workdir should be a bucket (or another path all workers share). A maintenance event sends SIGTERM:
# every worker stops at the same step (JAX preemption sync point) after a checkpoint; rerun this script to
# resume. DRY_RUN=1 prints the remote command instead of running it.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
CONFIG=${1:?usage: launch/tpu_pod.sh CONFIG WORKDIR [--config.x=y ...]}
WORKDIR=${2:?usage: launch/tpu_pod.sh CONFIG WORKDIR [--config.x=y ...]}
shift 2
REPO_DIR=${REPO_DIR:-'~/ir-diffusion-jax'}  # expanded on the workers
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

EXTRA=""
if [[ $# -gt 0 ]]; then
  printf -v EXTRA ' %q' "$@"
fi
printf -v CONFIG_Q '%q' "$CONFIG"
printf -v WORKDIR_Q '%q' "$WORKDIR"
SETUP=""
if [[ "${INSTALL:-0}" == 1 ]]; then
  SETUP="pip install -q -e '.[tpu]' &&"
fi
REMOTE="cd $REPO_DIR && $SETUP python3 -m resshift_jax.train --config $CONFIG_Q --workdir $WORKDIR_Q$EXTRA"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  echo "$REMOTE"
  exit 0
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" $PROJECT_FLAG --worker=all --command "$REMOTE"
