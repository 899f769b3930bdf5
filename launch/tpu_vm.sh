#!/usr/bin/env bash
# Start one experiment on every worker of a Cloud TPU VM slice (v4 / v5e pods).
#
#   launch/tpu_vm.sh [--dry-run] --tpu NAME --zone ZONE [--project P] [--repo DIR] -- TOKGEN_ARGS...
#   launch/tpu_vm.sh --tpu my-v5e-256 --zone us-west4-a -- \
#       --config=experiments/quickstart.py:size=B --workdir=gs://bucket/runs/q1
#
# Every worker installs the checkout at --repo (default ~/tokgen_jax) with the tpu extra and runs tokgen with
# --distributed, so jax.distributed.initialize() reads the slice topology from the TPU runtime.
set -euo pipefail
tpu="" zone="" project="" repo='~/tokgen_jax' dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --tpu) tpu=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (put tokgen arguments after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "--tpu NAME and --zone ZONE are required" >&2; exit 2; }
remote="cd $repo && pip install -q -e '.[tpu]' && python -m tokgen_jax.main --distributed $(printf '%q ' "$@")"
cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
[[ -n "$project" ]] && cmd+=(--project "$project")
if ((dry_run)); then printf '%q ' "${cmd[@]}"; echo; else "${cmd[@]}"; fi
