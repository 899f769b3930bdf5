#!/usr/bin/env bash
# Cloud TPU VM slices (v4, v5e, v5p, v6e pods): create, install, run, watch, copy results, delete.
#
#   launch/tpu_vm.sh SUBCOMMAND --tpu NAME --zone ZONE [--project P] [--dry-run] [OPTIONS] [-- TOKGEN_ARGS...]
#
#   create  --accelerator-type TYPE [--version RUNTIME] [--spot | --preemptible | --queued [--spot]
#           [--valid-until-duration 24h]]
#             on-demand by default; --queued asks for a queued resource NAME-qr whose node is NAME.
#   install [--repo-url URL [--branch B] | --copy] [--repo DIR] [--python BIN]
#             on every worker: git clone URL (or, the default, copy this checkout with scp) into DIR, then
#             BIN -m pip install -e '.[tpu]'.
#   run     [--repo DIR] [--log FILE] [--python BIN] -- TOKGEN_ARGS...
#             on every worker, in the background: cd DIR && nohup BIN -m tokgen_jax.main --distributed ARGS
#             > FILE 2>&1 (a relative FILE is taken from the home directory). A gs:// --workdir is first checked
#             from every worker (python -m tokgen_jax.data.files WORKDIR: the bucket is reachable and writable).
#   logs    [--worker N] [--log FILE]           tail -f FILE on one worker.
#   copy    --from REMOTE_PATH --to LOCAL_DIR [--worker N]   scp --recurse from one worker to here.
#   delete  [--queued]                          delete the TPU VM (and the queued resource NAME-qr).
#
# Defaults: --repo ~/tokgen_jax, --log ~/tokgen_run.log, --worker 0, --python python3 (the Ubuntu-based TPU
# images need not have a `python`). --project P is added to every gcloud command. --dry-run prints every command, one
# per line, quoted with printf %q, and runs nothing. Without a subcommand the script behaves like `run` (the
# interface of its first version: launch/tpu_vm.sh --tpu NAME --zone ZONE -- TOKGEN_ARGS...).
#
# Default runtime (--version) by accelerator type, from https://cloud.google.com/tpu/docs/runtimes:
#   v6e-*        v2-alpha-tpuv6e
#   v5p-*        v2-alpha-tpuv5
#   v5litepod-*  v2-alpha-tpuv5-lite   (v5e)
#   v2-*, v3-*, v4-*  tpu-ubuntu2204-base
# Any other type needs --version; `gcloud compute tpus versions list --zone ZONE` lists what a zone offers.
#
#   launch/tpu_vm.sh create --tpu my-tpu --zone us-west4-a --accelerator-type v5litepod-16 --spot
#   launch/tpu_vm.sh install --tpu my-tpu --zone us-west4-a
#   launch/tpu_vm.sh run --tpu my-tpu --zone us-west4-a -- \
#       --config=experiments/quickstart.py:full --workdir=gs://bucket/runs/q1
#   launch/tpu_vm.sh logs --tpu my-tpu --zone us-west4-a
#   launch/tpu_vm.sh delete --tpu my-tpu --zone us-west4-a
# shellcheck disable=SC2088  # a ~ in a remote path stays literal here, for the remote shell to expand
set -euo pipefail

usage() { awk 'NR > 1 { if (/^set -euo/) exit; if (!/^# shellcheck/) { sub(/^# ?/, ""); print } }' "$0"; }
die() { echo "tpu_vm.sh: $*" >&2; echo "run 'launch/tpu_vm.sh --help' for the usage" >&2; exit 2; }

subcommand=run
case "${1:-}" in
  create | install | run | logs | copy | delete) subcommand=$1; shift ;;
  -h | --help | help) usage; exit 0 ;;
  -*) ;;  # no subcommand: `run`, as in the first version of this script
  "") die "missing subcommand (create, install, run, logs, copy or delete)" ;;
  *) die "unknown subcommand '$1' (create, install, run, logs, copy or delete)" ;;
esac

tpu="" zone="" project="" dry_run=0
accelerator_type="" version="" spot=0 preemptible=0 queued=0 valid_until=""
repo_url="" copy_checkout=0 branch="" repo='~/tokgen_jax' log='~/tokgen_run.log' python=python3
worker=0 from="" to=""
args=()

# The options each subcommand takes besides --tpu, --zone, --project, --dry-run and --help. (No associative arrays
# and no expansion of possibly empty arrays: macOS still ships bash 3.2.)
allowed() {
  case "$1" in
    create) echo " --accelerator-type --version --spot --preemptible --queued --valid-until-duration " ;;
    install) echo " --repo-url --copy --branch --repo --python " ;;
    run) echo " --repo --log --python " ;;
    logs) echo " --worker --log " ;;
    copy) echo " --from --to --worker " ;;
    delete) echo " --queued " ;;
  esac
}
value() {  # value OPTION "$@": the option's argument, or exit 2
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value"
  printf '%s' "$2"
}
while [[ $# -gt 0 ]]; do
  option=$1
  case "$option" in
    --tpu | --zone | --project | --dry-run | -h | --help | --) ;;
    --*) [[ "$(allowed "$subcommand")" == *" $option "* ]] ||
           die "unknown option $option for '$subcommand' (tokgen arguments go after --)" ;;
    *) die "unexpected argument '$option' (the subcommand comes first; tokgen arguments go after --)" ;;
  esac
  case "$option" in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1; shift ;;
    --spot) spot=1; shift ;;
    --preemptible) preemptible=1; shift ;;
    --queued) queued=1; shift ;;
    --copy) copy_checkout=1; shift ;;
    --) shift; args=("$@"); break ;;
    *)
      arg=$(value "$@")
      case "$option" in
        --tpu) tpu=$arg ;;
        --zone) zone=$arg ;;
        --project) project=$arg ;;
        --accelerator-type) accelerator_type=$arg ;;
        --version) version=$arg ;;
        --valid-until-duration) valid_until=$arg ;;
        --repo-url) repo_url=$arg ;;
        --branch) branch=$arg ;;
        --repo) repo=$arg ;;
        --log) log=$arg ;;
        --python) python=$arg ;;
        --worker) worker=$arg ;;
        --from) from=$arg ;;
        --to) to=$arg ;;
      esac
      shift 2 ;;
  esac
done

[[ -n "$tpu" ]] || die "--tpu NAME is required"
[[ -n "$zone" ]] || die "--zone ZONE is required"
[[ "$subcommand" == run || ${#args[@]} -eq 0 ]] || die "'$subcommand' takes no arguments after --"
[[ "$worker" =~ ^[0-9]+$ ]] || die "--worker takes a worker index (0, 1, ...), not '$worker'"
# `run` writes the log after `cd REPO` and `logs` reads it from the login directory: a relative --log names a file
# in the home directory for both.
[[ "$log" == /* || "$log" == "~" || "$log" == "~/"* ]] || log="~/$log"
project_hint=""  # for the hints printed to stderr
[[ -n "$project" ]] && project_hint=$(printf '%q ' --project "$project")

# Print (with --dry-run) or run one command; every gcloud command gets --project P when given.
execute() {
  if [[ "$1" == gcloud && -n "$project" ]]; then set -- "$@" --project "$project"; fi
  if ((dry_run)); then printf '%q ' "$@"; echo; else "$@"; fi
}
# A path for the remote shell: quoted, but a leading ~/ stays expandable.
remote_path() {
  if [[ "$1" == "~" ]]; then printf '~'
  elif [[ "$1" == "~/"* ]]; then printf '~/%q' "${1#\~/}"
  else printf '%q' "$1"
  fi
}
# Run a command line on workers ($1: all or an index) with gcloud ssh.
ssh_workers() {
  execute gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker="$1" --command "$2"
}

case "$subcommand" in
  create)
    [[ -n "$accelerator_type" ]] || die "create needs --accelerator-type (e.g. v5litepod-16, v4-32, v5p-8, v6e-8)"
    if [[ -z "$version" ]]; then
      case "$accelerator_type" in
        v6e-*) version=v2-alpha-tpuv6e ;;
        v5p-*) version=v2-alpha-tpuv5 ;;
        v5litepod-*) version=v2-alpha-tpuv5-lite ;;
        v2-* | v3-* | v4-*) version='tpu-ubuntu2204-base' ;;
        *) die "no default runtime for accelerator type '$accelerator_type'; pass --version" ;;
      esac
    fi
    ((spot + preemptible <= 1)) || die "--spot and --preemptible exclude each other"
    ((queued)) || [[ -z "$valid_until" ]] || die "--valid-until-duration needs --queued"
    if ((queued)); then
      ((!preemptible)) || die "--queued takes --spot, not --preemptible"
      cmd=(gcloud compute tpus queued-resources create "$tpu-qr" --node-id "$tpu" --zone "$zone"
           --accelerator-type "$accelerator_type" --runtime-version "$version")
      ((spot)) && cmd+=(--spot)
      [[ -n "$valid_until" ]] && cmd+=(--valid-until-duration "$valid_until")
      execute "${cmd[@]}"
      echo "queued $tpu-qr; its state (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE): gcloud compute tpus" \
           "queued-resources describe $(printf '%q ' "$tpu-qr" --zone "$zone")$project_hint" >&2
    else
      cmd=(gcloud compute tpus tpu-vm create "$tpu" --zone "$zone" --accelerator-type "$accelerator_type"
           --version "$version")
      ((spot)) && cmd+=(--spot)
      ((preemptible)) && cmd+=(--preemptible)
      execute "${cmd[@]}"
    fi
    ;;
  install)
    [[ -z "$repo_url" ]] || ((!copy_checkout)) || die "--repo-url and --copy exclude each other"
    [[ -z "$branch" || -n "$repo_url" ]] || die "--branch needs --repo-url"
    dir=$(remote_path "$repo")
    install="cd $dir && $(printf '%q' "$python") -m pip install -e '.[tpu]'"
    if [[ -n "$repo_url" ]]; then
      url=$(printf '%q' "$repo_url")
      if [[ -n "$branch" ]]; then
        b=$(printf '%q' "$branch")
        fetch="if [ -d $dir/.git ]; then git -C $dir fetch origin && git -C $dir checkout $b && git -C $dir pull --ff-only origin $b; else git clone --branch $b $url $dir; fi"
      else
        fetch="if [ -d $dir/.git ]; then git -C $dir pull --ff-only; else git clone $url $dir; fi"
      fi
      ssh_workers all "$fetch && $install"
    else
      root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
      [[ -f "$root/pyproject.toml" ]] || die "--copy: no checkout at $root"
      execute cd "$root"
      execute gcloud compute tpus tpu-vm scp --recurse . "$tpu:$repo" --worker=all --zone "$zone"
      ssh_workers all "$install"
    fi
    ;;
  run)
    ((${#args[@]})) || die "run needs tokgen arguments after --, e.g. -- --config=experiments/quickstart.py:full --workdir=gs://bucket/run"
    workdir=""
    for ((i = 0; i < ${#args[@]}; i++)); do
      case "${args[i]}" in
        --workdir=*) workdir=${args[i]#--workdir=} ;;
        --workdir) workdir=${args[i + 1]:-} ;;
      esac
    done
    if [[ "$workdir" == gs://* ]]; then  # every worker must reach the bucket: fail here, not mid-job
      ssh_workers all "cd $(remote_path "$repo") && $(printf '%q' "$python") -m tokgen_jax.data.files $(printf '%q' "$workdir")"
    fi
    remote="cd $(remote_path "$repo") && nohup $(printf '%q' "$python") -m tokgen_jax.main --distributed"
    remote+=" $(printf '%q ' "${args[@]}")> $(remote_path "$log") 2>&1 < /dev/null &"
    ssh_workers all "$remote"
    log_hint=""
    [[ "$log" == '~/tokgen_run.log' ]] || log_hint=$(printf '%q ' --log "$log")
    echo "started on every worker of $tpu; worker 0 logs the progress:" \
         "launch/tpu_vm.sh logs $(printf '%q ' --tpu "$tpu" --zone "$zone")$project_hint$log_hint" >&2
    ;;
  logs)
    ssh_workers "$worker" "tail -f $(remote_path "$log")"
    ;;
  copy)
    [[ -n "$from" && -n "$to" ]] || die "copy needs --from REMOTE_PATH and --to LOCAL_DIR"
    execute gcloud compute tpus tpu-vm scp --recurse "$tpu:$from" "$to" --worker="$worker" --zone "$zone" \
     
    ;;
  delete)
    if ((queued)); then
      # While the request still waits there is no TPU VM yet; deleting the queued resource is what counts.
      execute gcloud compute tpus tpu-vm delete "$tpu" --zone "$zone" --quiet ||
        echo "no TPU VM $tpu to delete (still queued?); deleting the queued resource" >&2
      execute gcloud compute tpus queued-resources delete "$tpu-qr" --zone "$zone" --quiet --force \
       
    else
      execute gcloud compute tpus tpu-vm delete "$tpu" --zone "$zone" --quiet
    fi
    ;;
esac
