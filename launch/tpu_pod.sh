#!/usr/bin/env bash
# Runs python -m jaxmim.main on every worker (host) of a Cloud TPU VM pod slice at once.
#
# Usage:
#   TPU_NAME=my-v4-32 ZONE=us-central2-b REPO=jaxmim \
#     launch/tpu_pod.sh --config=configs/pretrain/simmim_swin_base_img192_window6.py \
#       --workdir=/mnt/shared/runs/simmim_swin_b --config.data.data_dir=/mnt/shared/tensorflow_datasets \
#       --config.mesh.layout=fsdp --config.mesh.fsdp=16
#
# Environment:
#   TPU_NAME  the TPU VM (pod slice) name                                   (required)
#   ZONE      its zone                                                      (required)
#   REPO      the jaxmim checkout on every worker, absolute or relative to
#             the ssh login directory (the same path on all workers)        (default: jaxmim)
#   PYTHON    the interpreter on the workers, e.g. .venv/bin/python, which
#             is resolved inside REPO                                       (default: python3)
#   PROJECT   the GCP project, when not gcloud's default                    (optional)
#   GCLOUD_SSH_FLAGS  more flags for `gcloud compute tpus tpu-vm ssh`,
#             e.g. "--internal-ip" or "--ssh-flag=-A"                       (optional)
#
# Every argument is passed to jaxmim.main unchanged (each one quoted for the remote shell).
# `--distributed` is added without coordinator flags: jax.distributed.initialize() with no
# arguments detects the coordinator, the process count and this worker's index from the TPU
# VM's metadata (one process per worker, driving all of its chips).
#
# What matters for a pod run:
#   * Start the same command on all workers (this script: --worker=all); each one reads its own
#     disjoint share of the training split (jaxmim.data.pipeline) and config.batch_size is the
#     GLOBAL batch (a multiple of data x fsdp and of the number of workers).
#   * --workdir and --config.data.data_dir must be the same directory on every worker: a shared
#     file system mounted at the same path (NFS / Filestore, or a gcsfuse mount of a bucket).
#     The workdir is written with ordinary file calls (lock, config.json, summary, TensorBoard),
#     so a gs:// URI is not a valid --workdir.
#   * Mesh flags: --config.mesh.layout=fsdp --config.mesh.fsdp=<chips> (parameters and
#     optimizer state split over the chips of the slice, data = the rest); for several slices
#     (multislice), --config.mesh.dcn_data=<slices> puts the slices on the data axis so that only
#     the gradient reduction crosses the data-center network.
#   * Stop: send SIGTERM on every worker; each process finishes its step, saves it and exits 75,
#     and the same launch resumes the run:
#       gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
#         --command='pkill -TERM -f "jaxmim.main --distributed"'
#     (Ctrl-C here ends the ssh sessions, which does not reliably stop the remote processes.)
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU VM zone}"
REPO="${REPO:-jaxmim}"
PYTHON="${PYTHON:-python3}"

if [[ $# -eq 0 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi

args=""
for a in "$@"; do
  args+=" $(printf '%q' "$a")"
done
remote="cd $(printf '%q' "$REPO") && exec $(printf '%q' "$PYTHON") -m jaxmim.main --distributed${args}"

gcloud_flags=(--zone="$ZONE" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  gcloud_flags+=(--project="$PROJECT")
fi
if [[ -n "${GCLOUD_SSH_FLAGS:-}" ]]; then
  read -r -a extra <<< "$GCLOUD_SSH_FLAGS"
  gcloud_flags+=("${extra[@]}")
fi

echo "on every worker of $TPU_NAME: $remote" >&2
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${gcloud_flags[@]}" --command="$remote"
